//! Preferences (issue 25): GET/PUT/PATCH with ETag and If-Match, service access with the
//! `preferences:write` scope, rules applied at commit (a muted recipient gets no row, no seq,
//! no count and no live delivery; `critical` passes; topic publishes too), a PUT racing
//! hundreds of publishes, isolation between users, the `preferences` live event (SSE,
//! WebSocket, STOMP, gRPC), the types a user has received, and bad input named field by field.

use crate::helpers::{
    problem_fields, sample, seqs, service_token, spawn_app, user_token, Backend, TestApp, SECRET,
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::Duration;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings_test_support::harness::sign;
use tidings_test_support::live::{long_poll, SseClient, SseEvent, WsClient, WsFrame, WAIT};
use tokio::time::timeout;

/// A request to `path` with `token`; returns the status, the ETag and the body.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    if_match: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.expect("preferences request");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, etag, resp.json().await.unwrap_or(Value::Null))
}

/// What [`call`] returns: the status, the ETag and the body.
type Reply = (u16, Option<String>, Value);

/// The caller's own preferences.
const PREFS: &str = "/v1/preferences";

async fn get(app: &TestApp, path: &str, token: &str) -> Reply {
    call(app, reqwest::Method::GET, path, token, None, None).await
}

/// `PUT` (`PATCH` below) `doc` to `path`, with `If-Match` when given.
async fn put(app: &TestApp, path: &str, token: &str, if_match: Option<&str>, doc: &Value) -> Reply {
    call(app, reqwest::Method::PUT, path, token, if_match, Some(doc)).await
}

async fn patch(
    app: &TestApp,
    path: &str,
    token: &str,
    if_match: Option<&str>,
    doc: &Value,
) -> Reply {
    call(
        app,
        reqwest::Method::PATCH,
        path,
        token,
        if_match,
        Some(doc),
    )
    .await
}

async fn put_prefs(app: &TestApp, user: &str, doc: &Value) -> String {
    let (status, etag, body) = put(app, PREFS, &user_token(user), None, doc).await;
    assert_eq!(status, 200, "{body}");
    etag.expect("an ETag")
}

fn mute(types: &[&str]) -> Value {
    json!({"rules": [{"types": types, "channels": ["inbox"], "action": "mute"}]})
}

fn typed(kind: &str, recipients: &[&str]) -> Value {
    let mut body = sample(recipients);
    body["type"] = json!(kind);
    body
}

/// A STOMP-over-WebSocket subscription to the caller's feed, open once its SUBSCRIBE's
/// RECEIPT arrives (from then on, every event of the user reaches it).
struct StompFeed(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

/// One MESSAGE of a [`StompFeed`]: its `x-tidings-event`, `x-tidings-seq` and JSON body.
#[derive(Debug)]
struct StompMessage {
    event: String,
    seq: Option<i64>,
    body: Value,
}

impl StompFeed {
    async fn open(app: &TestApp, token: &str, after: Option<i64>) -> Self {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        use tokio_tungstenite::tungstenite::Message;
        let url = format!(
            "ws://{}/v1/stomp",
            app.address.trim_start_matches("http://")
        );
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake within WAIT")
            .expect("handshake");
        let mut feed = Self(ws);
        let after = after
            .map(|a| format!("x-tidings-after:{a}\n"))
            .unwrap_or_default();
        for frame in [
            format!(
                "CONNECT\naccept-version:1.2\nhost:tidings\nheart-beat:0,0\npasscode:{token}\n\n\0"
            ),
            format!("SUBSCRIBE\nid:feed\ndestination:/user/queue/notifications\n{after}receipt:subscribed\n\n\0"),
        ] {
            feed.0.send(Message::text(frame)).await.expect("send");
        }
        loop {
            let (command, _, body) = feed.frame().await;
            match command.as_str() {
                "CONNECTED" | "MESSAGE" => {}
                "RECEIPT" => return feed,
                _ => panic!("unexpected {command}: {body}"),
            }
        }
    }

    /// The next frame: its command, its headers and its body.
    async fn frame(&mut self) -> (String, Vec<(String, String)>, String) {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = timeout(WAIT, self.0.next())
                .await
                .expect("a STOMP frame within WAIT")
                .expect("socket open")
                .expect("socket frame");
            let Message::Text(text) = msg else { continue };
            let text = text.as_str().trim_start_matches('\n');
            let Some((head, body)) = text.split_once("\n\n") else {
                continue;
            };
            let mut lines = head.lines();
            let command = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            return (command, headers, body.trim_end_matches('\0').to_owned());
        }
    }

    /// The next MESSAGE.
    async fn next(&mut self) -> StompMessage {
        let (command, headers, body) = self.frame().await;
        assert_eq!(command, "MESSAGE", "{body}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        StompMessage {
            event: header("x-tidings-event").unwrap_or_default(),
            seq: header("x-tidings-seq").and_then(|s| s.parse().ok()),
            body: serde_json::from_str(&body).expect("a JSON body"),
        }
    }
}

