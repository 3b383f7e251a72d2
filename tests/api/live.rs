//! Live delivery in one process: SSE, WebSocket and long-poll, their cursors and replays, the
//! unread count across sessions, isolation between users, and the limits (token expiry,
//! `Origin`, connection cap, slow consumers), plus the race: many clients reconnecting over and
//! over while notifications are published concurrently must each get every seq exactly once,
//! in order. SQLite runs on the in-process bus, Postgres on Redis.

use crate::helpers::{
    sample, service_token, sign, spawn_app, spawn_app_with, spawn_app_with_history, user_token,
    Backend, SlowLatest, SECRET,
};
use futures::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tidings_test_support::live::{
    eventually, finish_and_assert, fixed_token, long_poll, long_poll_query, metric,
    reconnect_while_publishing, scrape, Auth, Collector, CollectorOptions, PollAnswer, PublishRun,
    SseClient, SseEvent, SseOptions, TokenSource, Transport, WsClient, WsFrame, WsOptions,
    ALL_TRANSPORTS, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};

fn host_port(app: &crate::helpers::TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

async fn publish_n(app: &crate::helpers::TestApp, user: &str, n: usize) -> Vec<Value> {
    let mut receipts = Vec::new();
    for _ in 0..n {
        let body = app.publish(&sample(&[user])).await;
        receipts.push(body["notifications"][0].clone());
    }
    receipts
}

/// Publishes `n` notifications to `user` from four tasks.
async fn publish_many(app: &crate::helpers::TestApp, user: &str, n: usize) {
    let run = PublishRun::start(
        vec![app.address.clone()],
        service_token("billing"),
        vec![user.to_owned()],
        n,
        4,
        n,
    );
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
}

// ---------------------------------------------------------------------------------------------
// Each transport: new notifications, and a replay of what it missed
// ---------------------------------------------------------------------------------------------

async fn sse_delivers_new_notifications_and_replays_missed_ones(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    let mut sse = SseClient::open(&app.address, &token, Some(0)).await;
    assert!(
        sse.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        sse.headers
    );
    assert!(sse.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-cache"));
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    // At connect, after the (empty) replay: the count, with the cursor as its id.
    assert_eq!(sse.wait_unread(0).await, (0, Some(0)));

    let receipt = app.publish(&sample(&["alice"])).await;
    let (seq, n) = sse.next_notification().await;
    assert_eq!(seq, 1);
    assert_eq!(n["id"], receipt["notifications"][0]["id"]);
    assert_eq!(n["type"], "order.shipped");
    assert_eq!(n["title"], "Your order has shipped");
    assert_eq!(n["data"], json!({"order_id": 1234}));
    assert!(n["read_at"].is_null());
    assert!(n["created_at"].is_string());
    assert_eq!(sse.wait_unread(1).await, (1, Some(1)));
    drop(sse);

    // Missed while away: replayed, oldest first, then the count; then live again.
    publish_n(&app, "alice", 2).await;
    let opts = SseOptions::new(Auth::Bearer(token.clone()), Some(1));
    let mut sse = SseClient::connect(&app.client, &app.address, &opts)
        .await
        .expect("reconnect with a Bearer header");
    assert_eq!(sse.next_seqs(2).await, [2, 3]);
    assert_eq!(sse.wait_unread(3).await, (3, Some(3)));
    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_seqs(1).await, [4]);
    assert_eq!(sse.last_event_id.as_deref(), Some("4"));
}

async fn sse_opens_with_retry_and_sends_heartbeats(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.heartbeat_seconds = 1).await;
    let resp = app
        .client
        .get(app.url("/v1/notifications/stream?after=0"))
        .bearer_auth(user_token("alice"))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let saw_ping = timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if text.lines().any(|l| l.trim_end() == ": ping") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        saw_ping,
        Ok(true),
        "a `: ping` comment within {WAIT:?}: {text:?}"
    );
    let first_field = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with(':'))
        .expect("a field");
    assert_eq!(first_field.trim_end(), "retry: 3000", "{text:?}");
}

async fn websocket_delivers_new_notifications_and_replays_missed_ones(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    let mut ws = WsClient::open(&app.address, &token, Some(0)).await;
    assert_eq!(ws.wait_unread(0).await, 0);

    let receipt = app.publish(&sample(&["alice"])).await;
    let (seq, n) = ws.next_notification().await;
    assert_eq!(seq, 1);
    assert_eq!(n["id"], receipt["notifications"][0]["id"]);
    assert_eq!(n["title"], "Your order has shipped");
    assert!(n["read_at"].is_null());
    assert_eq!(ws.wait_unread(1).await, 1);
    ws.close().await;

    publish_n(&app, "alice", 2).await;
    let opts = WsOptions::new(Auth::Bearer(token.clone()), Some(1));
    let mut ws = WsClient::connect(&app.address, &opts)
        .await
        .expect("reconnect with an Authorization header");
    assert_eq!(ws.next_seqs(2).await, [2, 3]);
    assert_eq!(ws.wait_unread(3).await, 3);
    app.publish(&sample(&["alice"])).await;
    assert_eq!(ws.next_seqs(1).await, [4]);
}

