//! Scheduled notifications (`deliver_at`): stored with a 202, published at their time (each
//! once, with the seq of that commit, on the live transports), listed and cancelled by their
//! service, kept across a restart and a database outage.

use crate::helpers::{
    problem_fields, sample, service_token, spawn_app, spawn_app_with, user_token, Backend, TestApp,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tidings_test_support::live::{
    check_exactly_once_in_order, eventually, SseClient, SseEvent, WsClient,
};
use tokio::time::Instant;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `sample(recipients)` to be delivered at `at`, carrying its time in `data.due_us` so a
/// client can tell how late it arrived.
fn at(recipients: &[&str], at: DateTime<Utc>) -> Value {
    let mut body = sample(recipients);
    body["deliver_at"] = json!(rfc3339(at));
    body["data"] = json!({"due_us": at.timestamp_micros()});
    body
}

async fn post(app: &TestApp, token: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let resp = app.publish_raw(token, body, key).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Schedules as `billing`; expects a 202 and returns the schedule id.
async fn schedule(app: &TestApp, body: &Value) -> String {
    let (status, answer) = post(app, &service_token("billing"), body, None).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliver_at"], body["deliver_at"], "{answer}");
    answer["schedule_id"]
        .as_str()
        .expect("schedule_id")
        .to_owned()
}

async fn cancel(app: &TestApp, service: &str, id: &str) -> u16 {
    app.client
        .delete(app.url(&format!("/v1/scheduled/{id}")))
        .bearer_auth(service_token(service))
        .send()
        .await
        .expect("cancel")
        .status()
        .as_u16()
}

fn micros_now() -> i64 {
    Utc::now().timestamp_micros()
}

/// 200 notifications scheduled over the next 5 s for 20 users, each read live over SSE (half
/// of them) or WebSocket: every one arrives within 1 s of its time, never before, exactly once,
/// in seq order; and nothing is visible or counted before its time.
async fn scheduled_arrive_on_time_once_in_order(b: Backend) {
    let app = spawn_app(b).await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let start = Utc::now() + chrono::Duration::milliseconds(1500);
    // Notification k goes to user k % 20, at start + k * 20 ms: 10 per user over 4 s.
    let mut bodies = Vec::new();
    for k in 0..200i64 {
        let user = users[(k % 20) as usize].as_str();
        bodies.push(at(&[user], start + chrono::Duration::milliseconds(k * 20)));
    }
    let mut readers = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let token = user_token(user);
        let address = app.address.clone();
        let sse = i % 2 == 0;
        // Connected before anything is scheduled, so each sees every arrival live.
        let mut sse_client = None;
        let mut ws_client = None;
        if sse {
            sse_client = Some(SseClient::open(&address, &token, Some(0)).await);
        } else {
            ws_client = Some(WsClient::open(&address, &token, Some(0)).await);
        }
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                let (seq, n) = match (&mut sse_client, &mut ws_client) {
                    (Some(c), _) => c.next_notification().await,
                    (_, Some(c)) => c.next_notification().await,
                    _ => unreachable!(),
                };
                let late_us = micros_now() - n["data"]["due_us"].as_i64().expect("due_us");
                got.push((seq, late_us, n["data"]["due_us"].as_i64().unwrap()));
            }
            got
        }));
    }
    let posting = Instant::now();
    let ids = futures::future::join_all(bodies.iter().map(|b| schedule(&app, b))).await;
    assert_eq!(ids.len(), 200);
    assert!(
        posting.elapsed() < Duration::from_millis(1400),
        "scheduling took {:?}: the first are due already",
        posting.elapsed()
    );
    // Stored, not published: nothing in any inbox yet.
    assert_eq!(app.unread("u0").await, json!({"unread": 0, "seq": 0}));

    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("reader");
        let seqs: Vec<i64> = got.iter().map(|g| g.0).collect();
        check_exactly_once_in_order(&seqs, 10).unwrap_or_else(|e| panic!("u{i}: {e}"));
        for (seq, late_us, _) in &got {
            assert!(*late_us >= 0, "u{i} seq {seq} arrived {late_us} µs early");
            assert!(
                *late_us <= 1_000_000,
                "u{i} seq {seq} arrived {} ms late",
                late_us / 1000
            );
        }
        // Committed in the order they were due: seq order is deliver_at order.
        let dues: Vec<i64> = got.iter().map(|g| g.2).collect();
        assert!(dues.windows(2).all(|w| w[0] < w[1]), "u{i}: {got:?}");
    }
    // Delivered rows are no longer pending.
    let (status, page) = app.get(&service_token("billing"), "/v1/scheduled").await;
    assert_eq!(status, 200);
    assert_eq!(page["scheduled"], json!([]), "{page}");
}

