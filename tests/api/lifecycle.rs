//! Expiring (`expires_at` / `ttl_seconds`) and collapsing (`collapse_key`) notifications
//! (issue 26): an expiring one is listed, then not, with the unread count and a `changed`
//! event on SSE and WebSocket at its time, and never in a replay after it; 100 concurrent
//! publishes with one key leave exactly one unread copy and a count of one more, and a
//! client following `changed` ends with the REST inbox; a read copy is not replaced; Web
//! Push gets the remaining TTL and the key as Topic; bad input is a 422 naming the field.

use crate::helpers::{
    problem_fields, sample, seqs, service_token, spawn_app, spawn_app_with, user_token, Backend,
    TestApp,
};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tidings::domain::VapidKey;
use tidings_test_support::live::{metric, scrape, SseClient, SseEvent, WsClient, WsFrame};
use tidings_test_support::push::{wait_until, PushService};

/// How long past its time an expiring notification may still be announced.
const PRECISION: Duration = Duration::from_secs(1);

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    body
}

fn ids_of(page: &Value) -> BTreeSet<String> {
    page["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect()
}

fn expires_at(receipt_or_notification: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        receipt_or_notification["expires_at"]
            .as_str()
            .expect("expires_at"),
    )
    .expect("an RFC 3339 time")
    .with_timezone(&Utc)
}

/// Waits for the next `changed` event, skipping counter updates.
async fn next_changed_sse(sse: &mut SseClient) -> (Value, Instant) {
    loop {
        match sse.next().await {
            SseEvent::Other { event, data, .. } if event == "changed" => {
                return (serde_json::from_str(&data).expect("JSON"), Instant::now())
            }
            SseEvent::Unread { .. } => continue,
            other => panic!("expected a changed event, got {other:?}"),
        }
    }
}

async fn next_changed_ws(ws: &mut WsClient) -> (Value, Instant) {
    loop {
        match ws.next().await {
            WsFrame::Other(v) if v["type"] == "changed" => return (v, Instant::now()),
            WsFrame::Unread { .. } => continue,
            other => panic!("expected a changed frame, got {other:?}"),
        }
    }
}

/// Instant at which the wall-clock time `t` is reached (now if it has passed).
fn instant_of(t: DateTime<Utc>) -> Instant {
    let left = (t - Utc::now()).to_std().unwrap_or_default();
    Instant::now() + left
}

async fn an_expiring_notification_leaves_the_inbox_count_and_streams_at_its_time(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    let body = app
        .publish(&with(sample(&["alice"]), json!({"ttl_seconds": 2})))
        .await;
    let expiring = body["notifications"][0]["id"].as_str().unwrap().to_owned();
    let listed = app.list("alice", "").await;
    assert_eq!(seqs(&listed), [2, 1]);
    assert_eq!(listed["unread"], 2);
    let due = expires_at(&listed["notifications"][0]);
    assert!(listed["notifications"][1].get("expires_at").is_none());

    let token = user_token("alice");
    let mut sse = SseClient::open(&app.address, &token, Some(2)).await;
    assert_eq!(sse.wait_unread(2).await.0, 2);
    let mut ws = WsClient::open(&app.address, &token, Some(2)).await;
    assert_eq!(ws.wait_unread(2).await, 2);

    // Reads around the time: any read that starts after it never shows the notification,
    // and its count always agrees with its list.
    let until = instant_of(due) + Duration::from_millis(600);
    let mut after_due = 0;
    while Instant::now() < until {
        let started = Utc::now();
        let page = app.list("alice", "").await;
        let unread_listed = page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["read_at"].is_null())
            .count() as i64;
        assert_eq!(page["unread"], unread_listed, "{page}");
        if started > due {
            after_due += 1;
            assert_eq!(seqs(&page), [1], "read at {started} after {due}: {page}");
            assert_eq!(app.unread("alice").await["unread"], 1);
        }
    }
    assert!(after_due > 0);

    // Every stream hears of it within a second of its time, with the new count.
    let (sse_changed, sse_at) = next_changed_sse(&mut sse).await;
    let (ws_changed, ws_at) = next_changed_ws(&mut ws).await;
    for (changed, at) in [(&sse_changed, sse_at), (&ws_changed, ws_at)] {
        assert_eq!(changed["change"], "deleted", "{changed}");
        assert_eq!(changed["ids"], json!([expiring]), "{changed}");
        assert_eq!(changed["seqs"], json!([2]), "{changed}");
        assert_eq!(changed["unread"], 1, "{changed}");
        assert!(
            at <= instant_of(due) + PRECISION,
            "announced {:?} after its time",
            at - instant_of(due)
        );
    }

    // A replay after expiry never returns it, on REST or a new stream.
    assert_eq!(seqs(&app.list("alice", "?after=0").await), [1]);
    let mut again = SseClient::open(&app.address, &token, Some(0)).await;
    assert_eq!(again.next_seqs(1).await, [1]);
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 2}));
    // Seqs are never reused.
    let next = app.publish(&sample(&["alice"])).await;
    assert_eq!(next["notifications"][0]["seq"], 3);
}