async fn websocket_answers_ping_frames(b: Backend) {
    let app = spawn_app(b).await;
    let mut ws = WsClient::open(&app.address, &user_token("alice"), Some(0)).await;
    ws.send_json(&json!({"type": "ping"})).await;
    loop {
        match ws.next().await {
            WsFrame::Pong => break,
            WsFrame::Unread { .. } => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

async fn long_poll_delivers_new_notifications_and_replays_missed_ones(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");

    // Nothing yet: 204 when the timeout passes.
    let answer = long_poll(&app.client, &app.address, &token, Some(0), None, Some(1))
        .await
        .unwrap();
    assert!(matches!(answer, PollAnswer::NoContent), "{answer:?}");

    // A waiting poll answers with what commits.
    let waiting = {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(0), None, Some(30)).await },
        )
    };
    let receipt = app.publish(&sample(&["alice"])).await;
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.seqs(), [1]);
    assert_eq!(answer.counts(), (1, 1));
    if let PollAnswer::Batch { notifications, .. } = &answer {
        assert_eq!(notifications[0]["id"], receipt["notifications"][0]["id"]);
        assert_eq!(notifications[0]["title"], "Your order has shipped");
    }

    // What committed between two polls: at once.
    publish_n(&app, "alice", 2).await;
    let answer = long_poll(&app.client, &app.address, &token, Some(1), None, Some(30))
        .await
        .unwrap();
    assert_eq!(answer.seqs(), [2, 3]);
    assert_eq!(answer.counts(), (3, 3));
    let answer = long_poll(&app.client, &app.address, &token, Some(3), None, Some(1))
        .await
        .unwrap();
    assert!(matches!(answer, PollAnswer::NoContent), "{answer:?}");

    // With `unread`: an answer as soon as the count differs (at once if it already does).
    let answer = long_poll(
        &app.client,
        &app.address,
        &token,
        Some(3),
        Some(5),
        Some(30),
    )
    .await
    .unwrap();
    assert_eq!(answer.seqs(), Vec::<i64>::new());
    assert_eq!(answer.counts(), (3, 3));
    let waiting = {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(3), Some(3), Some(30)).await },
        )
    };
    // Give the poll a chance to be waiting; the answer is the same either way.
    sleep(Duration::from_millis(200)).await;
    let (status, _) = app.mark_read("alice", &json!({"up_to": 1})).await;
    assert_eq!(status, 200);
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.seqs(), Vec::<i64>::new());
    assert_eq!(answer.counts(), (2, 3));
}

async fn long_poll_rejects_bad_parameters(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    for params in [
        vec![("after", "0".to_owned()), ("timeout", "0".to_owned())],
        vec![("after", "0".to_owned()), ("timeout", "121".to_owned())],
        vec![("after", "-1".to_owned())],
        vec![("after", "x".to_owned())],
        vec![("after", "0".to_owned()), ("unread", "-1".to_owned())],
        vec![("timeout", "1".to_owned())],
    ] {
        let answer = long_poll_query(&app.client, &app.address, &token, &params, 1)
            .await
            .unwrap();
        match answer {
            PollAnswer::Refused(r) => assert_eq!(r.status, 400, "{params:?}: {}", r.body),
            other => panic!("{params:?}: expected 400, got {other:?}"),
        }
    }
}

async fn streams_require_a_user_token(b: Backend) {
    let app = spawn_app(b).await;
    let no_token = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::None, Some(0)),
    )
    .await
    .err()
    .expect("an SSE stream without a token is refused")
    .refused();
    assert_eq!(no_token.status, 401);
    assert!(no_token.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let bad = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::Query("not-a-jwt".into()), Some(0)),
    )
    .await
    .err()
    .expect("a bad token is refused");
    assert_eq!(bad.status(), Some(401));
    let service = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::Query(service_token("billing")), Some(0)),
    )
    .await
    .err()
    .expect("a service token cannot read an inbox");
    assert_eq!(service.status(), Some(403));
    let expired = sign(Algorithm::HS256, SECRET, "alice", -10, None);
    let refused = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::Query(expired.clone()), Some(0)),
    )
    .await
    .err()
    .expect("an expired token is refused");
    assert_eq!(refused.status(), Some(401));

    let ws = WsClient::connect(&app.address, &WsOptions::new(Auth::None, Some(0)))
        .await
        .err()
        .expect("a socket without a token is refused before the upgrade");
    assert_eq!(ws.status(), Some(401));
    let ws = WsClient::connect(
        &app.address,
        &WsOptions::new(Auth::Query(service_token("billing")), Some(0)),
    )
    .await
    .err()
    .expect("a service token cannot open a socket");
    assert_eq!(ws.status(), Some(403));

    let resp = app
        .client
        .get(app.url("/v1/notifications/poll?after=0&timeout=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

// ---------------------------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------------------------

async fn sse_last_event_id_wins_over_after(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, "alice", 5).await;
    let token = user_token("alice");
    let opts = SseOptions {
        after: Some(1),
        last_event_id: Some("3".into()),
        auth: Auth::Query(token.clone()),
        headers: Vec::new(),
    };
    let mut sse = SseClient::connect(&app.client, &app.address, &opts)
        .await
        .unwrap();
    assert_eq!(sse.next_seqs(2).await, [4, 5]);
    assert_eq!(sse.wait_unread(5).await, (5, Some(5)));

    // Last-Event-ID alone is a cursor too.
    let opts = SseOptions {
        after: None,
        last_event_id: Some("4".into()),
        auth: Auth::Query(token),
        headers: Vec::new(),
    };
    let mut sse = SseClient::connect(&app.client, &app.address, &opts)
        .await
        .unwrap();
    assert_eq!(sse.next_seqs(1).await, [5]);
    assert_eq!(sse.wait_unread(5).await, (5, Some(5)));
}

async fn no_cursor_means_only_new_notifications(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, "alice", 3).await;
    let token = user_token("alice");

    let mut sse = SseClient::open(&app.address, &token, None).await;
    // The count at connect carries the current seq as its id, so a reconnect resumes there.
    assert_eq!(sse.wait_unread(3).await, (3, Some(3)));
    let mut ws = WsClient::open(&app.address, &token, None).await;
    assert_eq!(ws.wait_unread(3).await, 3);

    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_seqs(1).await, [4]);
    assert_eq!(ws.next_seqs(1).await, [4]);

    // Reconnecting from the id of that first unread event replays exactly what came after it.
    let first = SseOptions {
        after: None,
        last_event_id: Some("3".into()),
        auth: Auth::Query(token),
        headers: Vec::new(),
    };
    let mut again = SseClient::connect(&app.client, &app.address, &first)
        .await
        .unwrap();
    assert_eq!(again.next_seqs(1).await, [4]);
}

