//! Archive, unarchive and delete: by ids and up to a seq, the inbox view and the replay,
//! counters exact (also under concurrent publishes), isolation between users, a service
//! retracting its message, the `changed` event on every session (SSE, WebSocket, long-poll,
//! gRPC), and the reconnect race with deletes mixed in.

use crate::helpers::{
    problem_fields, sample, seqs, service_token, spawn_app, user_token, Backend, TestApp,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tidings_test_support::live::{
    long_poll, Collector, CollectorOptions, PollAnswer, SseClient, SseEvent, Transport, WsClient,
    WsFrame, WAIT,
};

async fn publish_n(app: &TestApp, user: &str, n: usize) -> Vec<Value> {
    let mut receipts = Vec::new();
    for _ in 0..n {
        let body = app.publish(&sample(&[user])).await;
        receipts.push(body["notifications"][0].clone());
    }
    receipts
}

/// POSTs `body` to `/v1/notifications/<action>` as `user`.
async fn change(app: &TestApp, user: &str, action: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url(&format!("/v1/notifications/{action}")))
        .bearer_auth(user_token(user))
        .json(body)
        .send()
        .await
        .expect("change request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn delete(app: &TestApp, token: &str, id: &Value) -> (u16, Value) {
    let id = id.as_str().expect("an id");
    let resp = app
        .client
        .delete(app.url(&format!("/v1/notifications/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("delete request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn ids(receipts: &[Value], seqs: &[usize]) -> Value {
    json!(seqs
        .iter()
        .map(|s| &receipts[s - 1]["id"])
        .collect::<Vec<_>>())
}

/// The notification with `seq` in a listing.
fn find(page: &Value, seq: i64) -> &Value {
    page["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .find(|n| n["seq"] == seq)
        .unwrap_or_else(|| panic!("seq {seq} not in {page}"))
}

async fn archive_unarchive_and_delete_by_ids_and_up_to(b: Backend) {
    let app = spawn_app(b).await;
    let r = publish_n(&app, "alice", 6).await;

    // Archive by ids: read and out of the inbox view, still in the replay.
    let (status, counts) =
        change(&app, "alice", "archive", &json!({"ids": ids(&r, &[1, 2])})).await;
    assert_eq!((status, counts), (200, json!({"unread": 4, "seq": 6})));
    assert_eq!(seqs(&app.list("alice", "").await), [6, 5, 4, 3]);
    assert_eq!(seqs(&app.list("alice", "?archived=true").await), [2, 1]);
    assert_eq!(
        seqs(&app.list("alice", "?archived=false").await),
        [6, 5, 4, 3]
    );
    let replay = app.list("alice", "?after=0").await;
    assert_eq!(seqs(&replay), [1, 2, 3, 4, 5, 6]);
    for s in [1, 2] {
        assert!(find(&replay, s)["archived_at"].is_string(), "{replay}");
        assert!(find(&replay, s)["read_at"].is_string(), "{replay}");
    }
    assert!(find(&replay, 3)["archived_at"].is_null());
    // Archiving again changes nothing, and counts nothing twice.
    let (_, counts) = change(&app, "alice", "archive", &json!({"ids": ids(&r, &[1])})).await;
    assert_eq!(counts, json!({"unread": 4, "seq": 6}));

    // Archive up to a seq: only the rows still unread come off the count.
    app.mark_read("alice", &json!({"ids": ids(&r, &[3])})).await;
    let (_, counts) = change(&app, "alice", "archive", &json!({"up_to": 4})).await;
    assert_eq!(counts, json!({"unread": 2, "seq": 6}));
    assert_eq!(seqs(&app.list("alice", "").await), [6, 5]);
    assert_eq!(
        seqs(&app.list("alice", "?archived=true").await),
        [4, 3, 2, 1]
    );
    assert_eq!(
        seqs(&app.list("alice", "?archived=true&before=3").await),
        [2, 1]
    );

    // Unarchive: back in the view, still read.
    let (_, counts) = change(&app, "alice", "unarchive", &json!({"ids": ids(&r, &[3])})).await;
    assert_eq!(counts, json!({"unread": 2, "seq": 6}));
    assert_eq!(seqs(&app.list("alice", "").await), [6, 5, 3]);
    assert!(find(&app.list("alice", "?after=2").await, 3)["archived_at"].is_null());
    let (_, counts) = change(&app, "alice", "unarchive", &json!({"up_to": 1})).await;
    assert_eq!(counts, json!({"unread": 2, "seq": 6}));
    assert_eq!(seqs(&app.list("alice", "").await), [6, 5, 3, 1]);

    // Delete by ids: an unread one takes one off the count.
    let (_, counts) = change(&app, "alice", "delete", &json!({"ids": ids(&r, &[5])})).await;
    assert_eq!(counts, json!({"unread": 1, "seq": 6}));
    assert_eq!(seqs(&app.list("alice", "?after=0").await), [1, 2, 3, 4, 6]);
    assert_eq!(seqs(&app.list("alice", "").await), [6, 3, 1]);
    // Delete up to a seq (all read): the count stays.
    let (_, counts) = change(&app, "alice", "delete", &json!({"up_to": 3})).await;
    assert_eq!(counts, json!({"unread": 1, "seq": 6}));
    assert_eq!(seqs(&app.list("alice", "?after=0").await), [4, 6]);
    assert_eq!(seqs(&app.list("alice", "?archived=true").await), [4]);

    // A deleted seq is never reused.
    let seven = publish_n(&app, "alice", 1).await;
    assert_eq!(seven[0]["seq"], 7);
    // The single delete, with a user token; again: nothing more, same answer.
    let (status, counts) = delete(&app, &user_token("alice"), &seven[0]["id"]).await;
    assert_eq!((status, counts), (200, json!({"unread": 1, "seq": 7})));
    let (status, counts) = delete(&app, &user_token("alice"), &seven[0]["id"]).await;
    assert_eq!((status, counts), (200, json!({"unread": 1, "seq": 7})));
    let page = app.list("alice", "?after=0").await;
    assert_eq!(seqs(&page), [4, 6]);
    assert_eq!(
        (page["unread"].clone(), page["seq"].clone()),
        (json!(1), json!(7))
    );
    // A page after a cursor covers the deleted seqs up to `seq`: nothing to ask for again.
    let page = app.list("alice", "?after=6").await;
    assert_eq!(seqs(&page), Vec::<i64>::new());
    assert_eq!(page["seq"], 7);
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 7}));
}

async fn bad_change_requests(b: Backend) {
    let app = spawn_app(b).await;
    for action in ["archive", "unarchive", "delete"] {
        for (body, field) in [
            (json!({}), "ids"),
            (json!({"ids": []}), "ids"),
            (json!({"ids": ["nope"]}), "ids[0]"),
            (json!({"up_to": -1}), "up_to"),
            (json!({"ids": [], "up_to": 1}), "ids"),
            (json!({"up_to": 1, "x": 1}), "x"),
        ] {
            let (status, problem) = change(&app, "alice", action, &body).await;
            assert_eq!(status, 422, "{action} {body}: {problem}");
            assert_eq!(
                problem_fields(&problem),
                [field],
                "{action} {body}: {problem}"
            );
        }
        // A service token is not a user's.
        let resp = app
            .client
            .post(app.url(&format!("/v1/notifications/{action}")))
            .bearer_auth(service_token("billing"))
            .json(&json!({"up_to": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{action}");
        let resp = app
            .client
            .get(app.url(&format!("/v1/notifications/{action}")))
            .bearer_auth(user_token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{action}");
    }
    let (status, problem) = delete(&app, &user_token("alice"), &json!("not-a-uuid")).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem_fields(&problem), ["id"]);
    let resp = app
        .client
        .delete(app.url("/v1/notifications/00000000-0000-0000-0000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, problem) = app
        .get(
            &user_token("alice"),
            "/v1/notifications?after=0&archived=true",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(problem_fields(&problem), ["archived"]);
    let (status, problem) = app
        .get(&user_token("alice"), "/v1/notifications?archived=maybe")
        .await;
    assert_eq!(status, 400);
    assert_eq!(problem_fields(&problem), ["archived"]);
}

async fn another_users_ids_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let a = publish_n(&app, "alice", 3).await;
    publish_n(&app, "bob", 1).await;
    let alice_ids = ids(&a, &[1, 2, 3]);
    for action in ["archive", "delete", "unarchive"] {
        let (status, counts) = change(&app, "bob", action, &json!({"ids": alice_ids})).await;
        assert_eq!(
            (status, counts),
            (200, json!({"unread": 1, "seq": 1})),
            "{action}"
        );
    }
    for id in a.iter().map(|r| &r["id"]) {
        assert_eq!(delete(&app, &user_token("bob"), id).await.0, 200);
    }
    // Bob's `up_to` reaches only his own.
    let (_, counts) = change(&app, "bob", "archive", &json!({"up_to": 3})).await;
    assert_eq!(counts, json!({"unread": 0, "seq": 1}));
    let (_, counts) = change(&app, "bob", "delete", &json!({"up_to": 3})).await;
    assert_eq!(counts, json!({"unread": 0, "seq": 1}));
    let page = app.list("alice", "?after=0").await;
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert_eq!(page["unread"], 3);
    assert!(page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["archived_at"].is_null() && n["read_at"].is_null()));
    assert_eq!(seqs(&app.list("alice", "").await), [3, 2, 1]);
}

/// Publishes race archives, unarchives and deletes of the same user's inbox; at the end the
/// counters agree with the rows.
async fn counters_stay_exact_under_concurrent_publishes(b: Backend) {
    let app = spawn_app(b).await;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 40;
    let total = (PUBLISHERS * EACH) as i64;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/notifications"));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..EACH {
                    let resp = client
                        .post(&url)
                        .bearer_auth(service_token("billing"))
                        .json(&sample(&["alice", "bob"]))
                        .send()
                        .await
                        .expect("publish");
                    assert_eq!(resp.status(), 201);
                    let body: Value = resp.json().await.expect("receipt");
                    ids.push(body["notifications"][0]["id"].clone());
                }
                ids
            })
        })
        .collect();
    // Meanwhile: changes by seq on whatever has committed so far.
    let mut round = 0i64;
    loop {
        let latest = app.unread("alice").await["seq"].as_i64().unwrap();
        let action = ["archive", "delete", "unarchive", "archive"][(round % 4) as usize];
        let up_to = (latest - 3).max(0) / 2 + round % 5;
        let (status, _) = change(&app, "alice", action, &json!({"up_to": up_to})).await;
        assert_eq!(status, 200, "{action}");
        round += 1;
        if latest >= total {
            break;
        }
    }
    let mut published = Vec::new();
    for p in publishers {
        published.extend(p.await.expect("publisher"));
    }
    // And by ids, a few of each.
    let (_, _) = change(&app, "alice", "delete", &json!({"ids": published[..10]})).await;
    let (_, _) = change(&app, "alice", "archive", &json!({"ids": published[10..30]})).await;

    let mut rows = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .list("alice", &format!("?after={after}&limit=200"))
            .await;
        let batch = page["notifications"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        after = batch.last().unwrap()["seq"].as_i64().unwrap();
        rows.extend(batch);
    }
    let unread_rows = rows.iter().filter(|n| n["read_at"].is_null()).count() as i64;
    let counts = app.unread("alice").await;
    assert_eq!(counts["seq"], total, "{round} rounds");
    assert_eq!(counts["unread"], unread_rows, "{round} rounds");
    assert!(rows
        .iter()
        .all(|n| n["archived_at"].is_null() || !n["read_at"].is_null()));
    // Bob was never touched.
    assert_eq!(
        app.unread("bob").await,
        json!({"unread": total, "seq": total})
    );
    eprintln!(
        "{round} rounds of changes; {} of {total} rows left, {unread_rows} unread",
        rows.len()
    );
}

async fn a_service_retracts_its_message_for_every_recipient(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, "bob", 1).await;
    let sent = app.publish(&sample(&["alice", "bob", "carol"])).await;
    let receipts = sent["notifications"].as_array().unwrap().clone();
    let (alice_id, bob_id) = (receipts[0]["id"].clone(), receipts[1]["id"].clone());
    app.mark_read("alice", &json!({"ids": [alice_id]})).await;
    // Bob watches live.
    let mut sse = SseClient::open(&app.address, &user_token("bob"), Some(2)).await;
    assert_eq!(sse.wait_unread(2).await, (2, Some(2)));

    // Another service may not, and learns nothing.
    let (status, problem) = delete(&app, &service_token("shipping"), &bob_id).await;
    assert_eq!(status, 404, "{problem}");
    // The publisher may, by any recipient's id.
    let (status, _) = delete(&app, &service_token("billing"), &bob_id).await;
    assert_eq!(status, 204);
    let (status, _) = delete(&app, &service_token("billing"), &alice_id).await;
    assert_eq!(status, 404, "already gone");

    assert_eq!(app.unread("alice").await, json!({"unread": 0, "seq": 1}));
    assert_eq!(app.unread("bob").await, json!({"unread": 1, "seq": 2}));
    assert_eq!(app.unread("carol").await, json!({"unread": 0, "seq": 1}));
    for user in ["alice", "carol"] {
        assert_eq!(seqs(&app.list(user, "?after=0").await), Vec::<i64>::new());
    }
    assert_eq!(seqs(&app.list("bob", "?after=0").await), [1]);
    let v = next_changed_sse(&mut sse).await;
    assert_eq!(v["change"], "deleted");
    assert_eq!(v["ids"], json!([bob_id]));
    assert_eq!(v["seqs"], json!([2]));
    assert_eq!(
        (v["unread"].clone(), v["seq"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(sse.wait_unread(1).await, (2, Some(2)));

    // A random id, or an id of this service's that does not exist: 404 too.
    let (status, _) = delete(
        &app,
        &service_token("billing"),
        &json!(uuid::Uuid::now_v7().to_string()),
    )
    .await;
    assert_eq!(status, 404);
}

async fn next_changed_sse(sse: &mut SseClient) -> Value {
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

async fn next_changed_ws(ws: &mut WsClient) -> Value {
    loop {
        match ws.next().await {
            WsFrame::Other(v) if v["type"] == "changed" => return v,
            WsFrame::Unread { .. } => continue,
            other => panic!("expected a changed frame, got {other:?}"),
        }
    }
}

async fn every_session_hears_of_changes(b: Backend) {
    let app = spawn_app(b).await;
    let r = publish_n(&app, "alice", 4).await;
    let token = user_token("alice");
    let mut sse = SseClient::open(&app.address, &token, Some(4)).await;
    assert_eq!(sse.wait_unread(4).await, (4, Some(4)));
    let mut ws = WsClient::open(&app.address, &token, Some(4)).await;
    assert_eq!(ws.wait_unread(4).await, 4);
    // Bob's session hears nothing of Alice's changes.
    let mut bob = SseClient::open(&app.address, &user_token("bob"), Some(0)).await;
    assert_eq!(bob.wait_unread(0).await, (0, Some(0)));

    change(&app, "alice", "archive", &json!({"ids": ids(&r, &[2, 1])})).await;
    for v in [
        next_changed_sse(&mut sse).await,
        next_changed_ws(&mut ws).await,
    ] {
        assert_eq!(v["change"], "archived", "{v}");
        assert_eq!(v["ids"], ids(&r, &[1, 2]), "in seq order: {v}");
        assert_eq!(v["seqs"], json!([1, 2]));
        assert_eq!(v["unread"], 2);
        assert_eq!(v["seq"], 4);
    }
    // Then the count, with the stream's cursor as its id.
    assert_eq!(sse.wait_unread(2).await, (4, Some(4)));
    assert_eq!(ws.wait_unread(2).await, 4);

    change(&app, "alice", "unarchive", &json!({"up_to": 4})).await;
    for v in [
        next_changed_sse(&mut sse).await,
        next_changed_ws(&mut ws).await,
    ] {
        assert_eq!(v["change"], "unarchived", "{v}");
        assert_eq!(v["seqs"], json!([1, 2]));
    }

    // A delete sent on the socket reaches both sessions.
    ws.send_json(&json!({"type": "delete", "ids": ids(&r, &[3])}))
        .await;
    for v in [
        next_changed_sse(&mut sse).await,
        next_changed_ws(&mut ws).await,
    ] {
        assert_eq!(v["change"], "deleted", "{v}");
        assert_eq!(v["ids"], ids(&r, &[3]));
        assert_eq!(v["seqs"], json!([3]));
        assert_eq!(v["unread"], 1);
    }
    // Nothing that changed nothing is announced: the next event is the next publish.
    change(&app, "alice", "delete", &json!({"ids": ids(&r, &[3])})).await;
    app.publish(&sample(&["alice"])).await;
    loop {
        match sse.next().await {
            SseEvent::Notification { seq, .. } => {
                assert_eq!(seq, 5);
                break;
            }
            SseEvent::Unread { .. } => {}
            other => panic!("expected seq 5, got {other:?}"),
        }
    }

    // A long-poll waiting for news is answered by a change, with `changes`.
    let waiting = {
        let (client, base, token) = (app.client.clone(), app.address.clone(), token.clone());
        tokio::spawn(
            async move { long_poll(&client, &base, &token, Some(5), None, Some(30)).await },
        )
    };
    // The poll's connection is registered once the hub counts it; then delete.
    tokio_wait_for_poll(&app).await;
    change(&app, "alice", "delete", &json!({"up_to": 1})).await;
    match waiting.await.unwrap().unwrap() {
        PollAnswer::Batch {
            notifications,
            changes,
            unread,
            seq,
        } => {
            assert!(notifications.is_empty());
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert_eq!(changes[0]["change"], "deleted");
            assert_eq!(changes[0]["seqs"], json!([1]));
            assert_eq!((unread, seq), (2, 5));
        }
        other => panic!("expected a 200, got {other:?}"),
    }

    // Bob heard none of it (at most his own count again, when the bus renews his subscription).
    while let Some(ev) = bob.next_within(Duration::from_millis(300)).await {
        assert!(
            matches!(
                ev,
                SseEvent::Unread {
                    unread: 0,
                    seq: 0,
                    ..
                }
            ),
            "bob heard {ev:?}"
        );
    }
}

/// Waits until a long-poll connection is open on the replica.
async fn tokio_wait_for_poll(app: &TestApp) {
    use tidings_test_support::live::{eventually, metric, scrape};
    eventually(WAIT, "a long-poll connection open", || async {
        let text = scrape(&app.client, &app.address).await;
        metric(&text, "tidings_connections", &[("transport", "longpoll")]).filter(|v| *v >= 1.0)
    })
    .await;
}

async fn a_replay_passes_over_deleted_seqs(b: Backend) {
    let app = spawn_app(b).await;
    let r = publish_n(&app, "alice", 6).await;
    change(
        &app,
        "alice",
        "delete",
        &json!({"ids": ids(&r, &[2, 5, 6])}),
    )
    .await;
    let token = user_token("alice");
    // SSE: the replay skips the holes, and the count's id is past the deleted end, so a
    // client resuming from it does not ask for 5 and 6 again.
    let mut sse = SseClient::open(&app.address, &token, Some(0)).await;
    assert_eq!(sse.next_seqs(3).await, [1, 3, 4]);
    assert_eq!(sse.wait_unread(3).await, (6, Some(6)));
    // Live again at once after the hole.
    app.publish(&sample(&["alice"])).await;
    assert_eq!(sse.next_seqs(1).await, [7]);
    let mut ws = WsClient::open(&app.address, &token, Some(1)).await;
    assert_eq!(ws.next_seqs(3).await, [3, 4, 7]);
    // Long-poll: after a deleted tail, nothing new is "nothing new", not a loop.
    let answer = long_poll(&app.client, &app.address, &token, Some(4), None, Some(1))
        .await
        .unwrap();
    assert_eq!(answer.seqs(), [7]);
    change(&app, "alice", "delete", &json!({"up_to": 7})).await;
    let answer = long_poll(&app.client, &app.address, &token, Some(4), None, Some(1))
        .await
        .unwrap();
    assert!(matches!(answer, PollAnswer::NoContent), "{answer:?}");
}

/// gRPC: Archive, Unarchive and Delete, and the `changed` event on Subscribe.
async fn grpc_changes_and_their_event(b: Backend) {
    use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
    let app = spawn_app(b).await;
    let r = publish_n(&app, "alice", 3).await;
    let mut client = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect");
    fn authed<T>(m: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(m);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", user_token("alice")).parse().unwrap(),
        );
        req
    }
    let mut stream = client
        .subscribe(authed(proto::SubscribeRequest { after: Some(3) }))
        .await
        .expect("subscribe")
        .into_inner();
    let by_ids = |seqs: &[usize]| proto::MarkReadRequest {
        ids: seqs
            .iter()
            .map(|s| r[s - 1]["id"].as_str().unwrap().to_owned())
            .collect(),
        up_to: None,
    };
    let counts = client
        .archive(authed(by_ids(&[1])))
        .await
        .expect("archive")
        .into_inner();
    assert_eq!((counts.unread, counts.seq), (2, 3));
    let counts = client
        .delete(authed(proto::MarkReadRequest {
            ids: Vec::new(),
            up_to: Some(2),
        }))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!((counts.unread, counts.seq), (1, 3));
    client
        .unarchive(authed(by_ids(&[3])))
        .await
        .expect("unarchive changes nothing but answers");
    let page = client
        .list(authed(proto::ListRequest {
            after: Some(0),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        page.notifications.iter().map(|n| n.seq).collect::<Vec<_>>(),
        [3]
    );

    let mut changes = Vec::new();
    while changes.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("no error")
            .expect("open");
        if let Some(event::Event::Changed(c)) = ev.event {
            changes.push(c);
        }
    }
    assert_eq!(changes[0].change, proto::ChangeKind::Archived as i32);
    assert_eq!(changes[0].seqs, [1]);
    assert_eq!(changes[0].ids, [r[0]["id"].as_str().unwrap()]);
    assert_eq!(changes[1].change, proto::ChangeKind::Deleted as i32);
    assert_eq!(changes[1].seqs, [1, 2]);
    let bad = client
        .list(authed(proto::ListRequest {
            after: Some(0),
            archived: true,
            ..Default::default()
        }))
        .await
        .expect_err("archived with after");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The reconnect race, with deletes mixed in
// ---------------------------------------------------------------------------------------------

const RACE_CLIENTS: usize = 12;
const RACE_NOTIFICATIONS: usize = 300;

/// Clients of one user reconnect with their cursor over and over while notifications are
/// published and some (already published, so some clients hold them and some do not) are
/// deleted: each ends with every surviving seq exactly once, in order, and any other seq it
/// holds is one that was deleted after it was delivered. None stalls on a deleted seq.
async fn race_with_deletes(b: Backend, transport: Transport) {
    let app = spawn_app(b).await;
    let token = user_token("racer");
    let collectors: Vec<Collector> = (0..RACE_CLIENTS)
        .map(|i| {
            let mut opts = CollectorOptions::new(
                format!("{transport:?} client {i}"),
                transport,
                vec![app.address.clone()],
                tidings_test_support::live::fixed_token(token.clone()),
            );
            opts.allow_deleted_gaps = true;
            Collector::spawn(opts)
        })
        .collect();
    for c in &collectors {
        c.wait_connects(1, WAIT).await;
    }
    let mut deleted = BTreeSet::new();
    let mut receipts: Vec<Value> = Vec::new();
    for i in 0..RACE_NOTIFICATIONS {
        let body = app.publish(&sample(&["racer"])).await;
        receipts.push(body["notifications"][0].clone());
        if i % 3 == 0 {
            collectors[(i / 3 * 7) % collectors.len()].reconnect();
        }
        // Every 5th publish deletes one of the last few (never the last one published, so
        // the clients have a seq to wait for).
        if i % 5 == 4 {
            let victim = &receipts[i - 1 - (i % 3)];
            let (status, _) =
                change(&app, "racer", "delete", &json!({"ids": [victim["id"]]})).await;
            assert_eq!(status, 200);
            deleted.insert(victim["seq"].as_i64().unwrap());
        }
        // And a run at the very end of a replay now and then: the two newest but one.
        if i % 50 == 25 {
            let run = [&receipts[i - 2]["id"], &receipts[i - 1]["id"]];
            change(&app, "racer", "delete", &json!({"ids": run})).await;
            deleted.insert(receipts[i - 2]["seq"].as_i64().unwrap());
            deleted.insert(receipts[i - 1]["seq"].as_i64().unwrap());
        }
    }
    let last = RACE_NOTIFICATIONS as i64;
    assert!(!deleted.contains(&last));
    let surviving: Vec<i64> = (1..=last).filter(|s| !deleted.contains(s)).collect();
    let deleted: Vec<i64> = deleted.into_iter().collect();
    let listed = {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = app
                .list("racer", &format!("?after={after}&limit=200"))
                .await;
            let s = seqs(&page);
            let Some(&l) = s.last() else { break };
            all.extend(s);
            after = l;
        }
        all
    };
    assert_eq!(listed, surviving);
    let mut told = 0;
    for c in &collectors {
        c.wait_for_seq(last, Duration::from_secs(120)).await;
    }
    for c in collectors {
        let report = c.stop().await;
        report.assert_surviving(&surviving, &deleted);
        told += report.deleted.len();
    }
    eprintln!(
        "{transport:?}: {} surviving, {} deleted; the clients were told of {told} deletions live",
        surviving.len(),
        deleted.len()
    );
}

async fn race_with_deletes_sse(b: Backend) {
    race_with_deletes(b, Transport::Sse).await
}

async fn race_with_deletes_websocket(b: Backend) {
    race_with_deletes(b, Transport::WebSocket).await
}

async fn race_with_deletes_long_poll(b: Backend) {
    race_with_deletes(b, Transport::LongPoll).await
}

crate::both_backends!(
    archive_unarchive_and_delete_by_ids_and_up_to,
    bad_change_requests,
    another_users_ids_change_nothing,
    counters_stay_exact_under_concurrent_publishes,
    a_service_retracts_its_message_for_every_recipient,
    every_session_hears_of_changes,
    a_replay_passes_over_deleted_seqs,
    grpc_changes_and_their_event,
    race_with_deletes_sse,
    race_with_deletes_websocket,
    race_with_deletes_long_poll,
);
