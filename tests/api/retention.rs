//! Retention and the history floor: pruning by age and by count while publishing goes on
//! (no 5xx, counters exact), a cursor below the floor told so first on every transport, and
//! on Postgres one replica pruning at a time.

use crate::helpers::{sample, seqs, service_token, spawn_app_with, user_token, Backend, TestApp};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings::configuration::Settings;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings_test_support::live::{eventually, SseClient, SseEvent, WsClient, WsFrame, WAIT};
use tokio::time::timeout;

/// How long a test waits for a retention run to have done its work (runs are 1 s apart).
const SETTLE: Duration = Duration::from_secs(30);

/// Retention on, with a small batch (several transactions per run) and a run every second.
fn retention(max_age_secs: Option<u64>, max_per_user: Option<u64>) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.retention.max_age = max_age_secs.map(Duration::from_secs);
        s.retention.max_per_user = max_per_user;
        s.retention.batch_size = 7;
        s.retention.interval_seconds = 1;
        s.server.allowed_origins = vec!["https://app.example".into()];
    }
}

/// Publishes to `user` one at a time until stopped; returns every status seen. Paced, so
/// the load stays small next to the test's other work (it measures nothing).
struct Publisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl Publisher {
    fn start(app: &TestApp, user: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, url, user) = (
            app.client.clone(),
            app.url("/v1/notifications"),
            user.to_owned(),
        );
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let token = service_token("billing");
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let status = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&sample(&[&user]))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    statuses.push(status);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                statuses
            }
        });
        Publisher { stop, task }
    }

    async fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("publisher task")
    }
}

/// The unread count a page's own snapshot carries equals its unread rows, and the unread
/// endpoint agrees: counters are exact after pruning. The page must hold the whole inbox.
async fn assert_counters_exact(app: &TestApp, user: &str) -> Value {
    let page = app.list(user, "?after=0&limit=200").await;
    let rows = page["notifications"].as_array().expect("array");
    assert!(
        rows.len() < 200,
        "{user}: the page must hold the whole inbox"
    );
    let unread_rows = rows.iter().filter(|n| n["read_at"].is_null()).count() as i64;
    assert_eq!(
        page["unread"].as_i64(),
        Some(unread_rows),
        "{user}: the unread counter matches the unread rows kept: {page}"
    );
    page
}

async fn floor_of(app: &TestApp, user: &str) -> i64 {
    app.list(user, "?after=0&limit=1").await["floor"]
        .as_i64()
        .expect("an after= page carries the floor")
}

async fn retention_prunes_by_age_while_publishing(b: Backend) {
    let app = spawn_app_with(b, retention(Some(2), None)).await;
    for _ in 0..30 {
        app.publish(&sample(&["alice", "bob"])).await;
    }
    let (status, _) = app.mark_read("alice", &json!({"up_to": 10})).await;
    assert_eq!(status, 200);
    let publisher = Publisher::start(&app, "alice");
    // Everything published before the publisher started goes once it is 2 s old; the
    // publisher's own notifications go too as they age, while it keeps publishing.
    eventually(SETTLE, "bob's 30 old notifications pruned", || async {
        (floor_of(&app, "bob").await >= 30).then_some(())
    })
    .await;
    eventually(SETTLE, "alice's old and some newer ones pruned", || async {
        (floor_of(&app, "alice").await > 30).then_some(())
    })
    .await;
    let statuses = publisher.finish().await;
    assert!(statuses.len() > 5, "the publisher published: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201),
        "every publish during pruning succeeded: {statuses:?}"
    );
    let bob = assert_counters_exact(&app, "bob").await;
    assert_eq!(
        bob["unread"], 0,
        "bob's unread ones were pruned with their rows"
    );
    assert!(seqs(&bob).is_empty(), "{bob}");
    assert_eq!(app.unread("bob").await["unread"], 0);
    assert_eq!(
        app.unread("bob").await["seq"],
        30,
        "a pruned seq stays used"
    );
    let alice = assert_counters_exact(&app, "alice").await;
    let kept = seqs(&alice);
    let floor = alice["floor"].as_i64().expect("floor");
    assert!(
        kept.iter().all(|s| *s > floor),
        "nothing at or below the floor is left: {alice}"
    );
    // The next publish takes the next seq: pruned seqs are never reused.
    let receipt = app.publish(&sample(&["bob"])).await;
    assert_eq!(receipt["notifications"][0]["seq"], 31);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tidings_retention_pruned_rows_total{reason=\"age\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tidings_retention_last_run_seconds"));
}