/// How late the hub reads the latest seq in the "from now" tests: long enough that a
/// notification published as soon as the client sees its stream open commits first.
pub const LATE_START: Duration = Duration::from_secs(1);

/// "Only new notifications" starts no later than the moment the client sees the stream open
/// (the response headers): a notification published right then arrives, even when the hub's
/// read of the latest seq runs late (on purpose here, by chance on a loaded machine). After
/// the first count arrives a second one is published, so a lost first one fails at once.
async fn no_cursor_starts_no_later_than_the_sse_stream_opens(b: Backend) {
    let app = spawn_app_with_history(b, |_| {}, SlowLatest::layer(LATE_START)).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), None).await;
    app.publish(&sample(&["alice"])).await;
    let mut seqs = Vec::new();
    let mut second = false;
    while !seqs.contains(&2) {
        match sse.next().await {
            SseEvent::Notification { seq, .. } => seqs.push(seq),
            SseEvent::Unread { .. } if !second => {
                second = true;
                app.publish(&sample(&["alice"])).await;
            }
            SseEvent::Unread { .. } | SseEvent::Other { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2], "seq 1 committed after the stream was open");
}

/// The same for a WebSocket, whose "open" is the 101 response.
async fn no_cursor_starts_no_later_than_the_socket_opens(b: Backend) {
    let app = spawn_app_with_history(b, |_| {}, SlowLatest::layer(LATE_START)).await;
    let mut ws = WsClient::open(&app.address, &user_token("alice"), None).await;
    app.publish(&sample(&["alice"])).await;
    let mut seqs = Vec::new();
    let mut second = false;
    while !seqs.contains(&2) {
        match ws.next().await {
            WsFrame::Notification { seq, .. } => seqs.push(seq),
            WsFrame::Unread { .. } if !second => {
                second = true;
                app.publish(&sample(&["alice"])).await;
            }
            WsFrame::Unread { .. } | WsFrame::Other(_) | WsFrame::Pong => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2], "seq 1 committed after the socket was open");
}

/// The same for a STOMP subscription without `x-tidings-after`, whose "open" is the RECEIPT
/// of its SUBSCRIBE.
async fn no_cursor_starts_no_later_than_the_stomp_receipt(b: Backend) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app_with_history(b, |_| {}, SlowLatest::layer(LATE_START)).await;
    let url = format!("ws://{}/v1/stomp", host_port(&app));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v12.stomp"),
    );
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within WAIT")
        .expect("handshake");
    let token = user_token("alice");
    let frames = [
        format!(
            "CONNECT\naccept-version:1.2\nhost:tidings\nheart-beat:0,0\npasscode:{token}\n\n\0"
        ),
        "SUBSCRIBE\nid:feed\ndestination:/user/queue/notifications\nreceipt:subscribed\n\n\0"
            .into(),
    ];
    for frame in frames {
        ws.send(Message::text(frame)).await.expect("send");
    }
    // The next STOMP frame: its command, its headers, its body.
    let mut next_frame = async || loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no STOMP frame within {WAIT:?}"))
            .expect("socket open")
            .expect("socket frame");
        let Message::Text(text) = msg else { continue };
        let text = text.as_str().trim_start_matches('\n');
        let Some((head, body)) = text.split_once("\n\n") else {
            continue;
        };
        let mut lines = head.lines();
        let command = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        return (command, headers, body.trim_end_matches('\0').to_owned());
    };
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (command, _, body) = next_frame().await;
    assert_eq!(command, "CONNECTED", "{body}");
    let (command, headers, body) = next_frame().await;
    assert_eq!(command, "RECEIPT", "{body}");
    assert_eq!(
        header(&headers, "receipt-id").as_deref(),
        Some("subscribed")
    );

    app.publish(&sample(&["alice"])).await;
    let mut seqs = Vec::new();
    let mut second = false;
    while !seqs.contains(&2) {
        let (command, headers, body) = next_frame().await;
        assert_eq!(command, "MESSAGE", "{body}");
        match header(&headers, "x-tidings-event").as_deref() {
            Some("notification") => seqs.push(
                header(&headers, "x-tidings-seq")
                    .and_then(|s| s.parse::<i64>().ok())
                    .expect("x-tidings-seq"),
            ),
            Some("unread") if !second => {
                second = true;
                app.publish(&sample(&["alice"])).await;
            }
            _ => {}
        }
    }
    assert_eq!(seqs, [1, 2], "seq 1 committed after the RECEIPT");
}

