//! The cursor: many concurrent publishers to one user, and a reader that follows
//! `after=<cursor>` sees every seq exactly once, with no hole, ever; and a cursor above the
//! latest seq is told so on every transport, instead of waiting for ever.

use crate::helpers::{
    sample, seqs, service_token, spawn_app, spawn_app_with, user_token, Backend, TestApp,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings_test_support::live::{SseClient, SseEvent, WsClient, WsFrame, WAIT};
use tokio::time::timeout;

const PUBLISHERS: usize = 8;
const TOTAL: usize = 500;

async fn concurrent_publishers_leave_no_hole(b: Backend) {
    let app = Arc::new(spawn_app(b).await);
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let app = app.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let token = user_token("alice");
            let mut cursor = 0i64;
            let mut seen = Vec::with_capacity(TOTAL);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (status, page) = app
                    .get(
                        &token,
                        &format!("/v1/notifications?after={cursor}&limit=200"),
                    )
                    .await;
                assert_eq!(status, 200, "{page}");
                for seq in seqs(&page) {
                    // The heart of it: the next seq the reader sees is always cursor + 1.
                    assert_eq!(seq, cursor + 1, "hole or duplicate after {cursor}");
                    cursor = seq;
                    seen.push(seq);
                }
                if finished && seqs(&page).is_empty() {
                    return seen;
                }
            }
        })
    };

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let app = app.clone();
            tokio::spawn(async move {
                let token = service_token("billing");
                let mut n = TOTAL / PUBLISHERS + usize::from(p < TOTAL % PUBLISHERS);
                while n > 0 {
                    // Mix single- and multi-recipient publishes, so locks are taken in many orders.
                    let body = if n % 3 == 0 {
                        sample(&["bob", "alice", "carol"])
                    } else {
                        sample(&["alice"])
                    };
                    let resp = app.publish_raw(&token, &body, None).await;
                    assert_eq!(resp.status(), 201);
                    n -= 1;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    assert_eq!(seen, (1..=TOTAL as i64).collect::<Vec<_>>());
    assert_eq!(app.unread("alice").await["unread"], TOTAL as i64);
}

/// A text stream read line by line (NDJSON, or the iframe stream's `<script>` lines),
/// each line turned into an event by `unwrap`.
struct Lines {
    body: std::pin::Pin<
        Box<dyn futures::Stream<Item = reqwest::Result<actix_web::web::Bytes>> + Send>,
    >,
    text: String,
    unwrap: fn(&str) -> Option<Value>,
}

impl Lines {
    async fn open(app: &TestApp, path: &str, unwrap: fn(&str) -> Option<Value>) -> Self {
        let resp = app
            .client
            .get(app.url(path))
            .bearer_auth(user_token("alice"))
            .send()
            .await
            .expect("stream");
        assert_eq!(resp.status(), 200, "{path}");
        Self {
            body: Box::pin(resp.bytes_stream()),
            text: String::new(),
            unwrap,
        }
    }

    async fn next(&mut self) -> Value {
        let read = async {
            loop {
                while let Some(end) = self.text.find('\n') {
                    let line: String = self.text.drain(..=end).collect();
                    if let Some(event) = (self.unwrap)(line.trim()) {
                        return event;
                    }
                }
                let chunk = self.body.next().await.expect("open").expect("chunk");
                self.text.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        timeout(WAIT, read).await.expect("an event within WAIT")
    }

    /// Events up to the first whose type is `until`, that one included.
    async fn until(&mut self, until: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = event["type"] == until;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// A STOMP-over-WebSocket subscription to the feed: `(x-tidings-event, body)` per MESSAGE.
struct StompFeed(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl StompFeed {
    async fn open(app: &TestApp, token: &str, after: i64) -> Self {
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
        let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake within WAIT")
            .expect("handshake");
        for frame in [
            format!(
                "CONNECT\naccept-version:1.2\nhost:tidings\nheart-beat:0,0\npasscode:{token}\n\n\0"
            ),
            format!("SUBSCRIBE\nid:feed\ndestination:/user/queue/notifications\nx-tidings-after:{after}\n\n\0"),
        ] {
            ws.send(Message::text(frame)).await.expect("send");
        }
        Self(ws)
    }

    /// The next MESSAGE: its `x-tidings-event`, `x-tidings-seq` (if any) and JSON body.
    async fn next(&mut self) -> (String, Option<String>, Value) {
        use tokio_tungstenite::tungstenite::Message;
        let read = async {
            loop {
                let msg = self.0.next().await.expect("open").expect("frame");
                let Message::Text(text) = msg else { continue };
                let text = text.as_str().trim_start_matches('\n');
                let Some((head, body)) = text.split_once("\n\n") else {
                    continue;
                };
                if !head.starts_with("MESSAGE") {
                    continue;
                }
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .map(str::to_owned)
                };
                let body: Value =
                    serde_json::from_str(body.trim_end_matches('\0')).expect("a JSON body");
                return (
                    header("x-tidings-event").unwrap_or_default(),
                    header("x-tidings-seq"),
                    body,
                );
            }
        };
        timeout(WAIT, read).await.expect("a MESSAGE within WAIT")
    }
}

/// One SockJS session of the `/v1/ws` JSON protocol over JSONP polling.
struct SockJsPoll<'a> {
    app: &'a TestApp,
    session: &'static str,
    token: String,
    events: std::collections::VecDeque<Value>,
}

impl<'a> SockJsPoll<'a> {
    async fn open(app: &'a TestApp, session: &'static str, token: &str, after: i64) -> Self {
        let mut s = Self {
            app,
            session,
            token: token.to_owned(),
            events: Default::default(),
        };
        let status = s.poll(&format!("&after={after}")).await;
        assert_eq!(status, 200);
        s
    }

    /// One poll; its messages join the queue. The token goes on every request, as
    /// sockjs-client sends the URL's query string on each.
    async fn poll(&mut self, extra: &str) -> u16 {
        let url = self.app.url(&format!(
            "/v1/sockjs-json/000/{}/jsonp?c=cb&access_token={}{extra}",
            self.session, self.token
        ));
        let resp = timeout(WAIT, self.app.client.get(url).send())
            .await
            .expect("a poll within WAIT")
            .expect("get");
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("body");
        let frame: String = serde_json::from_str(
            body.strip_prefix("/**/cb(")
                .and_then(|b| b.strip_suffix(");\r\n"))
                .expect("a jsonp call"),
        )
        .expect("a JSON string");
        if let Some(array) = frame.strip_prefix('a') {
            let messages: Vec<String> = serde_json::from_str(array).expect("array");
            self.events.extend(
                messages
                    .iter()
                    .map(|m| serde_json::from_str::<Value>(m).expect("a JSON event")),
            );
        }
        status
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            self.poll("").await;
        }
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

/// Skips everything but notifications; the seq of the next one.
async fn next_grpc_notification(stream: &mut tonic::Streaming<proto::Event>) -> i64 {
    loop {
        let event = timeout(WAIT, stream.message())
            .await
            .expect("an event within WAIT")
            .expect("ok")
            .expect("open");
        if let Some(event::Event::Notification(n)) = event.event {
            return n.seq;
        }
    }
}

/// A cursor above the user's latest seq (a restored database, a client bug) is told so
/// first, with the latest seq, on every transport, and the connection then delivers what
/// is published after it, instead of waiting for ever for seqs past the cursor.
async fn a_cursor_ahead_of_the_latest_seq_is_told_so_and_goes_on_live(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let token = user_token("alice");
    for _ in 0..2 {
        app.publish(&sample(&["alice"])).await;
    }

    // REST: a field on the `after=` page, none at or below the latest seq.
    let page = app.list("alice", "?after=10").await;
    assert_eq!(
        (page["ahead"].clone(), page["seq"].clone()),
        (json!(true), json!(2))
    );
    assert!(seqs(&page).is_empty());
    assert!(app.list("alice", "?after=2").await.get("ahead").is_none());
    assert!(app.list("alice", "").await.get("ahead").is_none());

    // Long-poll: answers at once (not after its 60 s), with the same fields.
    let (status, page) = timeout(
        Duration::from_secs(10),
        app.get(&token, "/v1/notifications/poll?after=100&timeout=60"),
    )
    .await
    .expect("the poll answers at once");
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (page["ahead"].clone(), page["seq"].clone()),
        (json!(true), json!(2))
    );

    // Every stream, opened at 10: the signal first, then the counters.
    let mut sse = SseClient::open(&app.address, &token, Some(10)).await;
    match sse.next().await {
        SseEvent::Other { event, data, id } => {
            assert_eq!(event, "ahead");
            assert_eq!(
                serde_json::from_str::<Value>(&data).expect("json"),
                json!({"seq": 2})
            );
            assert_eq!(id, "2", "a reconnect resumes from the latest seq");
        }
        other => panic!("expected `ahead` first, got {other:?}"),
    }
    let ahead_then_unread = |events: &[Value], what: &str| {
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(types, ["ahead", "unread"], "{what}: {events:?}");
        assert_eq!(events[0], json!({"type": "ahead", "seq": 2}), "{what}");
    };
    let mut ndjson = Lines::open(&app, "/v1/notifications/stream.ndjson?after=10", |l| {
        serde_json::from_str(l).ok()
    })
    .await;
    ahead_then_unread(&ndjson.until("unread").await, "ndjson");
    let mut iframe = Lines::open(
        &app,
        "/v1/notifications/stream.html?origin=https://app.example&after=10",
        crate::helpers::iframe_line,
    )
    .await;
    ahead_then_unread(&iframe.until("unread").await, "iframe");
    let mut ws = WsClient::open(&app.address, &token, Some(10)).await;
    match ws.next().await {
        WsFrame::Other(v) => assert_eq!(v, json!({"type": "ahead", "seq": 2})),
        other => panic!("expected `ahead` first, got {other:?}"),
    }
    let mut stomp = StompFeed::open(&app, &token, 10).await;
    let (event, seq, body) = stomp.next().await;
    assert_eq!(
        (event.as_str(), seq.as_deref(), body),
        ("ahead", Some("2"), json!({"seq": 2}))
    );
    let mut sockjs = SockJsPoll::open(&app, "ahead1", &token, 10).await;
    let mut first = Vec::new();
    while first.last().is_none_or(|e: &Value| e["type"] != "unread") {
        first.push(sockjs.next().await);
    }
    ahead_then_unread(&first, "sockjs-json");
    let mut grpc = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("grpc");
    let mut stream = grpc
        .subscribe(authed(
            &token,
            proto::SubscribeRequest { after: Some(1000) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let first = timeout(WAIT, stream.message())
        .await
        .expect("an event within WAIT")
        .expect("ok")
        .expect("open");
    assert_eq!(
        first.event,
        Some(event::Event::Ahead(proto::Ahead { seq: 2 }))
    );
    let list = grpc
        .list(authed(
            &token,
            proto::ListRequest {
                after: Some(1000),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(list.ahead && list.seq == 2, "{list:?}");

    // What is published next reaches every one of them.
    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_notification().await.0, 3, "sse");
    assert_eq!(ws.next_notification().await.0, 3, "ws");
    let next_seq = |events: Vec<Value>| events.last().map(|e| e["notification"]["seq"].clone());
    assert_eq!(
        next_seq(ndjson.until("notification").await),
        Some(json!(3)),
        "ndjson"
    );
    assert_eq!(
        next_seq(iframe.until("notification").await),
        Some(json!(3)),
        "iframe"
    );
    loop {
        let (event, seq, _) = stomp.next().await;
        if event == "notification" {
            assert_eq!(seq.as_deref(), Some("3"), "stomp");
            break;
        }
    }
    loop {
        let event = sockjs.next().await;
        if event["type"] == "notification" {
            assert_eq!(event["notification"]["seq"], 3, "sockjs-json");
            break;
        }
    }
    assert_eq!(next_grpc_notification(&mut stream).await, 3, "grpc");
    // A long-poll from the latest seq answers with the new one.
    let (status, page) = app
        .get(&token, "/v1/notifications/poll?after=2&timeout=5")
        .await;
    assert_eq!((status, seqs(&page)), (200, vec![3]));
    assert!(page.get("ahead").is_none());
}

crate::both_backends!(
    concurrent_publishers_leave_no_hole,
    a_cursor_ahead_of_the_latest_seq_is_told_so_and_goes_on_live,
);
