//! A SockJS session belongs to the user of the token that opened it (issue 22): on both
//! endpoints and every transport, a request with no token or with another user's token, on
//! alice's session, is answered as for an unknown session (404), reads nothing and changes
//! nothing; a request without a valid token opens nothing; `xhr_send` bodies are bounded in
//! time; CORS credentials go to trusted origins only.

use crate::helpers::{sample, spawn_app_with, user_token, Backend, TestApp};
use serde_json::Value;
use std::time::Duration;
use tidings_test_support::live::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

async fn spawn(b: Backend) -> TestApp {
    spawn_app_with(b, |s| {
        s.sockjs.heartbeat_seconds = 1;
        s.sockjs.disconnect_delay_seconds = 5;
        s.server.body_timeout_seconds = 1;
    })
    .await
}

/// One request on `prefix/{server}/{session}/{transport}` with `query`: status and body.
/// A streaming answer is read for a moment only: the status is what counts, and the body
/// must hold none of the session's data.
async fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, String) {
    let mut req = app.client.request(method, app.url(path));
    if let Some((content_type, body)) = body {
        req = req
            .header("content-type", content_type)
            .body(body.to_owned());
    }
    let resp = timeout(WAIT, req.send())
        .await
        .expect("answered")
        .expect("request");
    let status = resp.status().as_u16();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while let Ok(Some(Ok(chunk))) = timeout(Duration::from_millis(300), stream.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status, text)
}

/// Every way into a session but the opening one: the five receiving transports, the
/// WebSocket transport (a handshake), and the two sends carrying `send` (an array of
/// protocol messages).
async fn attacks(
    app: &TestApp,
    base: &str,
    query: &str,
    send: &[String],
) -> Vec<(String, u16, String)> {
    let sep = if query.is_empty() { "?" } else { "&" };
    let payload = serde_json::to_string(send).expect("json");
    let form = serde_urlencoded::to_string([("d", payload.as_str())]).expect("form");
    let mut out = Vec::new();
    for (method, transport, extra, body) in [
        (reqwest::Method::POST, "xhr", "", None),
        (reqwest::Method::POST, "xhr_streaming", "", None),
        (reqwest::Method::GET, "eventsource", "", None),
        (reqwest::Method::GET, "htmlfile", "c=cb", None),
        (reqwest::Method::GET, "jsonp", "c=cb", None),
        (
            reqwest::Method::POST,
            "xhr_send",
            "",
            Some(("text/plain", payload.as_str())),
        ),
        (
            reqwest::Method::POST,
            "jsonp_send",
            "",
            Some(("application/x-www-form-urlencoded", form.as_str())),
        ),
    ] {
        let q = match (query.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("?{extra}"),
            (false, true) => query.to_owned(),
            (false, false) => format!("{query}{sep}{extra}"),
        };
        let (status, text) = request(app, method, &format!("{base}/{transport}{q}"), body).await;
        out.push((transport.to_owned(), status, text));
    }
    // The WebSocket transport: a real handshake.
    let ws = app
        .url(&format!("{base}/websocket{query}"))
        .replacen("http", "ws", 1);
    let status = match timeout(WAIT, tokio_tungstenite::connect_async(ws))
        .await
        .expect("answered")
    {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("websocket: {e}"),
    };
    out.push(("websocket".to_owned(), status, String::new()));
    out
}

fn assert_all_refused(results: &[(String, u16, String)], who: &str, endpoint: &str) {
    for (transport, status, body) in results {
        assert_eq!(
            *status, 404,
            "{endpoint} {transport} as {who}: must be answered as an unknown session; body: {body}"
        );
        assert!(
            !body.contains("a[") && !body.contains("notification") && !body.contains("MESSAGE"),
            "{endpoint} {transport} as {who} got data: {body}"
        );
    }
}

/// Polls alice's session (with her token) until `done` holds for what came, or fails.
async fn poll_until(app: &TestApp, path: &str, done: impl Fn(&str) -> bool) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !done(&seen) {
        assert!(Instant::now() < deadline, "alice's polls got only: {seen}");
        let (status, text) = request(app, reqwest::Method::POST, path, None).await;
        assert_eq!(status, 200, "alice polls her own session: {text}");
        assert!(
            !text.starts_with("c["),
            "alice's session was closed: {seen}{text}"
        );
        seen.push_str(&text);
    }
    seen
}