/// A gRPC request carrying `token`.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

/// The next event of a gRPC `Subscribe` stream.
async fn grpc_next(stream: &mut tonic::Streaming<proto::Event>) -> event::Event {
    timeout(WAIT, stream.message())
        .await
        .expect("an event within WAIT")
        .expect("no error")
        .expect("open")
        .event
        .expect("an event")
}

async fn a_muted_type_is_not_stored_counted_or_delivered(b: Backend) {
    let app = spawn_app(b).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    let mut ws = WsClient::open(&app.address, &user_token("alice"), Some(0)).await;
    put_prefs(&app, "alice", &mute(&["marketing.*"])).await;

    // Muted for alice only: no id, no seq for her, and the count says so.
    let r = app
        .publish(&typed("marketing.sale", &["alice", "bob"]))
        .await;
    assert_eq!(r["muted"], 1, "{r}");
    let receipts = r["notifications"].as_array().expect("receipts");
    assert_eq!(receipts[0]["recipient"], "alice");
    assert_eq!(receipts[0]["muted"], true);
    assert!(receipts[0].get("id").is_none() && receipts[0].get("seq").is_none());
    assert_eq!(receipts[1]["recipient"], "bob");
    assert_eq!(receipts[1]["seq"], 1);
    assert!(receipts[1].get("muted").is_none());

    // Every recipient muted: nothing stored at all.
    let r = app.publish(&typed("marketing.news", &["alice"])).await;
    assert_eq!(r["muted"], 1);

    // The next one she gets is seq 1: the muted ones took none.
    let r = app.publish(&typed("order.shipped", &["alice"])).await;
    assert_eq!(
        (r["muted"].clone(), r["notifications"][0]["seq"].clone()),
        (json!(0), json!(1))
    );
    let (seq, n) = sse.next_notification().await;
    assert_eq!((seq, n["type"].as_str()), (1, Some("order.shipped")));
    let (seq, n) = ws.next_notification().await;
    assert_eq!((seq, n["type"].as_str()), (1, Some("order.shipped")));
    let polled = long_poll(
        &app.client,
        &app.address,
        &user_token("alice"),
        Some(0),
        None,
        Some(1),
    )
    .await
    .expect("poll");
    assert_eq!(polled.seqs(), [1]);
    assert_eq!(polled.counts(), (1, 1));
    assert_eq!(seqs(&app.list("alice", "").await), [1]);
    assert_eq!(app.unread("alice").await["unread"], 1);

    // `critical` passes the mute.
    let mut critical = typed("marketing.security", &["alice"]);
    critical["critical"] = json!(true);
    let r = app.publish(&critical).await;
    assert_eq!(
        (r["muted"].clone(), r["notifications"][0]["seq"].clone()),
        (json!(0), json!(2))
    );
    let (seq, _) = sse.next_notification().await;
    assert_eq!(seq, 2);

    // A topic publish: counted as muted, not reached.
    for user in ["alice", "bob"] {
        let resp = app
            .client
            .put(app.url(&format!("/v1/topics/promo/subscribers/{user}")))
            .bearer_auth(service_token("billing"))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(resp.status().as_u16(), 204);
    }
    let mut topic = typed("marketing.sale", &[]);
    topic.as_object_mut().expect("object").remove("recipients");
    topic["topic"] = json!("promo");
    let r = app.publish(&topic).await;
    assert_eq!(
        (r["recipients"].clone(), r["muted"].clone()),
        (json!(1), json!(1)),
        "{r}"
    );

    // Isolation: bob has every marketing notification; alice none but the critical one.
    assert_eq!(seqs(&app.list("bob", "").await), [2, 1]);
    assert_eq!(seqs(&app.list("alice", "").await), [2, 1]);

    // The types each user has received, with counts.
    let (status, _, types) = get(&app, "/v1/notification-types", &user_token("bob")).await;
    assert_eq!(status, 200);
    assert_eq!(
        types,
        json!({"types": [{"type": "marketing.sale", "count": 2}]})
    );
    let (_, _, types) = get(&app, "/v1/notification-types", &user_token("alice")).await;
    assert_eq!(
        types,
        json!({"types": [{"type": "marketing.security", "count": 1}, {"type": "order.shipped", "count": 1}]})
    );
    // Nothing else reached alice's streams: the next event is the unread of the critical one
    // or nothing, never a marketing notification.
    while let Some(ev) = sse.next_within(Duration::from_millis(300)).await {
        if let SseEvent::Notification { json, .. } = ev {
            panic!("unexpected delivery {json}");
        }
    }
}