async fn collapsing_under_concurrent_publishes_is_exact(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    let token = user_token("alice");
    let mut ws = WsClient::open(&app.address, &token, Some(1)).await;
    assert_eq!(ws.wait_unread(1).await, 1);

    let publishes = (0..100).map(|i| {
        let app = &app;
        async move {
            let mut body = with(
                sample(&["alice"]),
                json!({"collapse_key": "chat:general", "title": format!("{} new messages", i + 1)}),
            );
            body["data"] = json!({"i": i});
            let resp = app
                .publish_raw(&service_token("billing"), &body, None)
                .await;
            assert_eq!(resp.status(), 201);
        }
    });
    join_all(publishes).await;

    let page = app.list("alice", "?after=0").await;
    let notifications = page["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 2, "{page}");
    assert_eq!(page["unread"], 2, "{page}");
    assert_eq!(page["seq"], 101, "{page}");
    assert_eq!(notifications[1]["seq"], 101, "the newest copy stays");
    assert_eq!(app.unread("alice").await, json!({"unread": 2, "seq": 101}));

    // A client that adds each notification and drops each deleted id shows the REST inbox
    // (a notification it never got, because its catch-up read found it already replaced, is
    // still announced as deleted).
    let want = ids_of(&page);
    let newest = notifications[1]["id"].as_str().unwrap().to_owned();
    let mut added = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut deleted_seqs = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(deleted_seqs.len() == 99 && added.contains(&newest)) {
        assert!(
            Instant::now() < deadline,
            "{} added, {} deleted",
            added.len(),
            deleted.len()
        );
        match ws.next().await {
            WsFrame::Notification { json, .. } => {
                added.insert(json["id"].as_str().unwrap().to_owned());
            }
            WsFrame::Other(v) if v["type"] == "changed" => {
                assert_eq!(v["change"], "deleted");
                for id in v["ids"].as_array().unwrap() {
                    deleted.insert(id.as_str().unwrap().to_owned());
                }
                for s in v["seqs"].as_array().unwrap() {
                    deleted_seqs.insert(s.as_i64().unwrap());
                }
            }
            WsFrame::Unread { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every replaced seq was announced: 2..=100.
    assert_eq!(deleted_seqs, (2..=100).collect());
    let mut shown: BTreeSet<String> = added.difference(&deleted).cloned().collect();
    shown.insert(notifications[0]["id"].as_str().unwrap().to_owned());
    assert_eq!(shown, want);
}

async fn a_read_copy_or_another_services_is_not_replaced(b: Backend) {
    let app = spawn_app(b).await;
    let keyed = with(sample(&["alice", "bob"]), json!({"collapse_key": "k"}));
    let first = app.publish(&keyed).await;
    let (status, _) = app
        .mark_read("alice", &json!({"ids": [first["notifications"][0]["id"]]}))
        .await;
    assert_eq!(status, 200);
    app.publish(&keyed).await;
    // Alice had read hers: both stay; bob's unread one was replaced.
    assert_eq!(seqs(&app.list("alice", "").await), [2, 1]);
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 2}));
    assert_eq!(seqs(&app.list("bob", "").await), [2]);
    assert_eq!(app.unread("bob").await, json!({"unread": 1, "seq": 2}));
    // The next one replaces alice's unread copy, not the read one.
    app.publish(&keyed).await;
    assert_eq!(seqs(&app.list("alice", "").await), [3, 1]);
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 3}));
    // Another service's key of the same name is another conversation.
    let resp = app.publish_raw(&service_token("shop"), &keyed, None).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(seqs(&app.list("alice", "").await), [4, 3, 1]);
    assert_eq!(app.unread("alice").await, json!({"unread": 2, "seq": 4}));
    // Collapsing and expiring together: the replacement expires too, the replaced is gone.
    let both = with(
        sample(&["alice"]),
        json!({"collapse_key": "k", "ttl_seconds": 60}),
    );
    app.publish(&both).await;
    let page = app.list("alice", "").await;
    assert_eq!(seqs(&page), [5, 4, 1]);
    assert!(page["notifications"][0]["expires_at"].is_string());
    assert_eq!(page["unread"], 2);
}