async fn large_backlogs_resync_or_page(b: Backend) {
    let app = spawn_app(b).await;
    publish_many(&app, "alice", 501).await;
    let token = user_token("alice");

    // 500 to replay: replayed, all of them.
    let mut sse = SseClient::open(&app.address, &token, Some(1)).await;
    let seqs = sse.next_seqs(500).await;
    assert_eq!(seqs, (2..=501).collect::<Vec<i64>>());
    assert_eq!(sse.wait_unread(501).await, (501, Some(501)));
    let mut ws = WsClient::open(&app.address, &token, Some(1)).await;
    assert_eq!(ws.next_seqs(500).await, (2..=501).collect::<Vec<i64>>());

    // 501: a resync instead.
    let mut sse = SseClient::open(&app.address, &token, Some(0)).await;
    loop {
        match sse.next().await {
            SseEvent::Resync { seq } => {
                assert_eq!(seq, 501);
                break;
            }
            SseEvent::Unread { .. } => continue,
            other => panic!("expected an SSE resync, got {other:?}"),
        }
    }
    let mut ws = WsClient::open(&app.address, &token, Some(0)).await;
    loop {
        match ws.next().await {
            WsFrame::Resync { seq } => {
                assert_eq!(seq, 501);
                break;
            }
            WsFrame::Unread { .. } => continue,
            other => panic!("expected a WebSocket resync, got {other:?}"),
        }
    }

    // Long-poll pages: at most 200 per answer.
    let mut after = 0;
    let mut pages = Vec::new();
    while after < 501 {
        let answer = long_poll(
            &app.client,
            &app.address,
            &token,
            Some(after),
            None,
            Some(5),
        )
        .await
        .unwrap();
        let seqs = answer.seqs();
        assert_eq!(seqs.first(), Some(&(after + 1)), "{after}");
        pages.push(seqs.len());
        after = *seqs.last().unwrap();
    }
    assert_eq!(pages, [200, 200, 101]);
}

// ---------------------------------------------------------------------------------------------
// The race: reconnecting clients and concurrent publishers
// ---------------------------------------------------------------------------------------------

const RACE_CLIENTS: usize = 20;
const RACE_NOTIFICATIONS: usize = 1000;
/// Publishes between two forced reconnects (of the next client in turn).
const RACE_RECONNECT_EVERY: usize = 3;

/// 20 clients of one user, each dropped and reconnected with its cursor over and over, while
/// four tasks publish 1000 notifications: every client ends with 1..=1000, once each, in order.
async fn race(b: Backend, transport: Transport) {
    let app = spawn_app(b).await;
    let token = user_token("racer");
    let collectors: Vec<Collector> = (0..RACE_CLIENTS)
        .map(|i| {
            Collector::spawn(CollectorOptions::new(
                format!("{transport:?} client {i}"),
                transport,
                vec![app.address.clone()],
                fixed_token(token.clone()),
            ))
        })
        .collect();
    for c in &collectors {
        c.wait_connects(1, WAIT).await;
    }
    let run = PublishRun::start(
        vec![app.address.clone()],
        service_token("billing"),
        vec!["racer".into()],
        RACE_NOTIFICATIONS,
        4,
        RACE_NOTIFICATIONS,
    );
    let k = reconnect_while_publishing(
        &run,
        RACE_NOTIFICATIONS,
        RACE_RECONNECT_EVERY,
        &collectors,
        Duration::from_secs(180),
    )
    .await;
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    let reports = finish_and_assert(
        collectors,
        RACE_NOTIFICATIONS as i64,
        Duration::from_secs(120),
    )
    .await;
    let connects: u64 = reports.iter().map(|r| r.connects).sum();
    let resyncs: u64 = reports.iter().map(|r| r.resyncs).sum();
    eprintln!(
        "{transport:?}: {k} reconnects asked, {connects} connections and {resyncs} resyncs in all"
    );
    assert_eq!(app.unread("racer").await["seq"], RACE_NOTIFICATIONS);
}

async fn race_sse(b: Backend) {
    race(b, Transport::Sse).await
}

async fn race_websocket(b: Backend) {
    race(b, Transport::WebSocket).await
}

async fn race_long_poll(b: Backend) {
    race(b, Transport::LongPoll).await
}

// ---------------------------------------------------------------------------------------------
// The unread count across sessions, and isolation
// ---------------------------------------------------------------------------------------------

async fn reads_reach_every_session_of_the_user(b: Backend) {
    let app = spawn_app(b).await;
    let receipts = publish_n(&app, "alice", 3).await;
    let token = user_token("alice");
    let mut sse = SseClient::open(&app.address, &token, Some(3)).await;
    assert_eq!(sse.wait_unread(3).await, (3, Some(3)));
    let mut ws = WsClient::open(&app.address, &token, Some(3)).await;
    assert_eq!(ws.wait_unread(3).await, 3);

    // A read through REST, from a third session.
    let (status, counts) = app.mark_read("alice", &json!({"up_to": 1})).await;
    assert_eq!((status, counts), (200, json!({"unread": 2, "seq": 3})));
    assert_eq!(sse.wait_unread(2).await, (3, Some(3)));
    assert_eq!(ws.wait_unread(2).await, 3);

    // A read frame on the socket: the other session hears it.
    ws.send_read_ids(&[receipts[1]["id"].clone()]).await;
    assert_eq!(sse.wait_unread(1).await, (3, Some(3)));
    assert_eq!(ws.wait_unread(1).await, 3);
    ws.send_read_up_to(3).await;
    assert_eq!(sse.wait_unread(0).await, (3, Some(3)));
    assert_eq!(ws.wait_unread(0).await, 3);
    assert_eq!(app.unread("alice").await, json!({"unread": 0, "seq": 3}));

    // A long-poll waiting on the count hears a read too.
    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_seqs(1).await, [4]);
    assert_eq!(sse.wait_unread(1).await, (4, Some(4)));
    assert_eq!(ws.next_seqs(1).await, [4]);
    let waiting = {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(4), Some(1), Some(30)).await },
        )
    };
    sleep(Duration::from_millis(200)).await;
    ws.send_read_up_to(4).await;
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.seqs(), Vec::<i64>::new());
    assert_eq!(answer.counts(), (0, 4));
    assert_eq!(sse.wait_unread(0).await, (4, Some(4)));
}