async fn retention_prunes_by_count_while_publishing(b: Backend) {
    let app = spawn_app_with(b, retention(None, Some(5))).await;
    for _ in 0..30 {
        app.publish(&sample(&["alice", "bob"])).await;
    }
    let (status, _) = app.mark_read("bob", &json!({"up_to": 20})).await;
    assert_eq!(status, 200);
    let publisher = Publisher::start(&app, "alice");
    let bob = eventually(SETTLE, "bob keeps his newest 5", || async {
        let page = app.list("bob", "?after=0").await;
        (seqs(&page) == [26, 27, 28, 29, 30]).then_some(page)
    })
    .await;
    assert_eq!(bob["floor"], 25);
    assert_eq!(bob["truncated"], true, "after=0 is below the floor");
    eventually(SETTLE, "alice pruned while she receives", || async {
        (floor_of(&app, "alice").await > 25).then_some(())
    })
    .await;
    let statuses = publisher.finish().await;
    assert!(
        statuses.iter().all(|s| *s == 201),
        "every publish during pruning succeeded: {statuses:?}"
    );
    let bob = assert_counters_exact(&app, "bob").await;
    assert_eq!(bob["unread"], 5, "21..=25 were unread and pruned: {bob}");
    let alice = eventually(SETTLE, "alice down to her newest 5", || async {
        let page = app.list("alice", "?after=0").await;
        (seqs(&page).len() == 5).then_some(page)
    })
    .await;
    let last = app.unread("alice").await["seq"].as_i64().expect("seq");
    assert_eq!(seqs(&alice), ((last - 4)..=last).collect::<Vec<_>>());
    let alice = assert_counters_exact(&app, "alice").await;
    assert_eq!(alice["unread"], 5);
    assert_eq!(app.unread("alice").await["unread"], 5);
}

/// Alice with seqs 1..=10, of which retention kept 8, 9, 10: her floor is 7.
async fn pruned_to_floor_seven(b: Backend) -> TestApp {
    let app = spawn_app_with(b, retention(None, Some(3))).await;
    for _ in 0..10 {
        app.publish(&sample(&["alice"])).await;
    }
    eventually(SETTLE, "alice's floor at 7", || async {
        (floor_of(&app, "alice").await == 7).then_some(())
    })
    .await;
    app
}

/// The events of one NDJSON (or iframe) stream until the `unread` after the replay.
async fn stream_events(app: &TestApp, path: &str, unwrap: fn(&str) -> Option<Value>) -> Vec<Value> {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(user_token("alice"))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200, "{path}");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let read = async {
        loop {
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                if let Some(event) = unwrap(line.trim()) {
                    let done = event["type"] == "unread";
                    events.push(event);
                    if done {
                        return;
                    }
                }
            }
            let chunk = body.next().await.expect("open").expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    timeout(WAIT, read).await.expect("the replay within WAIT");
    events
}