async fn bad_lifecycle_fields_are_422_naming_the_field(b: Backend) {
    let app = spawn_app(b).await;
    for (extra, field) in [
        (json!({"collapse_key": ""}), "collapse_key"),
        (json!({"collapse_key": "k".repeat(65)}), "collapse_key"),
        (json!({"collapse_key": 7}), "collapse_key"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "tomorrow"}), "expires_at"),
        (json!({"expires_at": "2999-01-01T00:00:00Z"}), "expires_at"),
        (json!({"ttl_seconds": 0}), "ttl_seconds"),
        (json!({"ttl_seconds": "60"}), "ttl_seconds"),
        (json!({"ttl_seconds": 40_000_000}), "ttl_seconds"),
        (
            json!({"ttl_seconds": 60, "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
            "ttl_seconds",
        ),
    ] {
        let body = with(sample(&["alice"]), extra.clone());
        let resp = app
            .publish_raw(&service_token("billing"), &body, None)
            .await;
        let status = resp.status().as_u16();
        let problem: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 422, "{extra}: {problem}");
        assert_eq!(problem_fields(&problem), [field], "{extra}: {problem}");
    }
    // A 64-character key (of any characters) and an `expires_at` with an offset are fine.
    let ok = with(
        sample(&["alice"]),
        json!({"collapse_key": "é".repeat(64), "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)}),
    );
    app.publish(&ok).await;
    assert_eq!(app.unread("alice").await["unread"], 1);
}

async fn web_push_gets_the_time_left_and_the_key_as_topic(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.webpush.vapid_private_key =
            Some(SecretString::from(VapidKey::generate().private_key_b64()));
        s.webpush.subject = Some("mailto:ops@example.com".into());
        s.webpush.allow_insecure_endpoints = true;
        s.webpush.poll_millis = 100;
    })
    .await;
    let push = PushService::start().await;
    let (status, key) = app.get("", "/v1/push/vapid-public-key").await;
    assert_eq!(status, 200);
    push.expect_server_key(key["publicKey"].as_str().unwrap());
    let (sub_id, sub) = push.subscribe();
    let resp = app
        .client
        .post(app.url("/v1/push/subscriptions"))
        .bearer_auth(user_token("alice"))
        .json(&sub)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let keyed = with(
        sample(&["alice"]),
        json!({"collapse_key": "chat:general", "ttl_seconds": 600}),
    );
    app.publish(&keyed).await;
    app.publish(&sample(&["alice"])).await;
    app.publish(&keyed).await;
    wait_until(Duration::from_secs(30), "three pushes", || {
        push.received(&sub_id).len() >= 3
    })
    .await;
    let got = push.received(&sub_id);
    let topic = tidings::bridges::webpush::payload::collapse_topic("chat:general");
    for i in [0, 2] {
        let ttl: u64 = got[i].ttl.as_deref().unwrap().parse().unwrap();
        assert!((590..=600).contains(&ttl), "TTL {ttl}");
        assert_eq!(got[i].topic.as_deref(), Some(topic.as_str()));
    }
    // A notification without either keeps the configured TTL and its own topic.
    assert_eq!(got[1].ttl.as_deref(), Some("86400"));
    assert_ne!(got[1].topic.as_deref(), Some(topic.as_str()));
    assert!(push.violations().is_empty(), "{:?}", push.violations());
}

