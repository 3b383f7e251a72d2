//! SockJS at `/v1/sockjs` with a plain HTTP client, speaking the xhr-polling transport by hand:
//! bad input of every kind (the process stays up and nothing is half-written), and the
//! reconnect race (clients reconnect over and over while notifications are published; each ends
//! with every seq exactly once).

use crate::helpers::{sample, spawn_app_with, user_token, Backend, TestApp};
use serde_json::Value;
use std::time::Duration;

/// A STOMP frame as sockjs-client would send it, in an `xhr_send` body.
fn send_body(frames: &[String]) -> String {
    serde_json::to_string(frames).expect("json")
}

fn connect(token: &str) -> String {
    format!("CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{token}\n\n\0")
}

fn subscribe(after: i64) -> String {
    format!("SUBSCRIBE\nid:0\ndestination:/user/queue/notifications\nx-tidings-after:{after}\n\n\0")
}

struct Poller<'a> {
    app: &'a TestApp,
    base: String,
    /// The SockJS URL's query, as sockjs-client repeats it on every request.
    query: String,
}

impl<'a> Poller<'a> {
    /// A client of `/v1/sockjs` whose URL carries `token`.
    fn new(app: &'a TestApp, session: &str, token: &str) -> Self {
        Poller {
            app,
            base: app.url(&format!("/v1/sockjs/000/{session}")),
            query: format!("?access_token={token}"),
        }
    }

    async fn post(&self, transport: &str, body: String) -> (u16, String) {
        let resp = self
            .app
            .client
            .post(format!("{}/{transport}{}", self.base, self.query))
            .body(body)
            .send()
            .await
            .expect("post");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// One xhr poll: the frame it answered (`o`, `h`, `a[...]`, `c[...]`).
    async fn poll(&self) -> String {
        let (status, body) = self.post("xhr", String::new()).await;
        assert_eq!(status, 200, "{body}");
        body.trim_end().to_owned()
    }

    async fn send(&self, frames: &[String]) -> (u16, String) {
        self.post("xhr_send", send_body(frames)).await
    }
}

/// The STOMP frames of an `a[...]` SockJS frame.
fn stomp_frames(sockjs: &str) -> Vec<String> {
    match sockjs.strip_prefix('a') {
        Some(array) => serde_json::from_str(array).expect("a[...] frame"),
        None => Vec::new(),
    }
}

fn header<'f>(frame: &'f str, name: &str) -> Option<&'f str> {
    frame
        .split("\n\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
}

/// The notification seqs in a SockJS frame.
fn seqs_of(sockjs: &str) -> Vec<i64> {
    stomp_frames(sockjs)
        .iter()
        .filter(|f| header(f, "x-tidings-event") == Some("notification"))
        .filter_map(|f| header(f, "x-tidings-seq")?.parse().ok())
        .collect()
}

async fn spawn(b: Backend) -> TestApp {
    spawn_app_with(b, |s| {
        s.sockjs.heartbeat_seconds = 1;
        s.sockjs.disconnect_delay_seconds = 1;
    })
    .await
}

async fn bad_input_is_refused_and_the_process_stays_up(b: Backend) {
    let app = spawn(b).await;
    app.publish(&sample(&["alice"])).await;
    let token = user_token("alice");

    // Unknown sessions.
    let stranger = Poller::new(&app, "never-opened", &token);
    assert_eq!(stranger.send(&[connect(&token)]).await.0, 404);
    let resp = app
        .client
        .post(app.url(&format!(
            "/v1/sockjs/000/never-opened/jsonp_send?access_token={token}"
        )))
        .body("d=%5B%22x%22%5D")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 404);

    let p = Poller::new(&app, "bad-input", &token);
    assert_eq!(p.poll().await, "o");
    // Malformed SockJS bodies: the protocol's own 500s, and the session lives on.
    for (body, expect) in [
        ("[\"x", "Broken JSON encoding."),
        ("{\"a\":1}", "Broken JSON encoding."),
        ("[1,2]", "Broken JSON encoding."),
        ("", "Payload expected."),
    ] {
        let (status, text) = p.post("xhr_send", body.to_owned()).await;
        assert_eq!((status, text.as_str()), (500, expect), "{body:?}");
    }
    // An oversized xhr_send: refused before it is read whole.
    let (status, _) = p.send(&["x".repeat(100 * 1024)]).await;
    assert_eq!(status, 413);
    // Bad JSONP / htmlfile callbacks.
    for cb in ["a(b)", "%20", "x-alert", ""] {
        for transport in ["jsonp", "htmlfile"] {
            let resp = app
                .client
                .get(app.url(&format!("/v1/sockjs/000/cb-{transport}/{transport}?c={cb}")))
                .send()
                .await
                .expect("get");
            assert_eq!(resp.status().as_u16(), 500, "{transport} c={cb}");
        }
    }
    // A good CONNECT, then a SEND to /app/read whose body is not JSON: an ERROR and the
    // close, and nothing was marked read.
    let (status, _) = p
        .send(&[
            connect(&token),
            "SEND\ndestination:/app/read\n\n{\"up_to\":\0".to_owned(),
        ])
        .await;
    assert_eq!(status, 204);
    let mut seen = String::new();
    for _ in 0..5 {
        seen.push_str(&p.poll().await);
        if seen.contains("c[") {
            break;
        }
    }
    assert!(seen.contains("CONNECTED"), "{seen}");
    assert!(seen.contains("ERROR"), "{seen}");
    assert!(seen.contains("c[1002,"), "{seen}");
    assert_eq!(app.unread("alice").await["unread"], 1);

    // Malformed STOMP over a fresh session: ERROR, close.
    let q = Poller::new(&app, "garbage", &token);
    assert_eq!(q.poll().await, "o");
    assert_eq!(q.send(&["NOT A FRAME\n\n\0".to_owned()]).await.0, 204);
    let frame = q.poll().await;
    assert!(frame.contains("ERROR"), "{frame}");

    // Still up, and a good session works.
    let ok = Poller::new(&app, "good", &token);
    assert_eq!(ok.poll().await, "o");
    assert_eq!(ok.send(&[connect(&token), subscribe(0)]).await.0, 204);
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.extend(seqs_of(&ok.poll().await));
        if !seqs.is_empty() {
            break;
        }
    }
    assert_eq!(seqs, [1]);
}