/// The floor event first, then the kept notifications, then the counters.
fn assert_truncated_first(events: &[Value], what: &str) {
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "truncated",
            "notification",
            "notification",
            "notification",
            "unread"
        ],
        "{what}: {events:?}"
    );
    assert_eq!(events[0]["floor"], 7, "{what}");
    let kept: Vec<i64> = events[1..4]
        .iter()
        .map(|e| e["notification"]["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(kept, [8, 9, 10], "{what}");
}

async fn a_cursor_below_the_floor_is_told_so_first_on_every_transport(b: Backend) {
    let app = pruned_to_floor_seven(b).await;
    let token = user_token("alice");

    // REST: a field on the page, which starts at the oldest kept notification.
    let page = app.list("alice", "?after=2").await;
    assert_eq!(
        (page["truncated"].clone(), page["floor"].clone()),
        (json!(true), json!(7))
    );
    assert_eq!(seqs(&page), [8, 9, 10]);
    let page = app.list("alice", "?after=7").await;
    assert!(
        page.get("truncated").is_none(),
        "at the floor nothing was lost: {page}"
    );
    assert_eq!(page["floor"], 7);
    assert!(
        app.list("alice", "").await.get("floor").is_none(),
        "the inbox view has none"
    );

    // Long-poll: the same fields.
    let (status, page) = app
        .get(&token, "/v1/notifications/poll?after=2&timeout=5")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (page["truncated"].clone(), page["floor"].clone()),
        (json!(true), json!(7))
    );
    assert_eq!(seqs(&page), [8, 9, 10]);

    // SSE: a `truncated` event first, whose id is the floor.
    let mut sse = SseClient::open(&app.address, &token, Some(2)).await;
    match sse.next().await {
        SseEvent::Other { event, data, id } => {
            assert_eq!(event, "truncated");
            assert_eq!(
                serde_json::from_str::<Value>(&data).expect("json"),
                json!({"floor": 7})
            );
            assert_eq!(id, "7");
        }
        other => panic!("expected `truncated` first, got {other:?}"),
    }
    for want in [8, 9, 10] {
        match sse.next().await {
            SseEvent::Notification { seq, .. } => assert_eq!(seq, want),
            other => panic!("expected notification {want}, got {other:?}"),
        }
    }
    // A cursor at the floor hears nothing of it.
    let mut sse = SseClient::open(&app.address, &token, Some(7)).await;
    assert!(
        matches!(sse.next().await, SseEvent::Notification { seq: 8, .. }),
        "no truncated event at the floor"
    );

    // NDJSON and the iframe stream.
    let events = stream_events(&app, "/v1/notifications/stream.ndjson?after=2", |l| {
        serde_json::from_str(l).ok()
    })
    .await;
    assert_truncated_first(&events, "ndjson");
    let events = stream_events(
        &app,
        "/v1/notifications/stream.html?origin=https://app.example&after=2",
        crate::helpers::iframe_line,
    )
    .await;
    assert_truncated_first(&events, "iframe");

    // WebSocket.
    let mut ws = WsClient::open(&app.address, &token, Some(2)).await;
    match ws.next().await {
        WsFrame::Other(v) => assert_eq!(v, json!({"type": "truncated", "floor": 7})),
        other => panic!("expected `truncated` first, got {other:?}"),
    }
    assert!(matches!(
        ws.next().await,
        WsFrame::Notification { seq: 8, .. }
    ));

    // STOMP over WebSocket.
    assert_stomp_truncated(&app, &token).await;

    // gRPC: a oneof member first on Subscribe, and the fields on List.
    let mut c = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("grpc");
    let mut stream = c
        .subscribe(authed(&token, proto::SubscribeRequest { after: Some(2) }))
        .await
        .expect("subscribe")
        .into_inner();
    let first = timeout(WAIT, stream.message())
        .await
        .expect("an event")
        .expect("ok")
        .expect("open");
    assert_eq!(
        first.event,
        Some(event::Event::Truncated(proto::Truncated { floor: 7 }))
    );
    let second = timeout(WAIT, stream.message())
        .await
        .expect("an event")
        .expect("ok")
        .expect("open");
    match second.event {
        Some(event::Event::Notification(n)) => assert_eq!(n.seq, 8),
        other => panic!("expected notification 8, got {other:?}"),
    }
    let list = c
        .list(authed(
            &token,
            proto::ListRequest {
                after: Some(2),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(list.truncated);
    assert_eq!(list.floor, 7);
    assert_eq!(list.notifications.first().map(|n| n.seq), Some(8));

    // SockJS, with the /v1/ws JSON protocol over JSONP polling.
    let get = |q: String| {
        let app = &app;
        async move {
            let resp = app
                .client
                .get(app.url(&format!("/v1/sockjs-json/000/rt1/jsonp?c=cb{q}")))
                .send()
                .await
                .expect("get");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    let (status, _) = get(format!("&access_token={token}&after=2")).await;
    assert_eq!(status, 200);
    // Each poll answers with what is queued by then: poll until the counters came.
    let mut events: Vec<Value> = Vec::new();
    while !events.iter().any(|e| e["type"] == "unread") {
        let (_, body) = timeout(WAIT, get(format!("&access_token={token}")))
            .await
            .expect("a poll");
        let frame: String = serde_json::from_str(
            body.strip_prefix("/**/cb(")
                .and_then(|b| b.strip_suffix(");\r\n"))
                .expect("a jsonp call"),
        )
        .expect("a JSON string");
        let Some(array) = frame.strip_prefix('a') else {
            continue; // a heartbeat
        };
        let messages: Vec<String> = serde_json::from_str(array).expect("array");
        events.extend(
            messages
                .iter()
                .map(|m| serde_json::from_str::<Value>(m).expect("a JSON event")),
        );
    }
    assert_truncated_first(&events, "sockjs-json");
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

async fn assert_stomp_truncated(app: &TestApp, token: &str) {
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
        "SUBSCRIBE\nid:feed\ndestination:/user/queue/notifications\nx-tidings-after:2\n\n\0".into(),
    ] {
        ws.send(Message::text(frame)).await.expect("send");
    }
    // (event, body) of each MESSAGE until the counters.
    let mut events = Vec::new();
    let read = async {
        loop {
            let msg = ws.next().await.expect("open").expect("frame");
            let Message::Text(text) = msg else { continue };
            let text = text.as_str().trim_start_matches('\n');
            let Some((head, body)) = text.split_once("\n\n") else {
                continue;
            };
            if !head.starts_with("MESSAGE") {
                continue;
            }
            let event = head
                .lines()
                .find_map(|l| l.strip_prefix("x-tidings-event:"))
                .unwrap_or_default()
                .to_owned();
            let body: Value =
                serde_json::from_str(body.trim_end_matches('\0')).expect("a JSON body");
            let done = event == "unread";
            events.push((event, body));
            if done {
                return;
            }
        }
    };
    timeout(WAIT, read)
        .await
        .expect("the STOMP replay within WAIT");
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "truncated",
            "notification",
            "notification",
            "notification",
            "unread"
        ],
        "{events:?}"
    );
    assert_eq!(events[0].1, json!({"floor": 7}));
    assert_eq!(events[1].1["seq"], 8);
}

/// Collapse keys are kept per (user, service, key): without pruning, a service that gives
/// every notification a key of its own would grow `inbox_collapse` by a row per notification
/// for ever. Retention removes the rows whose copies it pruned.
async fn collapse_keys_are_pruned_with_their_notifications(b: Backend) {
    use sqlx::Connection;
    let app = spawn_app_with(b, retention(None, Some(2))).await;
    for i in 0..6 {
        let mut body = sample(&["alice"]);
        body["collapse_key"] = json!(format!("order:{i}"));
        app.publish(&body).await;
    }
    eventually(SETTLE, "alice down to her newest 2", || async {
        let page = app.list("alice", "?after=0").await;
        (seqs(&page) == [5, 6]).then_some(())
    })
    .await;
    let query =
        "SELECT collapse_key FROM inbox_collapse WHERE user_id = 'alice' ORDER BY collapse_key";
    let keys: Vec<String> = match b {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(query).fetch_all(&mut db).await.unwrap()
        }
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(query).fetch_all(&mut db).await.unwrap()
        }
    };
    assert_eq!(
        keys,
        ["order:4", "order:5"],
        "the pruned copies' keys are gone"
    );
}

crate::both_backends!(
    collapse_keys_are_pruned_with_their_notifications,
    retention_prunes_by_age_while_publishing,
    retention_prunes_by_count_while_publishing,
    a_cursor_below_the_floor_is_told_so_first_on_every_transport,
);

/// On Postgres, the right to prune is one advisory lock for the whole database: while one
/// replica holds it another cannot take it, and it is free again once released, or once
/// the holder's connection is gone (a replica that died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_replica_prunes_at_a_time() {
    use tidings::shutdown::Shutdown;
    use tidings::store::{Outbox, Store};
    let (name, url) = tidings_test_support::harness::create_database("tidings_retention").await;
    let shutdown = Shutdown::new();
    let one = Store::connect(&url, 2, Outbox::off(), &shutdown)
        .await
        .expect("connect");
    let two = Store::connect(&url, 2, Outbox::off(), &shutdown)
        .await
        .expect("connect");
    let held = one
        .retention_lease()
        .await
        .expect("lease")
        .expect("free at first");
    assert!(
        two.retention_lease().await.expect("lease").is_none(),
        "held by one"
    );
    assert!(
        one.retention_lease().await.expect("lease").is_none(),
        "even for its holder's other connections"
    );
    held.release().await;
    let held = two
        .retention_lease()
        .await
        .expect("lease")
        .expect("free once released");
    // A holder that goes away without releasing (its process died) frees it too.
    drop(held);
    eventually(WAIT, "the lock freed with its connection", || async {
        one.retention_lease().await.expect("lease")
    })
    .await
    .release()
    .await;
    shutdown.cancel();
    one.close().await;
    two.close().await;
    tidings_test_support::harness::drop_database_blocking(&name);
}