async fn etag_if_match_and_merge_patch(b: Backend) {
    let app = spawn_app(b).await;
    let alice = user_token("alice");
    let (status, etag, body) = get(&app, PREFS, &alice).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"0\"")));
    assert_eq!(body, json!({"rules": [], "quiet_hours": null}));

    let doc = mute(&["marketing.*"]);
    let (status, etag, _) = put(&app, PREFS, &alice, Some("\"0\""), &doc).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")));
    // Stale: 412, with the current version as its ETag.
    let (status, etag, problem) = put(&app, PREFS, &alice, Some("\"0\""), &doc).await;
    assert_eq!((status, etag.as_deref()), (412, Some("\"1\"")), "{problem}");

    // Two tabs write with the same If-Match at once: one wins, the other is told.
    for round in 0..5 {
        let (_, tag, _) = get(&app, PREFS, &alice).await;
        let tag = tag.expect("etag");
        let a = put(&app, PREFS, &alice, Some(&tag), &doc);
        let b = put(&app, PREFS, &alice, Some(&tag), &doc);
        let (a, b) = tokio::join!(a, b);
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "round {round}");
    }

    // PATCH merges: quiet hours added, rules kept; `null` removes.
    let merge =
        json!({"quiet_hours": {"start": "22:00", "end": "07:00", "time_zone": "Europe/Berlin"}});
    let (status, _, body) = patch(&app, PREFS, &alice, None, &merge).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rules"],
        json!([{"types": ["marketing.*"], "topics": [], "channels": ["inbox"], "action": "mute"}])
    );
    assert_eq!(body["quiet_hours"]["time_zone"], "Europe/Berlin");
    let (status, _, _) = patch(
        &app,
        PREFS,
        &alice,
        Some("\"1\""),
        &json!({"quiet_hours": null}),
    )
    .await;
    assert_eq!(status, 412);
    let (status, _, body) = patch(&app, PREFS, &alice, None, &json!({"quiet_hours": null})).await;
    assert_eq!((status, body["quiet_hours"].clone()), (200, Value::Null));

    // A service with `preferences:write` reads and writes any user's; others may not.
    let writer = sign(
        Algorithm::HS256,
        SECRET,
        "settings",
        3600,
        Some("preferences:write"),
    );
    let (status, _, _) = put(
        &app,
        "/v1/users/bob/preferences",
        &writer,
        None,
        &mute(&["a.*"]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, etag, body) = get(&app, "/v1/users/bob/preferences", &writer).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")));
    assert_eq!(body["rules"][0]["types"], json!(["a.*"]));
    for token in [service_token("billing"), user_token("bob")] {
        let (status, _, _) = get(&app, "/v1/users/bob/preferences", &token).await;
        assert_eq!(status, 403);
    }
    // A service token is not a user.
    let (status, _, _) = get(&app, PREFS, &service_token("billing")).await;
    assert_eq!(status, 403);
    // Alice's writes never touched bob's, nor bob's alice's.
    let (_, _, body) = get(&app, PREFS, &alice).await;
    assert_eq!(body["rules"][0]["types"], json!(["marketing.*"]));
}

