//! Scheduled notifications across replicas: two replicas share the due rows (`FOR UPDATE SKIP
//! LOCKED` and a lease); one is killed with `kill -9` while notifications fall due. Every one
//! is still delivered, exactly once, in seq order (the rows the dead replica had leased go to
//! the other when their lease ends; what it had committed stays committed, and nothing twice).

use crate::cluster::{service_token, user_token, Cluster};
use chrono::Utc;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tidings_test_support::live::{check_exactly_once_in_order, get_json, sample, SseClient};

const USERS: usize = 20;
const PER_USER: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_schedules_are_due_loses_and_doubles_none() {
    let mut c = Cluster::start(2).await;
    let token = service_token("billing");
    let start = Utc::now() + chrono::Duration::seconds(3);
    let mut due = Vec::new();
    let mut readers = Vec::new();
    for u in 0..USERS {
        let mut sse = SseClient::open(&c.url(1), &user_token(&format!("s{u}")), Some(0)).await;
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for _ in 0..PER_USER {
                seqs.push(sse.next_notification().await.0);
            }
            seqs
        }));
    }
    // 600 notifications due at the same moment, scheduled half through each replica: each
    // replica leases a full batch (256) at once, more than it can publish in a moment.
    for k in 0..USERS * PER_USER {
        let at = start + chrono::Duration::microseconds(k as i64);
        let mut body = sample(&[&format!("s{}", k % USERS)]);
        body["deliver_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        body["data"] = json!({"due_us": at.timestamp_micros()});
        due.push(body);
    }
    let posts = due.iter().enumerate().map(|(k, body)| {
        let url = format!("{}/v1/notifications", c.url(k % 2));
        c.client.post(url).bearer_auth(&token).json(body).send()
    });
    for resp in futures::future::join_all(posts).await {
        assert_eq!(resp.expect("schedule").status(), 202);
    }
    // Shortly after they fall due, replica 0 dies with what it had leased and not published.
    let kill_at = start + chrono::Duration::milliseconds(200);
    tokio::time::sleep((kill_at - Utc::now()).to_std().unwrap_or_default()).await;
    c.kill9(0);
    let killed = std::time::Instant::now();

    for (u, reader) in readers.into_iter().enumerate() {
        let seqs = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("s{u}: not every scheduled notification arrived"))
            .expect("reader");
        check_exactly_once_in_order(&seqs, PER_USER as i64).unwrap_or_else(|e| panic!("s{u}: {e}"));
        // And each is a different one of the user's schedules: none doubled, none missing.
        let (status, page) = get_json(
            &c.client,
            &c.url(1),
            "/v1/notifications?after=0&limit=200",
            Some(&user_token(&format!("s{u}"))),
        )
        .await
        .expect("list");
        assert_eq!(status, 200, "{page}");
        let dues: BTreeSet<i64> = page["notifications"]
            .as_array()
            .expect("notifications")
            .iter()
            .map(|n| n["data"]["due_us"].as_i64().expect("due_us"))
            .collect();
        assert_eq!(dues.len(), PER_USER, "s{u}: {page}");
    }
    // The dead replica's leased rows wait out their lease (5 s), then replica 1 takes them.
    eprintln!(
        "every schedule delivered {:?} after the kill",
        killed.elapsed()
    );
    let (_, pending) = get_json(&c.client, &c.url(1), "/v1/scheduled", Some(&token))
        .await
        .expect("list schedules");
    assert_eq!(pending["scheduled"], json!([]), "{pending}");
}