async fn users_never_receive_each_others_events(b: Backend) {
    let app = spawn_app(b).await;
    let bob = user_token("bob");
    let mut sse = SseClient::open(&app.address, &bob, Some(0)).await;
    assert_eq!(sse.wait_unread(0).await, (0, Some(0)));
    let mut ws = WsClient::open(&app.address, &bob, Some(0)).await;
    assert_eq!(ws.wait_unread(0).await, 0);

    // Alice gets three and reads them; then bob gets one.
    for _ in 0..3 {
        app.publish(&json!({"recipients": ["alice"], "type": "for.alice", "title": "alice only"}))
            .await;
    }
    let (status, _) = app.mark_read("alice", &json!({"up_to": 3})).await;
    assert_eq!(status, 200);
    app.publish(&json!({"recipients": ["bob"], "type": "for.bob", "title": "bob only"}))
        .await;

    // Until bob's notification, bob's streams carry nothing but bob's own (empty) count.
    loop {
        match sse.next().await {
            SseEvent::Unread { unread, seq, .. } => {
                assert_eq!(
                    (unread, seq),
                    (0, 0),
                    "bob's SSE stream got another user's count"
                )
            }
            SseEvent::Notification { seq, json, .. } => {
                assert_eq!((seq, &json["type"]), (1, &json!("for.bob")), "{json}");
                break;
            }
            SseEvent::Other { .. } => continue,
            other => panic!("bob's SSE stream: {other:?}"),
        }
    }
    assert_eq!(sse.wait_unread(1).await, (1, Some(1)));
    loop {
        match ws.next().await {
            WsFrame::Unread { unread, seq } => {
                assert_eq!(
                    (unread, seq),
                    (0, 0),
                    "bob's socket got another user's count"
                )
            }
            WsFrame::Notification { seq, json } => {
                assert_eq!((seq, &json["type"]), (1, &json!("for.bob")), "{json}");
                break;
            }
            WsFrame::Other(_) | WsFrame::Pong => continue,
            other => panic!("bob's socket: {other:?}"),
        }
    }
    assert_eq!(ws.wait_unread(1).await, 1);
    let answer = long_poll(&app.client, &app.address, &bob, Some(0), None, Some(5))
        .await
        .unwrap();
    assert_eq!(answer.seqs(), [1]);
    assert_eq!(answer.counts(), (1, 1));

    // And alice's replay is hers alone.
    let mut alice = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    for expected in 1..=3 {
        let (seq, json) = alice.next_notification().await;
        assert_eq!((seq, &json["type"]), (expected, &json!("for.alice")));
    }
    assert_eq!(alice.wait_unread(0).await, (3, Some(3)));
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

async fn an_expired_token_ends_the_stream(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    // Valid for a few seconds: long enough to connect, short enough to watch it expire.
    let short = sign(Algorithm::HS256, SECRET, "alice", 5, None);
    let mut sse = SseClient::open(&app.address, &short, Some(0)).await;
    let mut ws = WsClient::open(&app.address, &short, Some(0)).await;
    assert_eq!(sse.next_seqs(1).await, [1]);
    assert_eq!(ws.next_seqs(1).await, [1]);

    let within = Duration::from_secs(5) + WAIT;
    let (seen, end) = sse.until_end(within).await;
    assert!(
        seen.contains(&SseEvent::TokenExpired),
        "an `event: token-expired` before the end: {seen:?}"
    );
    assert!(
        seen.iter()
            .skip_while(|e| **e != SseEvent::TokenExpired)
            .skip(1)
            .all(|e| !matches!(e, SseEvent::Notification { .. })),
        "nothing after token-expired: {seen:?}"
    );
    assert_eq!(end, SseEvent::End, "the stream ends cleanly");
    let (_, code) = ws.until_close(within).await;
    assert_eq!(code, Some(4001), "the socket closes with 4001");

    // A fresh token and the cursor: nothing lost.
    app.publish(&sample(&["alice"])).await;
    let fresh = user_token("alice");
    let mut sse = sse.reconnect(&app.address, Some(&fresh)).await;
    assert_eq!(sse.next_seqs(1).await, [2]);
    let mut ws = WsClient::open(&app.address, &fresh, Some(1)).await;
    assert_eq!(ws.next_seqs(1).await, [2]);
}

/// Clients whose tokens last three seconds, through several expiries while publishing goes
/// on: each expiry ends the stream (`token-expired`, 4001, or a 401 on the next poll), the
/// client comes back with a fresh token and its cursor, and loses nothing.
async fn expiring_tokens_mid_run_lose_nothing(b: Backend) {
    const STAGES: usize = 3;
    const PER_STAGE: usize = 30;
    let app = spawn_app(b).await;
    let short: TokenSource = Arc::new(|| sign(Algorithm::HS256, SECRET, "alice", 3, None));
    let collectors: Vec<Collector> = ALL_TRANSPORTS
        .iter()
        .map(|&transport| {
            let mut opts = CollectorOptions::new(
                format!("{transport:?} with short tokens"),
                transport,
                vec![app.address.clone()],
                short.clone(),
            );
            opts.poll_timeout_secs = 2;
            Collector::spawn(opts)
        })
        .collect();
    let run = PublishRun::start(
        vec![app.address.clone()],
        service_token("billing"),
        vec!["alice".into()],
        STAGES * PER_STAGE,
        2,
        0,
    );
    for stage in 1..=STAGES {
        run.allow(stage * PER_STAGE);
        run.wait_done(stage * PER_STAGE, Duration::from_secs(60))
            .await;
        for c in &collectors {
            c.wait_for_seq((stage * PER_STAGE) as i64, Duration::from_secs(30))
                .await;
        }
        // Every client's token runs out, and it is back, before the next batch.
        for c in &collectors {
            c.wait_connects(stage as u64 + 1, Duration::from_secs(30))
                .await;
        }
    }
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    let reports = finish_and_assert(
        collectors,
        (STAGES * PER_STAGE) as i64,
        Duration::from_secs(30),
    )
    .await;
    for (report, sign_of_expiry) in
        reports
            .iter()
            .zip(["token expired", "closed 4001", "poll answered 401"])
    {
        assert!(
            report.log.iter().any(|line| line.contains(sign_of_expiry)),
            "{}: expected `{sign_of_expiry}` among {:?}",
            report.name,
            report.log
        );
    }
}

async fn websocket_origin_is_checked_before_the_upgrade(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let token = user_token("alice");
    let with_origin = |origin: Option<&str>| WsOptions {
        after: Some(0),
        auth: Auth::Query(token.clone()),
        origin: origin.map(str::to_owned),
    };
    let refused = WsClient::connect(&app.address, &with_origin(Some("https://evil.example")))
        .await
        .err()
        .expect("a foreign Origin is refused");
    assert_eq!(refused.status(), Some(403), "{refused}");
    for origin in [
        Some("https://app.example".to_owned()),
        Some(format!("http://{}", host_port(&app))),
        None,
    ] {
        let mut ws = WsClient::connect(&app.address, &with_origin(origin.as_deref()))
            .await
            .unwrap_or_else(|e| panic!("Origin {origin:?}: {e}"));
        assert_eq!(ws.wait_unread(0).await, 0);
    }

    // With no allowed origins configured: same origin only.
    let app = spawn_app(b).await;
    let refused = WsClient::connect(&app.address, &with_origin(Some("https://app.example")))
        .await
        .err()
        .expect("a cross-site Origin is refused");
    assert_eq!(refused.status(), Some(403));
    let same = format!("http://{}", host_port(&app));
    let mut ws = WsClient::connect(&app.address, &with_origin(Some(&same)))
        .await
        .unwrap_or_else(|e| panic!("same origin: {e}"));
    assert_eq!(ws.wait_unread(0).await, 0);
}

async fn connections_beyond_the_limit_get_503(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.max_connections = 3;
        s.server.heartbeat_seconds = 1;
    })
    .await;
    let token = user_token("alice");
    let mut first = SseClient::open(&app.address, &token, Some(0)).await;
    first.wait_unread(0).await;
    let mut second = SseClient::open(&app.address, &token, Some(0)).await;
    second.wait_unread(0).await;
    let mut ws = WsClient::open(&app.address, &token, Some(0)).await;
    ws.wait_unread(0).await;

    let refused = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::Query(token.clone()), Some(0)),
    )
    .await
    .err()
    .expect("a fourth stream is refused")
    .refused();
    assert_eq!(refused.status, 503);
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    let refused = WsClient::connect(
        &app.address,
        &WsOptions::new(Auth::Query(token.clone()), Some(0)),
    )
    .await
    .err()
    .expect("a fourth socket is refused")
    .refused();
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    match long_poll(&app.client, &app.address, &token, Some(0), None, Some(1))
        .await
        .unwrap()
    {
        PollAnswer::Refused(r) => assert_eq!(r.status, 503),
        other => panic!("a long-poll beyond the limit: expected 503, got {other:?}"),
    }
    // Publishing is not a stream: it still works, and the open streams still deliver.
    app.publish(&sample(&["alice"])).await;
    assert_eq!(first.next_seqs(1).await, [1]);

    // A closed stream frees its place.
    drop(first);
    let mut again = eventually(WAIT, "a place freed by a closed stream", || {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        async move {
            SseClient::connect(
                &client,
                &base,
                &SseOptions::new(Auth::Query(token), Some(0)),
            )
            .await
            .ok()
        }
    })
    .await;
    assert_eq!(again.next_seqs(1).await, [1]);
    drop(second);
}