/// Two replicas on one Postgres, both with retention on, while both publish: the counters
/// stay exact, and between them the runs were taken in turn (a replica skips a run while
/// the other holds the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_prune_in_turn_with_exact_counters() {
    use secrecy::SecretString;
    let (name, url) = tidings_test_support::harness::create_database("tidings_retention").await;
    let shared = |url: String| {
        move |s: &mut Settings| {
            retention(None, Some(4))(s);
            s.database.url = SecretString::from(url);
        }
    };
    let a = spawn_app_with(Backend::Postgres, shared(url.clone())).await;
    let b = spawn_app_with(Backend::Postgres, shared(url.clone())).await;
    let pa = Publisher::start(&a, "carol");
    let pb = Publisher::start(&b, "carol");
    eventually(SETTLE, "carol pruned while both publish", || async {
        (floor_of(&a, "carol").await > 10).then_some(())
    })
    .await;
    let statuses = [pa.finish().await, pb.finish().await].concat();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let page = eventually(SETTLE, "carol down to her newest 4", || async {
        let page = a.list("carol", "?after=0").await;
        (seqs(&page).len() == 4).then_some(page)
    })
    .await;
    assert_eq!(page["unread"], 4, "{page}");
    assert_eq!(b.unread("carol").await["unread"], 4);
    drop((a, b));
    tidings_test_support::harness::drop_database_blocking(&name);
}

