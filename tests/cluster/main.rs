//! The cluster suite: several real `tidings` processes sharing one fresh Postgres database and
//! one Redis, with clients on every transport. Each test starts its own private `redis-server`
//! on a free port (so it can stop and restart it without disturbing other tests) and its own
//! replicas, and breaks things while notifications are published: `kill -9` of a replica,
//! SIGTERM, a Redis restart. The clients must end with every seq exactly once, in order.
//! The MQTT test (mqtt.rs) adds a private Mosquitto that every replica's bridge drains the
//! outbox into, with an independent subscriber: there, every seq at least once, in order.

mod cluster;
mod mqtt;
mod preferences;
mod redis_cluster;
mod scheduled;
mod webpush;

use cluster::{service_token, user_token, Cluster, GRACE_SECONDS};
use serde_json::json;
use std::time::Duration;
use tidings_test_support::live::{
    self, eventually, finish_and_assert, fixed_token, get_json, long_poll, metric, publish,
    reconnect_while_publishing, sample, scrape, Collector, CollectorOptions, PollAnswer,
    PublishRun, SseClient, SseEvent, Transport, WsClient, WsFrame, WAIT,
};

/// Collectors for `user`, one per `(transport, replica)`, each held to its replica.
fn collectors(cluster: &Cluster, user: &str, specs: &[(Transport, usize)]) -> Vec<Collector> {
    specs
        .iter()
        .map(|&(transport, replica)| {
            Collector::spawn(CollectorOptions::new(
                format!("{user} {transport:?} on replica {replica}"),
                transport,
                vec![cluster.url(replica)],
                fixed_token(user_token(user)),
            ))
        })
        .collect()
}

async fn all_connected(collectors: &[Collector]) {
    for c in collectors {
        c.wait_connects(1, WAIT).await;
    }
}

