//! The bus routed by user, on a real Redis Cluster (three primaries, three replicas, sharded
//! pub/sub) and on one Redis: a replica receives the events of the users it holds, and
//! nothing is lost or duplicated when a Redis primary fails over.

use crate::cluster::{service_token, Cluster};
use crate::{all_connected, collectors};
use std::time::Duration;
use tidings_test_support::live::{
    eventually, finish_and_assert, metric, scrape, PublishRun, Transport,
};

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

/// Waits until Redis counts `per_channel` subscribers on every one of `channels`; panics
/// naming those short of it.
async fn wait_held(c: &mut Cluster, channels: &[String], per_channel: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let counts = c.redis_cluster().shard_subscribers(channels);
        let short: Vec<String> = channels
            .iter()
            .zip(&counts)
            .filter(|(_, &n)| n != per_channel)
            .map(|(channel, n)| format!("{channel}: {n}"))
            .collect();
        if short.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis does not hold {per_channel} subscribers of every user's channel within \
             {within:?}; short: {short:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The loss behind the fail-over test's missing last events, made near certain and visible
/// on the Redis side. During a fail-over the cluster client opens a connection to the new
/// primary for each subscribe redirected there at once, keeps the last, and drops the
/// others with the subscriptions they carry, without a push: a replica holds channels it
/// believes subscribed that receive nothing. With ten users or so per shard, each on two
/// replicas, some are dropped on almost every run. Nothing is published until Redis counts
/// every subscription again, so no catch-up or gap read can hide a lost one; then one
/// notification per user through the replica that holds nobody must reach every client.
/// The killed primary is not the broadcast channel's: the replicas then subscribe their
/// users while the fail-over is under way, which is when connections are replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fail_over_redis_holds_every_users_channel_again() {
    const USERS_N: usize = 45;
    const TOTAL: usize = 3;
    let mut c = Cluster::start_on_redis_cluster(3).await;
    let users: Vec<String> = (0..USERS_N).map(|i| format!("user-{i:02}")).collect();
    let clients: Vec<_> = users
        .iter()
        .flat_map(|user| collectors(&c, user, &[(Transport::Sse, 1), (Transport::Sse, 2)]))
        .collect();
    all_connected(&clients).await;
    let channels: Vec<String> = users
        .iter()
        .map(|u| format!("{}:u:{u}", c.channel()))
        .collect();
    wait_held(&mut c, &channels, 2, Duration::from_secs(30)).await;

    let broadcast = c.channel().to_owned();
    let primary = c.redis_cluster().a_primary_not_serving(&broadcast);
    c.redis_cluster().kill(primary);
    c.redis_cluster().wait_healthy().await;
    for i in 1..3 {
        let url = c.url(i);
        let client = c.client.clone();
        eventually(
            Duration::from_secs(60),
            &format!("replica {i} resubscribed after the fail-over"),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let text = scrape(&client, &url).await;
                    let n = metric(&text, "tidings_bus_resubscribes_total", &[]).unwrap_or(0.0);
                    (n >= 1.0).then_some(())
                }
            },
        )
        .await;
    }
    // Replicas 1 and 2 hold every user: each channel has both of them again, on the new
    // primary for the killed one's slots.
    wait_held(&mut c, &channels, 2, Duration::from_secs(30)).await;

    let run = PublishRun::start(
        vec![c.url(0)],
        service_token("billing"),
        users.clone(),
        TOTAL,
        1,
        TOTAL,
    );
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(60)).await;
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