/// Cancelled before its time: never delivered. Cancelled after: 409. Another service's or
/// an unknown id: 404.
async fn cancel_before_and_after(b: Backend) {
    let app = spawn_app(b).await;
    let t = Utc::now() + chrono::Duration::milliseconds(1500);
    let cancelled = schedule(&app, &at(&["alice"], t)).await;
    let kept = schedule(
        &app,
        &at(&["alice"], t + chrono::Duration::milliseconds(300)),
    )
    .await;
    assert_eq!(
        cancel(&app, "shipping", &cancelled).await,
        404,
        "not its own"
    );
    assert_eq!(cancel(&app, "billing", &cancelled).await, 204);
    assert_eq!(cancel(&app, "billing", &cancelled).await, 404, "gone");
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(cancel(&app, "billing", &unknown).await, 404);
    assert_eq!(cancel(&app, "billing", "not-a-uuid").await, 400);

    // The one due after the cancelled one arrives; it is the only one, with seq 1.
    let mut sse = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    let (seq, n) = sse.next_notification().await;
    assert_eq!(seq, 1);
    assert_eq!(
        n["data"]["due_us"],
        (t + chrono::Duration::milliseconds(300)).timestamp_micros()
    );
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 1}));
    assert_eq!(cancel(&app, "billing", &kept).await, 409, "delivered");
}

/// The same Idempotency-Key and body: the same 202 (the same schedule), stored once. Another
/// body under the key: 422. Once the time has passed, the same request still answers the
/// first 202, and nothing is published twice.
async fn idempotent_scheduling(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    let body = at(&["alice"], Utc::now() + chrono::Duration::seconds(1));
    let (s1, first) = post(&app, &token, &body, Some("remind-1")).await;
    assert_eq!(s1, 202, "{first}");
    let resp = app.publish_raw(&token, &body, Some("remind-1")).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(resp.json::<Value>().await.unwrap(), first);
    let mut other = body.clone();
    other["deliver_at"] = json!(rfc3339(Utc::now() + chrono::Duration::seconds(60)));
    let (s3, problem) = post(&app, &token, &other, Some("remind-1")).await;
    assert_eq!(s3, 422, "{problem}");
    assert!(problem["type"].as_str().unwrap().contains("idempotency"));
    let (_, page) = app.get(&token, "/v1/scheduled").await;
    assert_eq!(page["scheduled"].as_array().unwrap().len(), 1, "{page}");

    eventually(
        Duration::from_secs(10),
        "the schedule is delivered",
        || async { (app.unread("alice").await["seq"] == 1).then_some(()) },
    )
    .await;
    let (s4, late) = post(&app, &token, &body, Some("remind-1")).await;
    assert_eq!((s4, &late), (202, &first), "the first answer again");
    assert_eq!(app.unread("alice").await["seq"], 1, "published once");
}

