//! Preferences across replicas (issue 25): a `PUT` on one replica applies to the very next
//! publish on another, both ways (mute, then unmute), although that replica's commit path
//! had cached the older preferences; and the other replica's clients hear the change.

use crate::cluster::{service_token, user_token, Cluster};
use serde_json::{json, Value};
use tidings_test_support::live::{sample, SseClient, SseEvent};

async fn publish_to(c: &Cluster, replica: usize, kind: &str) -> Value {
    let mut body = sample(&["alice"]);
    body["type"] = json!(kind);
    let resp = c
        .client
        .post(format!("{}/v1/notifications", c.url(replica)))
        .bearer_auth(service_token("billing"))
        .json(&body)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.expect("publish body")
}

async fn put_prefs(c: &Cluster, replica: usize, doc: &Value) {
    let resp = c
        .client
        .put(format!("{}/v1/preferences", c.url(replica)))
        .bearer_auth(user_token("alice"))
        .json(doc)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_replica_applies_at_once_to_publishes_on_another() {
    let c = Cluster::start(2).await;
    let mut sse = SseClient::open(&c.url(1), &user_token("alice"), None).await;
    // Replica 1 commits for alice first: it now knows she has no preferences.
    assert_eq!(publish_to(&c, 1, "promo.deal").await["muted"], 0);

    put_prefs(
        &c,
        0,
        &json!({"rules": [{"types": ["promo.*"], "channels": ["all"], "action": "mute"}]}),
    )
    .await;
    assert_eq!(publish_to(&c, 1, "promo.deal").await["muted"], 1);
    // Replica 1 now holds the mute; lifting it on replica 0 applies at once too.
    put_prefs(&c, 0, &json!({"rules": []})).await;
    assert_eq!(publish_to(&c, 1, "promo.deal").await["muted"], 0);

    // A client on replica 1 heard both changes, over the bus, in order.
    let mut versions = Vec::new();
    while versions.len() < 2 {
        match sse.next().await {
            SseEvent::Other { event, data, .. } if event == "preferences" => {
                let v: Value = serde_json::from_str(&data).expect("json");
                versions.push(v["version"].as_i64().expect("version"));
            }
            SseEvent::Notification { .. } | SseEvent::Unread { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(versions, [1, 2]);
}