crate::both_backends!(
    an_expiring_notification_leaves_the_inbox_count_and_streams_at_its_time,
    collapsing_under_concurrent_publishes_is_exact,
    a_read_copy_or_another_services_is_not_replaced,
    bad_lifecycle_fields_are_422_naming_the_field,
    web_push_gets_the_time_left_and_the_key_as_topic,
);

/// The figure: publish latency while 10,000 expired rows are cleaned up, against the same
/// publishes without a clean-up. Run with
/// `cargo test --release --test api lifecycle::expiry_figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn expiry_figures() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        // 10,000 expiring copies: 10 publishes to 1,000 users each.
        let users: Vec<String> = (0..1000).map(|i| format!("u{i:04}")).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let ttl = 10;
        let started = Instant::now();
        for _ in 0..10 {
            app.publish(&with(sample(&refs), json!({"ttl_seconds": ttl})))
                .await;
        }
        let due = started + Duration::from_secs(ttl);
        let stop = AtomicBool::new(false);
        let quiet = measure(&app, Some(400), &stop).await;
        assert!(Instant::now() < due, "the baseline ran past the expiry");
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        // From the expiry until the clean-up has deleted all 10,000, publishes keep going.
        let before = expired(&app).await;
        let from = Instant::now();
        let watch = async {
            while expired(&app).await < before + 10_000.0 {
                assert!(
                    from.elapsed() < Duration::from_secs(60),
                    "clean-up too slow"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.store(true, Ordering::SeqCst);
            from.elapsed()
        };
        let (busy, took) = tokio::join!(measure(&app, None, &stop), watch);
        println!(
            "{backend:?}: publish latency, 4 concurrent single-recipient publishers: without \
             clean-up p50 {:.2} ms p99 {:.2} ms ({} publishes); during the clean-up of 10,000 \
             expired copies p50 {:.2} ms p99 {:.2} ms ({} publishes); clean-up done {:.2} s after \
             the expiry",
            quiet.0,
            quiet.1,
            quiet.2,
            busy.0,
            busy.1,
            busy.2,
            took.as_secs_f64(),
        );
    }
}

async fn expired(app: &TestApp) -> f64 {
    let text = scrape(&app.client, &app.address).await;
    metric(&text, "tidings_notifications_expired_total", &[]).unwrap_or(0.0)
}

/// p50 and p99 (ms) and the count of single-recipient publishes from 4 concurrent
/// publishers: `n` in all, or until `stop`.
async fn measure(app: &TestApp, n: Option<usize>, stop: &AtomicBool) -> (f64, f64, usize) {
    let tasks = (0..4).map(|t| async move {
        let mut lat = Vec::new();
        let mut i = 0;
        while n.map_or(!stop.load(Ordering::SeqCst), |n| i < n / 4) {
            let user = format!("p{t}-{i}");
            let at = Instant::now();
            let resp = app
                .publish_raw(&service_token("billing"), &sample(&[&user]), None)
                .await;
            assert_eq!(resp.status(), 201);
            lat.push(at.elapsed().as_secs_f64() * 1000.0);
            i += 1;
        }
        lat
    });
    let mut all: Vec<f64> = join_all(tasks).await.into_iter().flatten().collect();
    all.sort_by(|a, b| a.total_cmp(b));
    if all.is_empty() {
        return (0.0, 0.0, 0);
    }
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))];
    (pick(0.5), pick(0.99), all.len())
}