/// `deliver_at` beyond 366 days, not a time, or not a string: 422 naming it (beside any other
/// bad field). A user token cannot publish, so cannot schedule: 403. Now or past: published
/// at once (201).
async fn bad_input_is_named(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    for bad in [
        json!(rfc3339(Utc::now() + chrono::Duration::days(367))),
        json!("tomorrow at nine"),
        json!("2026-12-24T09:00:00"),
        json!(1_800_000_000),
    ] {
        let mut body = sample(&["alice"]);
        body["deliver_at"] = bad.clone();
        let (status, problem) = post(&app, &token, &body, None).await;
        assert_eq!(status, 422, "{bad}: {problem}");
        assert_eq!(problem_fields(&problem), ["deliver_at"], "{bad}: {problem}");
    }
    let mut both = sample(&["alice"]);
    both["title"] = json!("");
    both["deliver_at"] = json!("soon");
    let (status, problem) = post(&app, &token, &both, None).await;
    assert_eq!(status, 422);
    assert_eq!(problem_fields(&problem), ["title", "deliver_at"]);

    // It would expire before it is delivered.
    let mut early = at(&["alice"], Utc::now() + chrono::Duration::hours(2));
    early["expires_at"] = json!(rfc3339(Utc::now() + chrono::Duration::hours(1)));
    let (status, problem) = post(&app, &token, &early, None).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem_fields(&problem), ["expires_at"]);
    early["expires_at"] = json!(rfc3339(Utc::now() + chrono::Duration::hours(3)));
    let (status, problem) = post(&app, &token, &early, None).await;
    assert_eq!(status, 202, "{problem}");

    let future = at(&["alice"], Utc::now() + chrono::Duration::hours(1));
    let (status, problem) = post(&app, &user_token("alice"), &future, None).await;
    assert_eq!(status, 403, "{problem}");
    let (status, _) = app.get(&user_token("alice"), "/v1/scheduled").await;
    assert_eq!(status, 403);

    let (status, answer) = post(&app, &token, &at(&["alice"], Utc::now()), None).await;
    assert_eq!(status, 201, "now is now: {answer}");
    assert_eq!(answer["notifications"][0]["seq"], 1);
    assert_eq!(app.unread("alice").await["seq"], 1);
}

/// A service lists only its own pending schedules, in pages.
async fn list_is_own_and_paged(b: Backend) {
    let app = spawn_app(b).await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(schedule(&app, &at(&["alice"], later + chrono::Duration::seconds(i))).await);
    }
    let (status, _) = post(&app, &service_token("shipping"), &at(&["bob"], later), None).await;
    assert_eq!(status, 202);
    let token = service_token("billing");
    let (status, page) = app.get(&token, "/v1/scheduled?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<&str> = page["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["schedule_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(
        page["scheduled"][0]["request"]["recipients"],
        json!(["alice"])
    );
    assert!(page["scheduled"][0]["request"].get("deliver_at").is_none());
    let next = page["next"].as_str().expect("next");
    let (_, page) = app
        .get(&token, &format!("/v1/scheduled?limit=2&after={next}"))
        .await;
    assert_eq!(page["scheduled"].as_array().unwrap().len(), 1);
    assert_eq!(page["scheduled"][0]["schedule_id"], ids[2].as_str());
    assert!(page.get("next").is_none(), "{page}");
    let (_, theirs) = app.get(&service_token("shipping"), "/v1/scheduled").await;
    assert_eq!(theirs["scheduled"].as_array().unwrap().len(), 1);
    let (status, problem) = app.get(&token, "/v1/scheduled?limit=201").await;
    assert_eq!(status, 400);
    assert_eq!(problem_fields(&problem), ["limit"]);
}

/// Past the configured cap of pending schedules, a 429 naming `deliver_at`; a cancel frees a
/// place.
async fn the_cap_on_pending_schedules(b: Backend) {
    let app = spawn_app_with(b, |s| s.schedule.max_pending_per_service = 2).await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let first = schedule(&app, &at(&["alice"], later)).await;
    schedule(&app, &at(&["alice"], later)).await;
    let (status, problem) = post(
        &app,
        &service_token("billing"),
        &at(&["alice"], later),
        None,
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem_fields(&problem), ["deliver_at"]);
    // Another service has its own cap.
    let (status, _) = post(
        &app,
        &service_token("shipping"),
        &at(&["alice"], later),
        None,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(cancel(&app, "billing", &first).await, 204);
    schedule(&app, &at(&["alice"], later)).await;
}

/// A topic's audience is read at delivery: a user who subscribes after the schedule was made
/// gets it, one who left before it is due does not.
async fn topic_audience_is_read_at_delivery(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    let subscribe = |user: &'static str, put: bool| {
        let req = if put {
            app.client
                .put(app.url(&format!("/v1/topics/ops/subscribers/{user}")))
        } else {
            app.client
                .delete(app.url(&format!("/v1/topics/ops/subscribers/{user}")))
        };
        async move {
            let status = req
                .bearer_auth(service_token("billing"))
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{status}");
        }
    };
    subscribe("leaver", true).await;
    let due = Utc::now() + chrono::Duration::milliseconds(1500);
    let body = json!({
        "topic": "ops", "type": "ops.alert", "title": "Deploy at noon",
        "deliver_at": rfc3339(due), "data": {"due_us": due.timestamp_micros()}
    });
    let (status, answer) = post(&app, &token, &body, None).await;
    assert_eq!(status, 202, "{answer}");
    subscribe("joiner", true).await;
    subscribe("leaver", false).await;
    let mut sse = SseClient::open(&app.address, &user_token("joiner"), Some(0)).await;
    let (seq, n) = sse.next_notification().await;
    assert_eq!((seq, n["topic"].as_str()), (1, Some("ops")));
    assert!(micros_now() >= due.timestamp_micros());
    assert_eq!(app.unread("leaver").await["seq"], 0);
}

