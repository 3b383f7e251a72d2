//! The bus routed by user, on a real Redis Cluster (three primaries, three replicas, sharded
//! pub/sub) and on one Redis: a replica receives the events of the users it holds, and
//! nothing is lost or duplicated when a Redis primary fails over.

use crate::cluster::{service_token, Cluster};
use crate::{all_connected, collectors};
use std::time::Duration;
use tidings_test_support::live::{finish_and_assert, metric, scrape, PublishRun, Transport};

/// Users enough to land on every shard of the cluster.
const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

/// SSE on one replica and WebSocket on another, for every user, spread over replicas 1 and 2.
fn specs(i: usize) -> [(Transport, usize); 2] {
    [
        (Transport::Sse, 1 + i % 2),
        (Transport::WebSocket, 2 - i % 2),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_publish_through_any_replica_reaches_clients_on_the_others() {
    const TOTAL: usize = 60;
    let c = Cluster::start_on_redis_cluster(3).await;
    let clients: Vec<_> = USERS
        .iter()
        .enumerate()
        .flat_map(|(i, user)| collectors(&c, user, &specs(i)))
        .collect();
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        USERS.iter().map(|u| u.to_string()).collect(),
        TOTAL,
        3,
        TOTAL,
    );
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_primary_killed_mid_run_fails_over_and_loses_nothing() {
    const TOTAL: usize = 300;
    let mut c = Cluster::start_on_redis_cluster(3).await;
    let clients: Vec<_> = USERS
        .iter()
        .enumerate()
        .flat_map(|(i, user)| {
            let mut s = specs(i).to_vec();
            s.push((Transport::Sse, 0));
            collectors(&c, user, &s)
        })
        .collect();
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        USERS.iter().map(|u| u.to_string()).collect(),
        TOTAL,
        3,
        100,
    );
    run.wait_done(100, Duration::from_secs(60)).await;

    // A primary dies while publishing goes on; its replica takes over its slots.
    let primary = c.redis_cluster().a_primary();
    c.redis_cluster().kill(primary);
    run.allow(TOTAL);
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(
        failures.is_empty(),
        "publishing must not depend on Redis: {failures:?}"
    );
    c.redis_cluster().wait_healthy().await;
    // Every seq exactly once, in order, on every client of every replica.
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(90)).await;
    for i in 0..3 {
        let text = scrape(&c.client, &c.url(i)).await;
        let resubscribes = metric(&text, "tidings_bus_resubscribes_total", &[]).unwrap_or(0.0);
        assert!(
            resubscribes >= 1.0,
            "replica {i} resubscribed after the fail-over:\n{text}"
        );
    }
}

/// Clients on replicas 0 and 1 only; publishes through all three. Replica 2 must receive no
/// user event from the bus, and hold only the broadcast channel.
async fn an_idle_replica_receives_nothing(c: Cluster) {
    const TOTAL: usize = 40;
    let clients: Vec<_> = USERS
        .iter()
        .enumerate()
        .flat_map(|(i, user)| collectors(&c, user, &[(Transport::Sse, i % 2)]))
        .collect();
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        USERS.iter().map(|u| u.to_string()).collect(),
        TOTAL,
        3,
        TOTAL,
    );
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(60)).await;

    let busy = scrape(&c.client, &c.url(1)).await;
    let received = metric(&busy, "tidings_bus_events_received_total", &[]).unwrap_or(0.0);
    assert!(
        received > 0.0,
        "replica 1 holds users and receives their events:\n{busy}"
    );
    let idle = scrape(&c.client, &c.url(2)).await;
    assert_eq!(
        metric(&idle, "tidings_bus_events_received_total", &[]),
        Some(0.0),
        "replica 2 holds no connection:\n{idle}"
    );
    assert_eq!(
        metric(&idle, "tidings_bus_subscriptions", &[]),
        Some(1.0),
        "replica 2 holds only the broadcast channel:\n{idle}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_replica_without_connections_receives_no_user_events() {
    an_idle_replica_receives_nothing(Cluster::start_on_redis_cluster(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_redis_a_replica_without_connections_receives_no_user_events() {
    an_idle_replica_receives_nothing(Cluster::start(3).await).await;
}

/// `TIDINGS__REDIS__ROUTING=shared`, the single channel of before: publishes through every
/// replica still reach clients on the others, and a replica holding no connection receives
/// (and drops) every event, which is the cost per-user channels remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_routing_a_publish_reaches_other_replicas_and_every_replica_decodes_it() {
    const TOTAL: usize = 40;
    let c = Cluster::start_with_routing(3, "shared").await;
    let clients: Vec<_> = USERS
        .iter()
        .enumerate()
        .flat_map(|(i, user)| collectors(&c, user, &[(Transport::Sse, i % 2)]))
        .collect();
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        USERS.iter().map(|u| u.to_string()).collect(),
        TOTAL,
        3,
        TOTAL,
    );
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(60)).await;

    let idle = scrape(&c.client, &c.url(2)).await;
    let received = metric(&idle, "tidings_bus_events_received_total", &[]).unwrap_or(0.0);
    assert!(
        received > 0.0,
        "on the shared channel, replica 2 receives events it holds no one for:\n{idle}"
    );
    assert_eq!(
        metric(&idle, "tidings_bus_subscriptions", &[]),
        Some(1.0),
        "one channel, whatever the users held:\n{idle}"
    );
}