/// A GET on a socket of its own, so the test decides exactly when the connection closes.
async fn raw_get(app: &crate::helpers::TestApp, path: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(host_port(app))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", host_port(app));
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    socket
}

/// Reads from a raw socket until `marker` has arrived; returns the status of the response.
/// Reading everything the server sent matters: closing a socket with unread data sends a
/// reset, which any server notices, where a client that read it all closes with a FIN.
async fn raw_read_until(socket: &mut tokio::net::TcpStream, marker: &str) -> u16 {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = timeout(WAIT, socket.read(&mut buf))
            .await
            .expect("the response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {marker:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {text:?}"))
}

async fn open_connections(app: &crate::helpers::TestApp, transport: &str) -> Option<f64> {
    let text = scrape(&app.client, &app.address).await;
    metric(&text, "tidings_connections", &[("transport", transport)])
}

async fn one_user_cannot_take_every_place(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.max_connections = 10;
        s.server.max_connections_per_user = 3;
        // Far beyond the bounds below: a closed client must be noticed by its FIN, not by
        // a heartbeat that fails to write (the second one after the close).
        s.server.heartbeat_seconds = 120;
    })
    .await;
    let token = user_token("alice");
    let stream_path = format!("/v1/notifications/stream?access_token={token}");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut socket = raw_get(&app, &stream_path).await;
        // The replay's counters are the last thing sent until the (distant) heartbeat.
        assert_eq!(raw_read_until(&mut socket, "event: unread").await, 200);
        streams.push(socket);
    }

    // Alice's fourth connection is refused with 429 on every transport; the replica is fine.
    let refused = SseClient::connect(
        &app.client,
        &app.address,
        &SseOptions::new(Auth::Query(token.clone()), Some(0)),
    )
    .await
    .err()
    .expect("a fourth stream of one user is refused")
    .refused();
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    let problem: Value = serde_json::from_str(&refused.body).expect("a problem document");
    assert_eq!(problem["type"], "urn:tidings:problem:too-many-connections");
    let refused = WsClient::connect(
        &app.address,
        &WsOptions::new(Auth::Query(token.clone()), Some(0)),
    )
    .await
    .err()
    .expect("a fourth socket is refused")
    .refused();
    assert_eq!(refused.status, 429);
    assert!(refused.headers.contains_key("retry-after"));
    match long_poll(&app.client, &app.address, &token, Some(0), None, Some(1))
        .await
        .unwrap()
    {
        PollAnswer::Refused(r) => assert_eq!(r.status, 429),
        other => panic!("a fourth long-poll: expected 429, got {other:?}"),
    }
    // Another user still gets in.
    let mut bob = SseClient::open(&app.address, &user_token("bob"), Some(0)).await;
    bob.wait_unread(0).await;

    // Streams closed by the client free their places within moments.
    drop(streams);
    let freed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the places of closed streams freed",
        || async { (open_connections(&app, "sse").await == Some(1.0)).then_some(()) },
    )
    .await;
    eprintln!("closed streams noticed after {:?}", freed.elapsed());

    // So do abandoned long-polls, long before their timeout.
    let poll_path = format!("/v1/notifications/poll?after=0&timeout=120&access_token={token}");
    let mut polls = Vec::new();
    for _ in 0..3 {
        polls.push(raw_get(&app, &poll_path).await);
    }
    eventually(WAIT, "three waiting long-polls", || async {
        (open_connections(&app, "longpoll").await == Some(3.0)).then_some(())
    })
    .await;
    drop(polls);
    let freed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the places of abandoned long-polls freed",
        || async { (open_connections(&app, "longpoll").await == Some(0.0)).then_some(()) },
    )
    .await;
    eprintln!("abandoned long-polls noticed after {:?}", freed.elapsed());
    let mut again = SseClient::open(&app.address, &token, Some(0)).await;
    again.wait_unread(0).await;
    drop(bob);
}