const RACE_NOTIFICATIONS: i64 = 500;

/// One client that keeps reconnecting: each round a new SockJS session from its cursor, a
/// few polls, then DISCONNECT. Returns every seq it received, in order.
async fn reconnecting_client(app: &TestApp, user: &str) -> Vec<i64> {
    let token = user_token(user);
    let mut seqs: Vec<i64> = Vec::new();
    let mut round = 0;
    while seqs.last().copied().unwrap_or(0) < RACE_NOTIFICATIONS {
        round += 1;
        let p = Poller::new(app, &format!("{user}-{round}"), &token);
        assert_eq!(p.poll().await, "o");
        let after = seqs.last().copied().unwrap_or(0);
        assert_eq!(p.send(&[connect(&token), subscribe(after)]).await.0, 204);
        for _ in 0..(1 + round % 3) {
            let frame = p.poll().await;
            seqs.extend(seqs_of(&frame));
            if frame.starts_with('c') {
                break;
            }
        }
        // The frames that arrive after the last poll are lost with the session: the next
        // one starts from the cursor.
        p.send(&["DISCONNECT\n\n\0".to_owned()]).await;
    }
    seqs
}

async fn reconnect_race_over_sockjs_polling(b: Backend) {
    let app = spawn(b).await;
    let users = ["r0", "r1", "r2"];
    let clients = futures::future::join_all(users.iter().map(|u| reconnecting_client(&app, u)));
    let publisher = async {
        for _ in 0..RACE_NOTIFICATIONS {
            app.publish(&sample(&users)).await;
        }
    };
    let (all, ()) = tokio::time::timeout(
        Duration::from_secs(180),
        futures::future::join(clients, publisher),
    )
    .await
    .expect("the race finished in time");
    let want: Vec<i64> = (1..=RACE_NOTIFICATIONS).collect();
    for (user, seqs) in users.iter().zip(all) {
        assert_eq!(seqs, want, "{user}: every seq exactly once, in order");
    }
    let _: Value = app.unread("r0").await;
}

async fn json_protocol_over_sockjs(b: Backend) {
    let app = spawn(b).await;
    app.publish(&sample(&["alice"])).await;
    app.publish(&sample(&["alice"])).await;
    let token = user_token("alice");
    let get = |q: String| {
        let app = &app;
        async move {
            let resp = app
                .client
                .get(app.url(&format!("/v1/sockjs-json/000/js1/jsonp?c=cb{q}")))
                .send()
                .await
                .expect("get");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    // No token: the session is refused before it exists.
    let (status, _) = get(String::new()).await;
    assert_eq!(status, 401);
    let (status, body) = get(format!("&access_token={token}&after=1")).await;
    assert_eq!((status, body.as_str()), (200, "/**/cb(\"o\");\r\n"));
    // Every request of the session carries the token (sockjs-client repeats the URL's query).
    let (_, body) = get(format!("&access_token={token}")).await;
    let frame: String = serde_json::from_str(
        body.strip_prefix("/**/cb(")
            .and_then(|b| b.strip_suffix(");\r\n"))
            .expect("a jsonp call"),
    )
    .expect("a JSON string");
    let events: Vec<Value> = stomp_frames(&frame)
        .iter()
        .map(|m| serde_json::from_str(m).expect("a JSON event"))
        .collect();
    assert_eq!(events[0]["type"], "notification", "{events:?}");
    assert_eq!(events[0]["notification"]["seq"], 2, "replay from after=1");
    assert_eq!(
        events[1],
        serde_json::json!({"type": "unread", "unread": 2, "seq": 2})
    );
}

crate::both_backends!(
    json_protocol_over_sockjs,
    bad_input_is_refused_and_the_process_stays_up,
    reconnect_race_over_sockjs_polling,
);