async fn bad_input_is_a_422_naming_the_field(b: Backend) {
    let app = spawn_app(b).await;
    let alice = user_token("alice");
    let rule = json!({"channels": ["all"], "action": "mute"});
    for (doc, field) in [
        (
            json!({"rules": [{"channels": ["email"], "action": "mute"}]}),
            "rules[0].channels[0]",
        ),
        (
            json!({"rules": [{"types": ["marketing*"], "channels": ["all"], "action": "mute"}]}),
            "rules[0].types[0]",
        ),
        (
            json!({"quiet_hours": {"start": "22:00", "end": "07:00", "time_zone": "Europe/Atlantis"}}),
            "quiet_hours.time_zone",
        ),
        (json!({"rules": vec![rule; 201]}), "rules"),
    ] {
        let (status, _, problem) = put(&app, PREFS, &alice, None, &doc).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem_fields(&problem), [field]);
        let (status, _, problem) = patch(&app, PREFS, &alice, None, &doc).await;
        assert_eq!(
            (status, problem_fields(&problem)),
            (422, vec![field.to_owned()])
        );
    }
    let (status, _, _) = put(&app, PREFS, &alice, Some("nope"), &json!({})).await;
    assert_eq!(status, 400);
    let mut body = sample(&["alice"]);
    body["critical"] = json!("yes");
    let resp = app
        .publish_raw(&service_token("billing"), &body, None)
        .await;
    assert_eq!(resp.status().as_u16(), 422);
    // Nothing was stored by the refused writes.
    let (_, etag, _) = get(&app, PREFS, &alice).await;
    assert_eq!(etag.as_deref(), Some("\"0\""));
}

/// A PUT that mutes a type lands in the middle of 500 publishes of it. Each publish also
/// goes to `clock`, who has no rules: clock's seqs are the publishes' commit order. Every
/// publish that committed before the PUT is stored for alice, every one after is muted, so
/// in commit order alice's copies are a prefix, and the muted ones the rest; a stored copy
/// after a muted one would be a notification that the rules in force at its commit muted.
async fn a_put_racing_publishes_never_stores_what_it_mutes(b: Backend) {
    let app = spawn_app(b).await;
    let total = 500usize;
    let (put_after, rest) = (150usize, total - 150);
    let publish = |_| {
        let app = &app;
        async move { app.publish(&typed("promo.deal", &["alice", "clock"])).await }
    };
    use futures_util::stream::{self, StreamExt};
    let first = stream::iter(0..put_after).map(publish).buffer_unordered(16);
    let mut results: Vec<Value> = first.collect().await;
    let muting = mute(&["promo.*"]);
    let put = put_prefs(&app, "alice", &muting);
    let more = stream::iter(0..rest)
        .map(publish)
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let (_, more) = tokio::join!(put, more);
    results.extend(more);

    let mut order: Vec<(i64, bool)> = results
        .iter()
        .map(|r| {
            let receipts = r["notifications"].as_array().expect("receipts");
            let alice = receipts
                .iter()
                .find(|x| x["recipient"] == "alice")
                .expect("alice");
            let clock = receipts
                .iter()
                .find(|x| x["recipient"] == "clock")
                .expect("clock");
            (
                clock["seq"].as_i64().expect("clock seq"),
                alice["muted"] == true,
            )
        })
        .collect();
    order.sort_unstable();
    let first_muted = order
        .iter()
        .position(|(_, muted)| *muted)
        .unwrap_or(order.len());
    assert!(
        order[first_muted..].iter().all(|(_, muted)| *muted),
        "a copy was stored after the mute committed: {order:?}"
    );
    assert!(
        first_muted >= put_after,
        "the first {put_after} committed before the PUT"
    );
    // Alice's inbox holds exactly the stored ones, seqs without a hole.
    let stored = first_muted as i64;
    assert_eq!(app.unread("alice").await["unread"], stored);
    assert_eq!(app.unread("clock").await["unread"], total as i64);
    // Publishes after the PUT answered are all muted.
    let r = app.publish(&typed("promo.deal", &["alice"])).await;
    assert_eq!(r["muted"], 1);
}