fn big(recipients: &[&str]) -> Value {
    json!({
        "recipients": recipients,
        "type": "bulk.test",
        "title": "t".repeat(200),
        "body": "b".repeat(4000),
        "data": {"pad": "d".repeat(16_000)},
    })
}

async fn a_client_that_does_not_read_is_cut_off(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.connection_queue = 8;
        s.server.heartbeat_seconds = 1;
    })
    .await;
    let before = metric(
        &scrape(&app.client, &app.address).await,
        "tidings_slow_consumers_dropped_total",
        &[],
    )
    .unwrap_or(0.0);

    // Another user's client, reading normally all along.
    let other = Collector::spawn(CollectorOptions::new(
        "reader",
        Transport::Sse,
        vec![app.address.clone()],
        fixed_token(user_token("reader")),
    ));
    other.wait_connects(1, WAIT).await;

    // A client that sends its request and never reads a byte.
    let mut raw = tokio::net::TcpStream::connect(host_port(&app))
        .await
        .expect("connect");
    let request = format!(
        "GET /v1/notifications/stream?after=0&access_token={} HTTP/1.1\r\nHost: {}\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n\r\n",
        user_token("slow"),
        host_port(&app)
    );
    raw.write_all(request.as_bytes()).await.unwrap();

    // ~20 KiB each: a few hundred fill the socket buffers, then the server's queue.
    let mut published = 0;
    let mut reader_published = 0;
    loop {
        for _ in 0..10 {
            app.publish(&big(&["slow"])).await;
            published += 1;
        }
        app.publish(&sample(&["reader"])).await;
        reader_published += 1;
        let now = metric(
            &scrape(&app.client, &app.address).await,
            "tidings_slow_consumers_dropped_total",
            &[],
        )
        .unwrap_or(0.0);
        if now > before {
            break;
        }
        assert!(
            published < 2000,
            "{published} notifications of 20 KiB to a client that reads nothing, and the server \
             has not dropped it (tidings_slow_consumers_dropped_total is still {now})"
        );
    }

    // It was disconnected: what is buffered drains and then the connection ends.
    let drained = timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut head = Vec::new();
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return (total, head),
                Ok(n) => {
                    if head.len() < 256 {
                        head.extend_from_slice(&buf[..n.min(256)]);
                    }
                    total += n;
                }
            }
        }
    })
    .await;
    let (total, head) = drained.expect("the server closed the slow client's connection");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(total > 0);

    // The server kept serving everyone else.
    let report = {
        other
            .wait_for_seq(reader_published, Duration::from_secs(30))
            .await;
        other.stop().await
    };
    report.assert_exactly(reader_published);
    let (status, _) = app
        .get(&user_token("slow"), "/v1/notifications/unread-count")
        .await;
    assert_eq!(status, 200);
    // And the slow user, reconnecting with a cursor, is served again.
    let mut sse = SseClient::open(&app.address, &user_token("slow"), Some(published - 1)).await;
    assert_eq!(sse.next_seqs(1).await, [published]);
}