async fn stomp_sessions_belong_to_their_user(b: Backend) {
    let app = spawn(b).await;
    app.publish(&sample(&["alice"])).await;
    app.publish(&sample(&["alice"])).await;
    let (alice, bob) = (user_token("alice"), user_token("bob"));
    let base = "/v1/sockjs/000/victim";
    let mine = format!("?access_token={alice}");

    // Alice opens her session (the token on the SockJS URL) and subscribes; her
    // notifications wait in the session's queue.
    let (status, text) = request(
        &app,
        reqwest::Method::POST,
        &format!("{base}/xhr{mine}"),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "o\n"));
    let connect = "CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0".to_owned();
    let subscribe =
        "SUBSCRIBE\nid:0\ndestination:/user/queue/notifications\nx-tidings-after:0\n\n\0"
            .to_owned();
    let body = serde_json::to_string(&[connect, subscribe]).expect("json");
    let (status, _) = request(
        &app,
        reqwest::Method::POST,
        &format!("{base}/xhr_send{mine}"),
        Some(("text/plain", &body)),
    )
    .await;
    assert_eq!(status, 204);

    // The hijack attempts: an untokened SUBSCRIBE of their own and a mark-read, sent into
    // her CONNECTed session, and reads on every transport.
    let hostile = [
        "SUBSCRIBE\nid:evil\ndestination:/user/queue/notifications\nx-tidings-after:0\n\n\0"
            .to_owned(),
        "SEND\ndestination:/app/read\n\n{\"up_to\":100}\0".to_owned(),
    ];
    for (who, query) in [
        ("nobody", String::new()),
        ("bob", format!("?access_token={bob}")),
    ] {
        let results = attacks(&app, base, &query, &hostile).await;
        assert_all_refused(&results, who, "/v1/sockjs");
    }

    // Her session is intact: her notifications, on her subscription only, and nothing was
    // marked read.
    let seen = poll_until(&app, &format!("{base}/xhr{mine}"), |s| {
        s.matches("x-tidings-event:notification").count() >= 2
    })
    .await;
    assert!(seen.contains("CONNECTED"), "{seen}");
    assert!(seen.contains("user-name:alice"), "{seen}");
    assert!(!seen.contains("subscription:evil"), "{seen}");
    assert_eq!(app.unread("alice").await["unread"], 2);

    // The same session id under another server id is another session.
    let (status, text) = request(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sockjs/001/victim/xhr{mine}"),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "o\n"));

    // A CONNECT token must name the user whose token opened the session.
    let other = "/v1/sockjs/000/mixed";
    let (status, _) = request(
        &app,
        reqwest::Method::POST,
        &format!("{other}/xhr{mine}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let connect_as_bob =
        format!("CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{bob}\n\n\0");
    let body = serde_json::to_string(&[connect_as_bob]).expect("json");
    let (status, _) = request(
        &app,
        reqwest::Method::POST,
        &format!("{other}/xhr_send{mine}"),
        Some(("text/plain", &body)),
    )
    .await;
    assert_eq!(status, 204);
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !seen.contains("c[") {
        assert!(Instant::now() < deadline, "{seen}");
        seen.push_str(
            &request(
                &app,
                reqwest::Method::POST,
                &format!("{other}/xhr{mine}"),
                None,
            )
            .await
            .1,
        );
    }
    assert!(seen.contains("ERROR"), "{seen}");
    assert!(seen.contains("another user"), "{seen}");
    assert!(!seen.contains("CONNECTED"), "{seen}");
}

async fn json_sessions_belong_to_their_user(b: Backend) {
    let app = spawn(b).await;
    app.publish(&sample(&["alice"])).await;
    app.publish(&sample(&["alice"])).await;
    let (alice, bob) = (user_token("alice"), user_token("bob"));
    let base = "/v1/sockjs-json/000/victim";
    let mine = format!("?access_token={alice}");

    let (status, text) = request(
        &app,
        reqwest::Method::POST,
        &format!("{base}/xhr{mine}&after=0"),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "o\n"));

    let hostile = [r#"{"type":"delete","up_to":100}"#.to_owned()];
    for (who, query) in [
        ("nobody", String::new()),
        ("bob", format!("?access_token={bob}")),
    ] {
        let results = attacks(&app, base, &query, &hostile).await;
        assert_all_refused(&results, who, "/v1/sockjs-json");
    }

    let seen = poll_until(&app, &format!("{base}/xhr{mine}"), |s| {
        s.matches(r#"\"type\":\"notification\""#).count() >= 2
    })
    .await;
    assert!(!seen.contains("delete"), "{seen}");
    let page: Value = app.list("alice", "").await;
    assert_eq!(
        page["notifications"].as_array().map(Vec::len),
        Some(2),
        "nothing was deleted: {page}"
    );
}

/// Requests without a valid token open nothing, so they count against no cap: with room
/// for one session, anonymous opens on every transport leave it to alice.
async fn anonymous_requests_open_no_session(b: Backend) {
    let app = spawn_app_with(b, |s| s.sockjs.max_sessions = 1).await;
    for prefix in ["/v1/sockjs", "/v1/sockjs-json"] {
        for i in 0..3 {
            for (method, transport) in [
                (reqwest::Method::POST, "xhr"),
                (reqwest::Method::POST, "xhr_streaming"),
                (reqwest::Method::GET, "eventsource"),
                (reqwest::Method::GET, "htmlfile?c=cb"),
                (reqwest::Method::GET, "jsonp?c=cb"),
            ] {
                for query in ["", "access_token=not-a-token"] {
                    let sep = if transport.contains('?') { "&" } else { "?" };
                    let path = format!("{prefix}/000/anon{i}/{transport}{sep}{query}");
                    let (status, text) = request(&app, method.clone(), &path, None).await;
                    assert_eq!(status, 401, "{path}: {text}");
                }
            }
        }
    }
    let alice = user_token("alice");
    let (status, text) = request(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sockjs/000/mine/xhr?access_token={alice}"),
        None,
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (200, "o\n"),
        "the one place was still free"
    );
}

/// A send body that trickles in is cut off at the body timeout (1 s here), on both kinds
/// of send.
async fn a_trickled_send_body_is_cut_off_at_the_body_timeout(b: Backend) {
    let app = spawn(b).await;
    let alice = user_token("alice");
    let addr = app.address.trim_start_matches("http://").to_owned();
    for prefix in ["/v1/sockjs", "/v1/sockjs-json"] {
        let base = format!("{prefix}/000/slow");
        let (status, _) = request(
            &app,
            reqwest::Method::POST,
            &format!("{base}/xhr?access_token={alice}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        for transport in ["xhr_send", "jsonp_send"] {
            let mut stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let head = format!(
                "POST {base}/{transport}?access_token={alice} HTTP/1.1\r\nHost: {addr}\r\n\
                 Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n[\"a"
            );
            stream.write_all(head.as_bytes()).await.expect("write");
            let started = Instant::now();
            // Trickle a byte every 200 ms while waiting for the answer.
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                assert!(
                    started.elapsed() < Duration::from_secs(8),
                    "{prefix} {transport}: the trickled body was still held"
                );
                tokio::select! {
                    n = stream.read(&mut buf) => {
                        let n = n.unwrap_or(0);
                        answer.extend_from_slice(&buf[..n]);
                        if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let _ = stream.write_all(b"x").await;
                    }
                }
            }
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "{prefix} {transport}: {answer}"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(900),
                "not before the limit"
            );
        }
    }
}

/// CORS credentials go to the origins that may open sessions (here: the server's own),
/// never to any origin that asks.
async fn cors_credentials_only_for_trusted_origins(b: Backend) {
    let app = spawn(b).await;
    for prefix in ["/v1/sockjs", "/v1/sockjs-json"] {
        for (origin, allow, credentials) in [
            ("https://evil.example", Some("*"), None),
            (
                app.address.as_str(),
                Some(app.address.as_str()),
                Some("true"),
            ),
        ] {
            for method in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
                let resp = app
                    .client
                    .request(method.clone(), app.url(&format!("{prefix}/info")))
                    .header("origin", origin)
                    .send()
                    .await
                    .expect("info");
                let h = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                assert_eq!(
                    h("access-control-allow-origin").as_deref(),
                    allow,
                    "{prefix} {method} {origin}"
                );
                assert_eq!(
                    h("access-control-allow-credentials").as_deref(),
                    credentials,
                    "{prefix} {method} {origin}"
                );
            }
        }
    }
}

crate::both_backends!(
    stomp_sessions_belong_to_their_user,
    json_sessions_belong_to_their_user,
    anonymous_requests_open_no_session,
    a_trickled_send_body_is_cut_off_at_the_body_timeout,
    cors_credentials_only_for_trusted_origins,
);
