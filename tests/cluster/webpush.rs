//! Web Push across real replicas: two `tidings` processes on one Postgres drain one Web Push
//! outbox into the test push service (which checks VAPID and decrypts every push). One
//! replica is `kill -9`ed mid-run; its leased rows must go to the other, and every
//! subscription must get every notification, first copies in seq order.

use crate::cluster::{service_token, user_token, Cluster};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use tidings::domain::VapidKey;
use tidings_test_support::live::{eventually, metric, scrape, PublishRun};
use tidings_test_support::push::PushService;

const WAIT: Duration = Duration::from_secs(90);

fn first_seqs(push: &PushService, id: &str) -> Vec<i64> {
    let mut seen = HashSet::new();
    push.received(id)
        .into_iter()
        .filter(|r| r.payload["kind"] == "notification")
        .filter_map(|r| r.payload["seq"].as_i64())
        .filter(|s| seen.insert(*s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_push_replica_mid_run_loses_no_push() {
    const TOTAL: usize = 150;
    let key = VapidKey::generate().private_key_b64();
    let mut c = Cluster::start_with_env(
        2,
        &[
            ("TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY", key.as_str()),
            ("TIDINGS__WEBPUSH__SUBJECT", "mailto:ops@example.com"),
            ("TIDINGS__WEBPUSH__ALLOW_INSECURE_ENDPOINTS", "true"),
            ("TIDINGS__WEBPUSH__POLL_MILLIS", "50"),
            // Small leases: both replicas hold some at any moment of the run.
            ("TIDINGS__WEBPUSH__BATCH_SUBSCRIPTIONS", "2"),
            ("TIDINGS__WEBPUSH__BATCH_PER_SUBSCRIPTION", "4"),
        ],
    )
    .await;
    let push = PushService::start().await;
    let key: Value = c
        .client
        .get(format!("{}/v1/push/vapid-public-key", c.url(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    push.expect_server_key(key["publicKey"].as_str().unwrap());
    let users: Vec<String> = (0..6).map(|i| format!("wp-cluster-{i}")).collect();
    let mut subs = Vec::new();
    for u in &users {
        let (id, sub) = push.subscribe();
        let resp = c
            .client
            .post(format!("{}/v1/push/subscriptions", c.url(0)))
            .bearer_auth(user_token(u))
            .json(&sub)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        subs.push(id);
    }
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        users.clone(),
        TOTAL,
        2,
        TOTAL / 2,
    );
    run.wait_done(TOTAL / 3, WAIT).await;
    // The replica to be killed takes part: it has sent pushes, so it holds leases.
    let doomed = c.url(1);
    let client = c.client.clone();
    eventually(WAIT, "replica 1 sends pushes", || {
        let (doomed, client) = (doomed.clone(), client.clone());
        async move {
            let text = scrape(&client, &doomed).await;
            (metric(&text, "tidings_webpush_sent_total", &[]).unwrap_or(0.0) >= 1.0).then_some(())
        }
    })
    .await;
    run.wait_done(TOTAL / 2, WAIT).await;
    c.kill9(1);
    run.set_targets(vec![c.url(0)]);
    run.allow(TOTAL);
    let failures = run.finish(WAIT).await;
    assert!(
        failures.iter().all(|f| f.contains(&c.url(1))),
        "publishing failed beyond the killed replica: {failures:?}"
    );
    for id in &subs {
        eventually(WAIT, "every push reaches its subscription", || async {
            (first_seqs(&push, id).len() >= TOTAL).then_some(())
        })
        .await;
        assert_eq!(
            first_seqs(&push, id),
            (1..=TOTAL as i64).collect::<Vec<_>>(),
            "subscription {id}: first copies in seq order, no gap"
        );
    }
    assert_eq!(push.violations(), Vec::<String>::new());
}