/// A stored request this release cannot read (as one stored by a later release, with a field
/// it does not know) is left pending for a replica that can, and does not hold up the
/// schedules due after it.
async fn an_unreadable_schedule_is_left_alone(b: Backend) {
    use sqlx::Connection;
    let app = spawn_app(b).await;
    let id = uuid::Uuid::now_v7();
    let request = r#"{"recipients":["alice"],"type":"a","title":"t","from_a_later_release":1}"#;
    let past = Utc::now() - chrono::Duration::seconds(1);
    match b {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO scheduled (id, service, deliver_at, request, created_at)
                 VALUES ($1, 'billing', $2, $3, $2)",
            )
            .bind(id)
            .bind(past)
            .bind(request)
            .execute(&mut db)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO scheduled (id, service, deliver_at, request, created_at)
                 VALUES (?1, 'billing', ?2, ?3, ?2)",
            )
            .bind(id.to_string())
            .bind(rfc3339(past))
            .bind(request)
            .execute(&mut db)
            .await
            .unwrap();
        }
    }
    let due = Utc::now() + chrono::Duration::milliseconds(800);
    schedule(&app, &at(&["alice"], due)).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    let (seq, n) = sse.next_notification().await;
    assert_eq!(
        (seq, &n["data"]["due_us"]),
        (1, &json!(due.timestamp_micros()))
    );
    let (_, page) = app.get(&service_token("billing"), "/v1/scheduled").await;
    assert_eq!(
        page["scheduled"][0]["schedule_id"],
        id.to_string(),
        "{page}"
    );
}

/// SQLite: a schedule outlives its replica; the next one on the same file delivers it.
async fn survives_a_restart(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kept.db").display());
    let use_file = |url: String| {
        move |s: &mut tidings::configuration::Settings| {
            s.database.url = secrecy::SecretString::from(url)
        }
    };
    let due = Utc::now() + chrono::Duration::seconds(2);
    let app = spawn_app_with(b, use_file(url.clone())).await;
    schedule(&app, &at(&["alice"], due)).await;
    drop(app);
    let app = spawn_app_with(b, use_file(url)).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    let (seq, n) = sse.next_notification().await;
    assert_eq!(seq, 1);
    assert!(micros_now() >= n["data"]["due_us"].as_i64().unwrap());
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 1}));
}

/// Postgres: the database unreachable for 5 s across a schedule's time (a proxy between the
/// server and Postgres is cut; the shared Postgres keeps running): it is delivered once when
/// the database is back, never during, never twice.
async fn delivered_after_a_database_outage(b: Backend) {
    let admin = tidings_test_support::harness::postgres_admin_url();
    let host_port = admin
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hp, _)| hp.to_owned())
        .expect("host:port in the admin URL");
    let target = tokio::net::lookup_host(&host_port)
        .await
        .expect("resolve Postgres")
        .next()
        .expect("an address");
    let proxy = tidings_test_support::proxy::TcpProxy::start(target).await;
    let port = proxy.port;
    let app = spawn_app_with(b, move |s| {
        let url = secrecy::ExposeSecret::expose_secret(&s.database.url)
            .replace(&host_port, &format!("127.0.0.1:{port}"));
        s.database.url = secrecy::SecretString::from(url);
    })
    .await;
    let due = Utc::now() + chrono::Duration::seconds(2);
    schedule(&app, &at(&["alice"], due)).await;
    let mut sse = SseClient::open(&app.address, &user_token("alice"), Some(0)).await;
    proxy.cut();
    let cut_at = Instant::now();
    // The outage is the test's subject, 5 s by definition: a fixed wait is the point here.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        Utc::now() > due + chrono::Duration::seconds(2),
        "the time passed while cut"
    );
    proxy.restore();
    let restored_us = micros_now();
    let (seq, _) = sse.next_notification().await;
    assert_eq!(seq, 1);
    assert!(
        micros_now() >= restored_us,
        "not before the database was back"
    );
    eprintln!(
        "delivered {:?} after the cut began (5 s outage)",
        cut_at.elapsed()
    );
    let page = app.list("alice", "?after=0").await;
    assert_eq!(
        page["notifications"].as_array().unwrap().len(),
        1,
        "once: {page}"
    );
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 1}));
}

