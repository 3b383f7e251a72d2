//! Topics: service-managed audiences, fanned out into each subscriber's own feed.

use crate::helpers::{problem_fields, service_token, spawn_app, user_token, Backend, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;

async fn put(app: &TestApp, path: &str) -> u16 {
    let resp = app
        .client
        .put(app.url(path))
        .bearer_auth(service_token("billing"))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

async fn bulk(app: &TestApp, topic: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url(&format!("/v1/topics/{topic}/subscribers")))
        .bearer_auth(service_token("billing"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn topic_publish(topic: &str, title: &str) -> Value {
    json!({"topic": topic, "type": "release.notes", "title": title})
}

async fn subscribers_manage_and_receive(b: Backend) {
    let app = spawn_app(b).await;
    assert_eq!(
        put(&app, "/v1/topics/releases/subscribers/alice").await,
        204
    );
    assert_eq!(
        put(&app, "/v1/topics/releases/subscribers/alice").await,
        204,
        "idempotent"
    );
    let (status, result) = bulk(&app, "releases", &json!({"add": ["bob", "carol", "alice"]})).await;
    assert_eq!(status, 200);
    assert_eq!(result, json!({"added": 2, "removed": 0, "subscribers": 3}));
    let (status, info) = app
        .get(&service_token("billing"), "/v1/topics/releases")
        .await;
    assert_eq!(status, 200);
    assert_eq!(info, json!({"topic": "releases", "subscribers": 3}));

    let resp = app
        .publish_raw(
            &service_token("billing"),
            &topic_publish("releases", "v2 is out"),
            None,
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"topic": "releases", "recipients": 3, "muted": 0})
    );
    for user in ["alice", "bob", "carol"] {
        let page = app.list(user, "?after=0").await;
        assert_eq!(page["notifications"][0]["title"], "v2 is out", "{user}");
        assert_eq!(page["notifications"][0]["topic"], "releases");
        assert_eq!(page["unread"], 1);
    }
    assert_eq!(app.unread("dave").await["seq"], 0, "not a subscriber");

    // Unsubscribed users, and users who subscribe after a publish, do not get it.
    let resp = app
        .client
        .delete(app.url("/v1/topics/releases/subscribers/bob"))
        .bearer_auth(service_token("billing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(put(&app, "/v1/topics/releases/subscribers/dave").await, 204);
    assert_eq!(
        app.unread("dave").await["seq"],
        0,
        "no old notifications for a late subscriber"
    );
    app.publish_raw(
        &service_token("billing"),
        &topic_publish("releases", "v3"),
        None,
    )
    .await;
    assert_eq!(app.unread("bob").await["seq"], 1);
    assert_eq!(app.unread("dave").await["seq"], 1);
    assert_eq!(app.unread("alice").await["seq"], 2);

    // A notification to named recipients has no topic field.
    app.publish(&crate::helpers::sample(&["alice"])).await;
    let page = app.list("alice", "?after=2").await;
    assert!(page["notifications"][0].get("topic").is_none(), "{page}");

    // A topic nobody subscribes to reaches nobody.
    let resp = app
        .publish_raw(
            &service_token("billing"),
            &topic_publish("empty", "x"),
            None,
        )
        .await;
    assert_eq!(resp.json::<Value>().await.unwrap()["recipients"], 0);
}

async fn topic_rules(b: Backend) {
    let app = spawn_app(b).await;
    let (status, problem) = bulk(&app, "t", &json!({"add": ["ok", "not ok"], "nope": 1})).await;
    assert_eq!(status, 422);
    let fields = problem_fields(&problem);
    assert!(
        fields.contains(&"add[1]".into()) && fields.contains(&"nope".into()),
        "{fields:?}"
    );
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    assert_eq!(bulk(&app, "t", &json!({ "add": many })).await.0, 422);
    assert_eq!(
        put(&app, "/v1/topics/bad%20topic/subscribers/alice").await,
        422
    );
    assert_eq!(put(&app, "/v1/topics/t/subscribers/bad%20user").await, 422);
    // Users cannot manage topics.
    let resp = app
        .client
        .put(app.url("/v1/topics/t/subscribers/alice"))
        .bearer_auth(user_token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // topic and recipients are exclusive; a topic publish takes no Idempotency-Key.
    let mut both = topic_publish("t", "x");
    both["recipients"] = json!(["alice"]);
    let resp = app
        .publish_raw(&service_token("billing"), &both, None)
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(problem_fields(&resp.json().await.unwrap()), ["topic"]);
    let resp = app
        .publish_raw(
            &service_token("billing"),
            &topic_publish("t", "x"),
            Some("k"),
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        problem_fields(&resp.json().await.unwrap()),
        ["Idempotency-Key"]
    );
}

/// Topic names and user ids keep to an alphabet without NUL, which Postgres cannot store:
/// a NUL in a path or in a bulk list is a 422 on both backends, never a 500.
async fn nul_in_topic_or_user_is_422(b: Backend) {
    let app = spawn_app(b).await;
    assert_eq!(put(&app, "/v1/topics/a%00b/subscribers/alice").await, 422);
    assert_eq!(put(&app, "/v1/topics/t/subscribers/a%00b").await, 422);
    let (status, _) = app.get(&service_token("billing"), "/v1/topics/a%00b").await;
    assert_eq!(status, 422);
    let (status, problem) = bulk(&app, "t", &json!({"add": ["ok", "a\u{0}b"]})).await;
    assert_eq!(status, 422);
    assert_eq!(problem_fields(&problem), ["add[1]"]);
}

const SUBSCRIBERS: usize = 10_000;
/// Users who also get ordinary publishes while the fan-out runs.
const BUSY: usize = 40;
const BUSY_PUBLISHES: usize = 5;

/// One publish reaches 10,000 subscribers with contiguous seqs, in several transactions,
/// while ordinary publishes to some of the same users run concurrently and interleave
/// correctly with it.
async fn ten_thousand_subscribers(b: Backend) {
    let app = spawn_app(b).await;
    let users: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("sub{i:05}")).collect();
    for chunk in users.chunks(1000) {
        let (status, _) = bulk(&app, "all-hands", &json!({ "add": chunk })).await;
        assert_eq!(status, 200);
    }
    // Spread the busy users over the whole id range, so they land in different batches.
    let busy: Vec<&str> = (0..BUSY)
        .map(|i| users[i * (SUBSCRIBERS / BUSY)].as_str())
        .collect();

    let fanout = async {
        let resp = app
            .publish_raw(
                &service_token("billing"),
                &topic_publish("all-hands", "Town hall at 4"),
                None,
            )
            .await;
        assert_eq!(resp.status(), 201);
        resp.json::<Value>().await.unwrap()
    };
    let app_ref = &app;
    let busy_ref = &busy;
    let ordinary = futures::stream::iter(0..BUSY * BUSY_PUBLISHES)
        .map(|i| {
            let user = busy_ref[i % BUSY];
            let app = app_ref;
            async move {
                let resp = app
                    .publish_raw(
                        &service_token("billing"),
                        &crate::helpers::sample(&[user]),
                        None,
                    )
                    .await;
                assert_eq!(resp.status(), 201);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let (result, _) = futures::join!(fanout, ordinary);
    assert_eq!(result["recipients"], SUBSCRIBERS);

    // Every subscriber has it exactly once; busy users have contiguous seqs 1..=6.
    let checks = futures::stream::iter(users.iter())
        .map(|user| {
            let app = &app;
            let busy = busy.contains(&user.as_str());
            async move {
                let page = app.list(user, "?after=0&limit=200").await;
                let notes = page["notifications"].as_array().unwrap().clone();
                let seqs: Vec<i64> = notes.iter().map(|n| n["seq"].as_i64().unwrap()).collect();
                let expected = if busy { BUSY_PUBLISHES + 1 } else { 1 };
                assert_eq!(seqs, (1..=expected as i64).collect::<Vec<_>>(), "{user}");
                let topical: Vec<&Value> =
                    notes.iter().filter(|n| n["topic"] == "all-hands").collect();
                assert_eq!(topical.len(), 1, "{user} got the topic notification once");
                topical[0]["created_at"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<String>>()
        .await;
    // Committed in bounded batches: one transaction per batch, each with its own timestamp.
    let batches: HashSet<String> = checks.into_iter().collect();
    assert!(
        batches.len() >= SUBSCRIBERS / tidings::notifier::TOPIC_BATCH as usize,
        "the fan-out committed in {} transactions",
        batches.len()
    );
}

crate::both_backends!(
    subscribers_manage_and_receive,
    topic_rules,
    nul_in_topic_or_user_is_422,
    ten_thousand_subscribers
);