const EVERY_TRANSPORT_ON_EVERY_REPLICA: [(Transport, usize); 9] = [
    (Transport::Sse, 0),
    (Transport::Sse, 1),
    (Transport::Sse, 2),
    (Transport::WebSocket, 0),
    (Transport::WebSocket, 1),
    (Transport::WebSocket, 2),
    (Transport::LongPoll, 0),
    (Transport::LongPoll, 1),
    (Transport::LongPoll, 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_replica_reaches_clients_on_the_others() {
    let c = Cluster::start(3).await;
    let alice = user_token("alice");
    let mut sse = SseClient::open(&c.url(1), &alice, Some(0)).await;
    assert_eq!(sse.wait_unread(0).await, (0, Some(0)));
    let mut ws = WsClient::open(&c.url(2), &alice, Some(0)).await;
    assert_eq!(ws.wait_unread(0).await, 0);
    let waiting = {
        let (client, base, token) = (c.client.clone(), c.url(1), alice.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(0), None, Some(30)).await },
        )
    };

    let receipt = publish(
        &c.client,
        &c.url(0),
        &service_token("billing"),
        &sample(&["alice"]),
        None,
    )
    .await
    .expect("publish");
    let id = receipt["notifications"][0]["id"].clone();
    let (seq, n) = sse.next_notification().await;
    assert_eq!((seq, &n["id"]), (1, &id));
    let (seq, n) = ws.next_notification().await;
    assert_eq!((seq, &n["id"]), (1, &id));
    assert_eq!(waiting.await.unwrap().unwrap().seqs(), [1]);
    assert_eq!(sse.wait_unread(1).await, (1, Some(1)));
    assert_eq!(ws.wait_unread(1).await, 1);

    // A run through every replica to clients on every replica.
    let clients = collectors(&c, "bob", &EVERY_TRANSPORT_ON_EVERY_REPLICA);
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        vec!["bob".into()],
        200,
        3,
        200,
    );
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    finish_and_assert(clients, 200, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_clients_replica_loses_nothing() {
    const TOTAL: usize = 300;
    let mut c = Cluster::start(3).await;
    let clients = collectors(
        &c,
        "alice",
        &[
            (Transport::Sse, 1),
            (Transport::WebSocket, 1),
            (Transport::LongPoll, 1),
        ],
    );
    all_connected(&clients).await;
    let run = PublishRun::start(
        vec![c.url(0), c.url(2)],
        service_token("billing"),
        vec!["alice".into()],
        TOTAL,
        3,
        100,
    );
    run.wait_done(100, Duration::from_secs(60)).await;
    for client in &clients {
        client.wait_for_seq(100, Duration::from_secs(30)).await;
    }

    c.kill9(1);
    // The load balancer sends them elsewhere; they reconnect with their cursors.
    for client in &clients {
        client.set_targets(vec![c.url(0), c.url(2)]);
    }
    run.allow(TOTAL);
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    for client in &clients {
        client
            .wait_for_seq(TOTAL as i64, Duration::from_secs(60))
            .await;
        let on = client.current_target();
        assert!(
            on.is_some() && on != Some(c.url(1)),
            "{} is on {on:?}",
            client.name
        );
    }
    let reports = finish_and_assert(clients, TOTAL as i64, Duration::from_secs(60)).await;
    for r in &reports {
        assert!(r.connects >= 2, "{} reconnected: {r:?}", r.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing() {
    const TOTAL: usize = 300;
    let mut c = Cluster::start(3).await;
    let clients = collectors(&c, "alice", &EVERY_TRANSPORT_ON_EVERY_REPLICA);
    all_connected(&clients).await;
    let run = PublishRun::start(
        c.urls(),
        service_token("billing"),
        vec!["alice".into()],
        TOTAL,
        3,
        100,
    );
    run.wait_done(100, Duration::from_secs(60)).await;

    // Redis goes away. The database is the source of truth: publishing keeps working.
    c.redis_stop();
    run.allow(200);
    // Clients that reconnect during the outage are caught up from the database.
    reconnect_while_publishing(&run, 200, 10, &clients, Duration::from_secs(90)).await;
    run.wait_done(200, Duration::from_secs(90)).await;
    for i in 0..3 {
        let body = eventually(
            Duration::from_secs(20),
            &format!("replica {i} reports its bus down"),
            || {
                let (client, base) = (c.client.clone(), c.url(i));
                async move {
                    let (status, body) = get_json(&client, &base, "/readyz", None).await.ok()?;
                    (body["bus"] == "down").then_some((status, body))
                }
            },
        )
        .await;
        assert_eq!(
            body.0, 200,
            "Redis alone does not make a replica unready: {}",
            body.1
        );
    }

    // Redis comes back on the same port; every replica resubscribes and catches up.
    c.redis_start().await;
    for i in 0..3 {
        eventually(
            Duration::from_secs(30),
            &format!("replica {i} reports its bus up"),
            || {
                let (client, base) = (c.client.clone(), c.url(i));
                async move {
                    let (status, body) = get_json(&client, &base, "/readyz", None).await.ok()?;
                    (status == 200 && body["bus"] == "up").then_some(())
                }
            },
        )
        .await;
    }
    run.allow(TOTAL);
    reconnect_while_publishing(&run, TOTAL, 10, &clients, Duration::from_secs(90)).await;
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(
        failures.is_empty(),
        "publishing must keep working while Redis is down: {failures:?}"
    );
    finish_and_assert(clients, TOTAL as i64, Duration::from_secs(90)).await;
    for i in 0..3 {
        let text = scrape(&c.client, &c.url(i)).await;
        let reconnects = metric(&text, "tidings_bus_reconnects_total", &[]).unwrap_or(0.0);
        assert!(
            reconnects >= 1.0,
            "replica {i} counted its bus reconnect:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_one_replica_reaches_sessions_on_the_others() {
    let c = Cluster::start(3).await;
    let svc = service_token("billing");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let receipt = publish(&c.client, &c.url(0), &svc, &sample(&["alice"]), None)
            .await
            .expect("publish");
        ids.push(receipt["notifications"][0]["id"].clone());
    }
    let alice = user_token("alice");
    let mut sse = SseClient::open(&c.url(1), &alice, Some(3)).await;
    assert_eq!(sse.wait_unread(3).await, (3, Some(3)));
    let mut ws = WsClient::open(&c.url(2), &alice, Some(3)).await;
    assert_eq!(ws.wait_unread(3).await, 3);

    // REST on replica 0.
    let resp = c
        .client
        .post(format!("{}/v1/notifications/read", c.url(0)))
        .bearer_auth(&alice)
        .json(&json!({"up_to": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sse.wait_unread(2).await, (3, Some(3)));
    assert_eq!(ws.wait_unread(2).await, 3);

    // A read frame on replica 2's socket, heard by replica 1's stream and replica 0's poll.
    ws.send_read_ids(&[ids[1].clone()]).await;
    assert_eq!(sse.wait_unread(1).await, (3, Some(3)));
    let waiting = {
        let (client, base, token) = (c.client.clone(), c.url(0), alice.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(3), Some(1), Some(30)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send_read_up_to(3).await;
    assert_eq!(sse.wait_unread(0).await, (3, Some(3)));
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.counts(), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_isolated_across_replicas() {
    let c = Cluster::start(3).await;
    let svc = service_token("billing");
    let bob = user_token("bob");
    let mut sse = SseClient::open(&c.url(1), &bob, Some(0)).await;
    assert_eq!(sse.wait_unread(0).await, (0, Some(0)));
    let mut ws = WsClient::open(&c.url(2), &bob, Some(0)).await;
    assert_eq!(ws.wait_unread(0).await, 0);

    for i in 0..3 {
        publish(
            &c.client,
            &c.url(i),
            &svc,
            &json!({"recipients": ["alice"], "type": "for.alice", "title": "alice only"}),
            None,
        )
        .await
        .expect("publish");
    }
    let resp = c
        .client
        .post(format!("{}/v1/notifications/read", c.url(2)))
        .bearer_auth(user_token("alice"))
        .json(&json!({"up_to": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    publish(
        &c.client,
        &c.url(0),
        &svc,
        &json!({"recipients": ["bob"], "type": "for.bob", "title": "bob only"}),
        None,
    )
    .await
    .expect("publish");

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
    match long_poll(&c.client, &c.url(0), &bob, Some(0), None, Some(5))
        .await
        .unwrap()
    {
        answer @ PollAnswer::Batch { .. } => {
            assert_eq!(answer.seqs(), [1]);
            assert_eq!(answer.counts(), (1, 1));
        }
        other => panic!("bob's poll: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_clients_replica_loses_nothing() {
    const TOTAL: usize = 300;
    let mut c = Cluster::start(3).await;
    let alice = user_token("alice");
    let mut sse = SseClient::open(&c.url(1), &alice, Some(0)).await;
    assert_eq!(sse.wait_unread(0).await, (0, Some(0)));
    let mut ws = WsClient::open(&c.url(1), &alice, Some(0)).await;
    assert_eq!(ws.wait_unread(0).await, 0);
    let clients = collectors(
        &c,
        "alice",
        &[
            (Transport::Sse, 1),
            (Transport::WebSocket, 1),
            (Transport::LongPoll, 1),
        ],
    );
    all_connected(&clients).await;
    let run = PublishRun::start(
        vec![c.url(0), c.url(2)],
        service_token("billing"),
        vec!["alice".into()],
        TOTAL,
        3,
        100,
    );
    run.wait_done(100, Duration::from_secs(60)).await;
    for client in &clients {
        client.wait_for_seq(100, Duration::from_secs(30)).await;
    }

    // Watch the stopping replica's readiness until it stops answering.
    let observer = {
        let base = c.url(1);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while tokio::time::Instant::now() < deadline {
                match get_json(&client, &base, "/readyz", None).await {
                    Ok((status, _)) => statuses.push(status),
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.sigterm(1);
    for client in &clients {
        client.set_targets(vec![c.url(0), c.url(2)]);
    }
    run.allow(TOTAL);

    // The restart signal: WebSocket close 1012, the SSE stream ends.
    let within = Duration::from_secs(GRACE_SECONDS + 10);
    let (frames, code) = ws.until_close(within).await;
    assert_eq!(
        code,
        Some(1012),
        "a stopping replica closes sockets with 1012"
    );
    let ws_seqs: Vec<i64> = frames
        .iter()
        .filter_map(|f| match f {
            WsFrame::Notification { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let (events, end) = sse.until_end(within).await;
    assert_eq!(end, SseEvent::End, "the SSE stream ends cleanly");
    let sse_seqs: Vec<i64> = events
        .iter()
        .filter_map(|e| match e {
            SseEvent::Notification { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let status = c.wait_exit(1, Duration::from_secs(GRACE_SECONDS + 7)).await;
    assert!(status.success(), "a SIGTERM is a clean exit: {status}");
    let statuses = observer.await.unwrap();
    match statuses.iter().position(|s| *s == 503) {
        Some(first) => assert!(
            statuses[first..].iter().all(|s| *s == 503),
            "once stopping, readiness stays 503: {statuses:?}"
        ),
        None => {
            eprintln!("note: no 503 from the stopping replica's /readyz was observed: {statuses:?}")
        }
    }

    // The clients that saw the signal reconnect elsewhere with their cursors.
    let failures = run.finish(Duration::from_secs(120)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");
    let total = TOTAL as i64;
    let mut sse = sse.reconnect(&c.url(0), None).await;
    let last = sse_seqs.last().copied().unwrap_or(0);
    let mut got = sse_seqs.clone();
    got.extend(sse.next_seqs((total - last) as usize).await);
    live::check_exactly_once_in_order(&got, total)
        .unwrap_or_else(|e| panic!("the SSE client: {e}"));
    let last = ws_seqs.last().copied().unwrap_or(0);
    let mut ws = WsClient::open(&c.url(2), &alice, Some(last)).await;
    let mut got = ws_seqs.clone();
    got.extend(ws.next_seqs((total - last) as usize).await);
    live::check_exactly_once_in_order(&got, total)
        .unwrap_or_else(|e| panic!("the WebSocket client: {e}"));
    finish_and_assert(clients, total, Duration::from_secs(60)).await;

    // The replica comes back and serves.
    c.restart(1).await;
    let mut back = SseClient::open(&c.url(1), &alice, Some(total)).await;
    assert_eq!(back.wait_unread(total).await, (total, Some(total)));
    publish(
        &c.client,
        &c.url(0),
        &service_token("billing"),
        &sample(&["alice"]),
        None,
    )
    .await
    .expect("publish");
    assert_eq!(back.next_seqs(1).await, [total + 1]);
}

/// The next `changed` event on an SSE stream, as JSON (counts in between are skipped).
async fn next_changed(sse: &mut SseClient) -> serde_json::Value {
    loop {
        match sse.next().await {
            SseEvent::Other { event, data, .. } if event == "changed" => {
                return serde_json::from_str(&data).expect("changed JSON")
            }
            SseEvent::Unread { .. } => continue,
            other => panic!("expected a changed event, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_and_delete_on_one_replica_reach_sessions_on_the_others() {
    let c = Cluster::start(3).await;
    let svc = service_token("billing");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let receipt = publish(&c.client, &c.url(0), &svc, &sample(&["alice", "bob"]), None)
            .await
            .expect("publish");
        ids.push(receipt["notifications"][0]["id"].clone());
    }
    let alice = user_token("alice");
    let mut sse = SseClient::open(&c.url(1), &alice, Some(4)).await;
    assert_eq!(sse.wait_unread(4).await, (4, Some(4)));
    let mut ws = WsClient::open(&c.url(2), &alice, Some(4)).await;
    assert_eq!(ws.wait_unread(4).await, 4);

    // Archive over REST on replica 0: replica 1's stream and replica 2's socket hear it.
    let resp = c
        .client
        .post(format!("{}/v1/notifications/archive", c.url(0)))
        .bearer_auth(&alice)
        .json(&json!({"ids": [ids[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = next_changed(&mut sse).await;
    assert_eq!(
        (v["change"].clone(), v["seqs"].clone(), v["unread"].clone()),
        (json!("archived"), json!([1]), json!(3))
    );
    let v = loop {
        match ws.next().await {
            WsFrame::Other(v) if v["type"] == "changed" => break v,
            WsFrame::Unread { .. } => {}
            other => panic!("expected a changed frame, got {other:?}"),
        }
    };
    assert_eq!(v["change"], "archived");

    // A delete sent on replica 2's socket, heard on replica 1.
    ws.send_json(&json!({"type": "delete", "ids": [ids[1]]}))
        .await;
    let v = next_changed(&mut sse).await;
    assert_eq!(
        (v["change"].clone(), v["ids"].clone(), v["unread"].clone()),
        (json!("deleted"), json!([ids[1]]), json!(2))
    );

    // The service retracts message 3 on replica 0: both users' sessions on other replicas hear it.
    let mut bob = SseClient::open(&c.url(2), &user_token("bob"), Some(4)).await;
    assert_eq!(bob.wait_unread(4).await, (4, Some(4)));
    let resp = c
        .client
        .delete(format!(
            "{}/v1/notifications/{}",
            c.url(0),
            ids[2].as_str().unwrap()
        ))
        .bearer_auth(&svc)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for s in [&mut sse, &mut bob] {
        let v = next_changed(s).await;
        assert_eq!(
            (v["change"].clone(), v["seqs"].clone()),
            (json!("deleted"), json!([3]))
        );
    }
    assert_eq!(bob.wait_unread(3).await, (4, Some(4)));
    assert_eq!(sse.wait_unread(1).await, (4, Some(4)));
    let (_, page) = get_json(
        &c.client,
        &c.url(1),
        "/v1/notifications?after=0",
        Some(&alice),
    )
    .await
    .unwrap();
    let seqs: Vec<i64> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 4]);
}