crate::both_backends!(
    scheduled_arrive_on_time_once_in_order,
    cancel_before_and_after,
    idempotent_scheduling,
    bad_input_is_named,
    list_is_own_and_paged,
    the_cap_on_pending_schedules,
    topic_audience_is_read_at_delivery,
    an_unreadable_schedule_is_left_alone,
);

mod sqlite_only {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_restart() {
        super::survives_a_restart(Backend::Sqlite).await
    }
}

mod postgres_only {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivered_after_a_database_outage() {
        super::delivered_after_a_database_outage(Backend::Postgres).await
    }
}

/// The precision figure: p50 and p99 of (arrival over SSE − `deliver_at`) for 10,000
/// single-recipient notifications (each its own schedule and its own publish) due within one
/// minute, to 100 users, on Postgres (the production backend). Run with
/// `cargo test --release --test api scheduled_figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: about three minutes"]
async fn scheduled_figures() {
    figures(Backend::Postgres).await;
}

async fn figures(b: Backend) {
    const N: i64 = 10_000;
    const USERS: i64 = 100;
    let app = spawn_app_with(b, |s| s.database.max_connections = 10).await;
    let mut readers = Vec::new();
    for u in 0..USERS {
        let mut sse = SseClient::open(&app.address, &user_token(&format!("f{u}")), Some(0)).await;
        readers.push(tokio::spawn(async move {
            let mut late = Vec::new();
            while late.len() < (N / USERS) as usize {
                // The first is due a minute after the stream opens: longer than `next`'s wait.
                match sse.next_within(Duration::from_secs(180)).await {
                    Some(SseEvent::Notification { json, .. }) => {
                        late.push(micros_now() - json["data"]["due_us"].as_i64().unwrap())
                    }
                    Some(SseEvent::Unread { .. }) => {}
                    other => panic!("expected a notification, got {other:?}"),
                }
            }
            late
        }));
    }
    // Due from 100 s from now, over 60 s: time enough to store them all first.
    let start = Utc::now() + chrono::Duration::seconds(100);
    let posting = Instant::now();
    let token = service_token("billing");
    let bodies: Vec<Value> = (0..N)
        .map(|k| {
            at(
                &[&format!("f{}", k % USERS)],
                start + chrono::Duration::microseconds(k * 60_000_000 / N),
            )
        })
        .collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for chunk in bodies.chunks(50) {
        let answers =
            futures::future::join_all(chunk.iter().map(|b| post(&app, &token, b, None))).await;
        for (s, _) in answers {
            *statuses.entry(s).or_default() += 1;
        }
    }
    assert_eq!(statuses.get(&202), Some(&(N as usize)), "{statuses:?}");
    let stored_in = posting.elapsed();
    assert!(
        Utc::now() < start,
        "storing took {stored_in:?}, past the first due time"
    );
    let mut late = Vec::new();
    for r in readers {
        late.extend(r.await.unwrap());
    }
    late.sort_unstable();
    let pct = |p: f64| late[((late.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "scheduled_figures {b:?}: {} notifications due over 60 s to {USERS} users (stored in {stored_in:.1?}); \
         arrival over SSE minus deliver_at: min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        late.len(),
        pct(0.0),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    assert!(late[0] >= 0, "one arrived before its time");
}