async fn every_tab_hears_of_a_change(b: Backend) {
    let app = spawn_app(b).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), None).await;
    let mut ws = WsClient::open(&app.address, &user_token("alice"), None).await;
    let mut bob = SseClient::open(&app.address, &user_token("bob"), None).await;
    let mut stomp = StompFeed::open(&app, &user_token("alice"), None).await;
    let mut grpc = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect");
    let mut stream = grpc
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(0) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    // Registered with the hub once the replay's counters arrive.
    assert!(matches!(
        grpc_next(&mut stream).await,
        event::Event::Unread(_)
    ));
    put_prefs(&app, "alice", &mute(&["a.*"])).await;
    let want = json!({"version": 1, "preferences": {"rules": [{"types": ["a.*"], "topics": [], "channels": ["inbox"], "action": "mute"}], "quiet_hours": null}});
    loop {
        match sse.next().await {
            SseEvent::Other { event, data, .. } if event == "preferences" => {
                assert_eq!(serde_json::from_str::<Value>(&data).expect("json"), want);
                break;
            }
            SseEvent::Unread { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    loop {
        match ws.next().await {
            WsFrame::Other(v) if v["type"] == "preferences" => {
                assert_eq!(
                    (v["version"].clone(), v["preferences"].clone()),
                    (want["version"].clone(), want["preferences"].clone())
                );
                break;
            }
            WsFrame::Unread { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    loop {
        let m = stomp.next().await;
        match m.event.as_str() {
            "preferences" => {
                assert_eq!(m.body, want);
                break;
            }
            "unread" => {}
            _ => panic!("unexpected {m:?}"),
        }
    }
    loop {
        match grpc_next(&mut stream).await {
            event::Event::Preferences(p) => {
                assert_eq!(
                    p,
                    proto::Preferences {
                        version: 1,
                        rules: vec![proto::PreferenceRule {
                            types: vec!["a.*".into()],
                            topics: vec![],
                            channels: vec!["inbox".into()],
                            action: "mute".into(),
                        }],
                        quiet_hours: None,
                    }
                );
                break;
            }
            event::Event::Unread(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Quiet hours reach gRPC as a message of their own.
    let (status, _, body) = patch(
        &app,
        PREFS,
        &user_token("alice"),
        None,
        &json!({"quiet_hours": {"start": "22:00", "end": "07:00", "time_zone": "Europe/Berlin"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    loop {
        if let event::Event::Preferences(p) = grpc_next(&mut stream).await {
            assert_eq!(p.version, 2);
            assert_eq!(
                p.quiet_hours,
                Some(proto::QuietHours {
                    start: "22:00".into(),
                    end: "07:00".into(),
                    time_zone: "Europe/Berlin".into(),
                })
            );
            break;
        }
    }
    // Bob's streams are not told of alice's preferences.
    while let Some(ev) = bob.next_within(Duration::from_millis(300)).await {
        assert!(matches!(ev, SseEvent::Unread { .. }), "{ev:?}");
    }
}

/// gRPC: a muted type is left out of a gRPC publish's receipts, never reaches `Subscribe`, and
/// the next notification there has the next seq.
async fn grpc_never_delivers_a_muted_type(b: Backend) {
    let app = spawn_app(b).await;
    put_prefs(&app, "alice", &mute(&["marketing.*"])).await;
    let mut c = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect");
    let mut stream = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(0) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let published = c
        .publish(authed(
            &service_token("billing"),
            proto::PublishRequest {
                recipients: vec!["alice".into(), "bob".into()],
                r#type: "marketing.sale".into(),
                title: "Sale".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("publish")
        .into_inner();
    let to: Vec<&str> = published
        .notifications
        .iter()
        .map(|r| r.recipient.as_str())
        .collect();
    assert_eq!(to, ["bob"], "the muted recipient has no receipt over gRPC");
    app.publish(&typed("order.shipped", &["alice"])).await;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("no error")
            .expect("open");
        if let Some(event::Event::Notification(n)) = ev.event {
            assert_eq!((n.seq, n.r#type.as_str()), (1, "order.shipped"));
            break;
        }
    }
}

/// STOMP: a muted type never reaches the feed (nor a topic subscription), live or in the
/// replay, and the next notification there has the next seq.
async fn stomp_never_delivers_a_muted_type(b: Backend) {
    let app = spawn_app(b).await;
    put_prefs(&app, "alice", &mute(&["marketing.*"])).await;
    let alice = user_token("alice");
    let mut live = StompFeed::open(&app, &alice, None).await;
    let r = app
        .publish(&typed("marketing.sale", &["alice", "bob"]))
        .await;
    assert_eq!(r["muted"], 1, "{r}");
    app.publish(&typed("order.shipped", &["alice"])).await;
    // A replay from the start holds the same: the muted one was never stored.
    let mut replay = StompFeed::open(&app, &alice, Some(0)).await;
    for feed in [&mut live, &mut replay] {
        loop {
            let m = feed.next().await;
            match m.event.as_str() {
                "notification" => {
                    assert_eq!(
                        (m.seq, m.body["type"].as_str()),
                        (Some(1), Some("order.shipped"))
                    );
                    break;
                }
                "unread" => {}
                _ => panic!("unexpected {m:?}"),
            }
        }
    }
    // The next one alice gets is seq 2, and it is the unmuted one.
    app.publish(&typed("marketing.news", &["alice"])).await;
    app.publish(&typed("order.paid", &["alice"])).await;
    loop {
        let m = live.next().await;
        match m.event.as_str() {
            "notification" => {
                assert_eq!(
                    (m.seq, m.body["type"].as_str()),
                    (Some(2), Some("order.paid"))
                );
                break;
            }
            "unread" => {}
            _ => panic!("unexpected {m:?}"),
        }
    }
}

/// The single-request path (a publish with an `Idempotency-Key`) applies the rules too, and
/// its replay answers the same receipts, the muted one included.
async fn an_idempotent_publish_mutes_and_replays_the_same(b: Backend) {
    let app = spawn_app(b).await;
    put_prefs(&app, "alice", &mute(&["marketing.*"])).await;
    let body = typed("marketing.sale", &["alice", "bob"]);
    let first = app
        .publish_raw(&service_token("billing"), &body, Some("k-1"))
        .await;
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["muted"], 1, "{first}");
    assert_eq!(first["notifications"][0]["muted"], true);
    let again = app
        .publish_raw(&service_token("billing"), &body, Some("k-1"))
        .await;
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.expect("json");
    assert_eq!(again, first);
    // Every recipient muted: stored for nobody, no message row left behind for anyone.
    let only = typed("marketing.news", &["alice"]);
    let r = app
        .publish_raw(&service_token("billing"), &only, Some("k-2"))
        .await;
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(app.unread("alice").await["unread"], 0);
    assert_eq!(app.unread("bob").await["unread"], 1);
}

crate::both_backends!(
    an_idempotent_publish_mutes_and_replays_the_same,
    grpc_never_delivers_a_muted_type,
    stomp_never_delivers_a_muted_type,
    a_muted_type_is_not_stored_counted_or_delivered,
    etag_if_match_and_merge_patch,
    bad_input_is_a_422_naming_the_field,
    a_put_racing_publishes_never_stores_what_it_mutes,
    every_tab_hears_of_a_change,
);