/// Figures, not a check: how long pruning 18,000 rows takes on each backend, and single
/// publishes' latency while it runs and after. One replica seeds 200 users x 100
/// notifications with retention off; a second one on the same database, with
/// MAX_PER_USER=10 and batches of 1,000, prunes them. Run with
/// `cargo test --test api retention_figures -- --ignored --nocapture`.
async fn retention_figures(b: Backend) {
    use secrecy::SecretString;
    use std::time::Instant;
    use tidings_test_support::live::{metric, scrape};
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pg) = match b {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("tidings.db").display()),
            None,
        ),
        Backend::Postgres => {
            let (name, url) =
                tidings_test_support::harness::create_database("tidings_retention").await;
            (url, Some(name))
        }
    };
    let users: Vec<String> = (0..200).map(|i| format!("u{i:03}")).collect();
    let recipients: Vec<&str> = users.iter().map(String::as_str).collect();
    let seed = spawn_app_with(b, {
        let url = url.clone();
        move |s| s.database.url = SecretString::from(url)
    })
    .await;
    for _ in 0..100 {
        seed.publish(&sample(&recipients)).await;
    }
    drop(seed);
    let app = spawn_app_with(b, {
        let url = url.clone();
        move |s| {
            retention(None, Some(10))(s);
            s.retention.batch_size = 1000;
            s.retention.interval_seconds = 3600;
            s.database.url = SecretString::from(url);
        }
    })
    .await;
    let pruned_rows = |app: &TestApp| {
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            let text = scrape(&client, &address).await;
            metric(
                &text,
                "tidings_retention_pruned_rows_total",
                &[("reason", "count")],
            )
            .unwrap_or(0.0)
        }
    };
    let publish_ms = |app: &TestApp| {
        let (client, url) = (app.client.clone(), app.url("/v1/notifications"));
        async move {
            let t = Instant::now();
            let resp = client
                .post(url)
                .bearer_auth(service_token("billing"))
                .json(&sample(&["zed"]))
                .send()
                .await
                .expect("publish");
            assert_eq!(resp.status(), 201);
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
    let percentiles = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        (v.len(), at(0.5), at(0.99))
    };
    // Publish one at a time from the start until the run is done: the samples cover the run.
    let started = Instant::now();
    let mut during = Vec::new();
    while pruned_rows(&app).await < 18_000.0 {
        during.push(publish_ms(&app).await);
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "pruning did not finish"
        );
    }
    let mut after = Vec::new();
    for _ in 0..200 {
        after.push(publish_ms(&app).await);
    }
    let run = eventually(WAIT, "the run finished", || async {
        let text = scrape(&app.client, &app.address).await;
        metric(&text, "tidings_retention_runs_total", &[])
            .filter(|n| *n >= 1.0)
            .and(metric(&text, "tidings_retention_last_run_seconds", &[]))
    })
    .await;
    let (n1, p50d, p99d) = percentiles(during);
    let (n2, p50a, p99a) = percentiles(after);
    println!(
        "{b:?}: pruned 18,000 rows (200 users x 100 -> newest 10 each, batches of 1,000) in one \
         run of {run:.2} s; single publishes while it ran (from start, n={n1}) p50 {p50d:.2} ms \
         p99 {p99d:.2} ms; after it (n={n2}) p50 {p50a:.2} ms p99 {p99a:.2} ms"
    );
    assert_counters_exact(&app, "u000").await;
    drop(app);
    if let Some(name) = pg {
        tidings_test_support::harness::drop_database_blocking(&name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --ignored --nocapture"]
async fn retention_figures_sqlite() {
    retention_figures(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --ignored --nocapture"]
async fn retention_figures_postgres() {
    retention_figures(Backend::Postgres).await
}