async fn a_socket_that_does_not_read_is_closed_with_4008(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.connection_queue = 8).await;
    let slow_dropped = |text: &str| metric(text, "tidings_slow_consumers_dropped_total", &[]);
    let before = slow_dropped(&scrape(&app.client, &app.address).await).unwrap_or(0.0);
    let token = user_token("slow");
    let mut ws = WsClient::open(&app.address, &token, Some(0)).await;
    // From here on the socket is not read until the server has given up on it.
    let mut published: i64 = 0;
    loop {
        for _ in 0..10 {
            app.publish(&big(&["slow"])).await;
            published += 1;
        }
        let now = slow_dropped(&scrape(&app.client, &app.address).await).unwrap_or(0.0);
        if now > before {
            break;
        }
        assert!(
            published < 2000,
            "{published} notifications of 20 KiB to a socket that reads nothing, and the server \
             has not dropped it"
        );
    }
    // What was buffered, then the close.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_within(left).await {
            None => panic!("the slow socket was not closed within 30s"),
            Some(WsFrame::Notification { seq, .. }) => received.push(seq),
            Some(WsFrame::Closed(code)) => break code,
            Some(WsFrame::Unread { .. } | WsFrame::Pong | WsFrame::Other(_)) => {}
            Some(other) => panic!("expected a close frame, got {other:?} after {received:?}"),
        }
    };
    assert_eq!(
        code,
        Some(4008),
        "a socket too slow to keep up is closed with 4008"
    );
    let last = received.last().copied().unwrap_or(0);
    assert_eq!(received, (1..=last).collect::<Vec<_>>());
    // It reconnects with its cursor and loses nothing.
    let mut again = WsClient::open(&app.address, &token, Some(last)).await;
    if last < published {
        match again.next().await {
            WsFrame::Notification { seq, .. } => assert_eq!(seq, last + 1),
            WsFrame::Resync { seq } => {
                assert_eq!(seq, published);
                assert!(
                    published - last > 500,
                    "a resync for {} missed",
                    published - last
                );
            }
            other => panic!("after reconnecting: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

async fn metrics_show_connections_by_transport_and_deliveries(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.heartbeat_seconds = 1).await;
    let token = user_token("alice");
    let mut sse = SseClient::open(&app.address, &token, Some(0)).await;
    sse.wait_unread(0).await;
    let mut ws = WsClient::open(&app.address, &token, Some(0)).await;
    ws.wait_unread(0).await;
    let waiting = {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(0), None, Some(60)).await },
        )
    };

    let gauge = |text: &str, transport: &str| {
        metric(text, "tidings_connections", &[("transport", transport)])
    };
    eventually(
        WAIT,
        "one connection of each transport in /metrics",
        || async {
            let text = scrape(&app.client, &app.address).await;
            let all = (
                gauge(&text, "sse"),
                gauge(&text, "websocket"),
                gauge(&text, "longpoll"),
            );
            (all == (Some(1.0), Some(1.0), Some(1.0))).then_some(())
        },
    )
    .await;

    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_seqs(1).await, [1]);
    assert_eq!(ws.next_seqs(1).await, [1]);
    assert_eq!(waiting.await.unwrap().unwrap().seqs(), [1]);

    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    let value =
        |name: &str| metric(&text, name, &[]).unwrap_or_else(|| panic!("{name} in:\n{text}"));
    assert!(value("tidings_notifications_published_total") >= 1.0);
    assert!(value("tidings_notifications_delivered_total") >= 2.0);
    assert!(value("tidings_delivery_latency_seconds_count") >= 1.0);
    assert!(value("tidings_delivery_latency_seconds_sum") >= 0.0);
    assert!(
        metric(
            &text,
            "tidings_delivery_latency_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some(),
        "a latency histogram:\n{text}"
    );
    value("tidings_bus_reconnects_total");
    value("tidings_slow_consumers_dropped_total");

    // Closed connections leave the gauge.
    drop(sse);
    ws.close().await;
    eventually(WAIT, "closed streams leave tidings_connections", || async {
        let text = scrape(&app.client, &app.address).await;
        let all = (
            gauge(&text, "sse").unwrap_or(0.0),
            gauge(&text, "websocket").unwrap_or(0.0),
            gauge(&text, "longpoll").unwrap_or(0.0),
        );
        (all == (0.0, 0.0, 0.0)).then_some(())
    })
    .await;
}

async fn readiness_reports_the_bus(b: Backend) {
    let app = spawn_app(b).await;
    let expected = match b {
        Backend::Sqlite => "in-process",
        Backend::Postgres => "up",
    };
    // The Redis subscription may still be connecting just after start.
    let body = eventually(
        WAIT,
        &format!("/readyz reports the bus {expected}"),
        || async {
            let resp = app.client.get(app.url("/readyz")).send().await.ok()?;
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.ok()?;
            (body["bus"] == expected).then_some(body)
        },
    )
    .await;
    assert_eq!(body["database"], "up", "{body}");
}

crate::both_backends!(
    sse_delivers_new_notifications_and_replays_missed_ones,
    sse_opens_with_retry_and_sends_heartbeats,
    websocket_delivers_new_notifications_and_replays_missed_ones,
    websocket_answers_ping_frames,
    long_poll_delivers_new_notifications_and_replays_missed_ones,
    long_poll_rejects_bad_parameters,
    streams_require_a_user_token,
    sse_last_event_id_wins_over_after,
    no_cursor_means_only_new_notifications,
    no_cursor_starts_no_later_than_the_sse_stream_opens,
    no_cursor_starts_no_later_than_the_socket_opens,
    no_cursor_starts_no_later_than_the_stomp_receipt,
    large_backlogs_resync_or_page,
    race_sse,
    race_websocket,
    race_long_poll,
    reads_reach_every_session_of_the_user,
    users_never_receive_each_others_events,
    an_expired_token_ends_the_stream,
    expiring_tokens_mid_run_lose_nothing,
    websocket_origin_is_checked_before_the_upgrade,
    connections_beyond_the_limit_get_503,
    one_user_cannot_take_every_place,
    a_client_that_does_not_read_is_cut_off,
    a_socket_that_does_not_read_is_closed_with_4008,
    metrics_show_connections_by_transport_and_deliveries,
    readiness_reports_the_bus,
);
