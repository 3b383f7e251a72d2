//! The inbox: listing, the unread count, marking read, and isolation between users.

use crate::helpers::{problem_fields, sample, seqs, spawn_app, user_token, Backend};
use serde_json::{json, Value};

async fn publish_n(app: &crate::helpers::TestApp, user: &str, n: usize) -> Vec<Value> {
    let mut receipts = Vec::new();
    for _ in 0..n {
        let body = app.publish(&sample(&[user])).await;
        receipts.push(body["notifications"][0].clone());
    }
    receipts
}

async fn listing_after_and_before(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, "alice", 7).await;

    let page = app.list("alice", "?after=2&limit=3").await;
    assert_eq!(seqs(&page), [3, 4, 5]);
    assert_eq!(page["unread"], 7);
    assert_eq!(page["seq"], 7);

    assert_eq!(
        seqs(&app.list("alice", "?after=0").await),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        seqs(&app.list("alice", "?after=7").await),
        Vec::<i64>::new()
    );
    // The inbox view: newest first.
    assert_eq!(seqs(&app.list("alice", "").await), [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(seqs(&app.list("alice", "?limit=2").await), [7, 6]);
    assert_eq!(seqs(&app.list("alice", "?before=6&limit=2").await), [5, 4]);

    let empty = app.list("nobody", "").await;
    assert_eq!(empty, json!({"notifications": [], "unread": 0, "seq": 0}));
}

async fn default_and_maximum_page_size(b: Backend) {
    let app = spawn_app(b).await;
    let users: Vec<String> = (0..1).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    for _ in 0..60 {
        app.publish(&sample(&refs)).await;
    }
    assert_eq!(seqs(&app.list("u0", "").await).len(), 50);
    assert_eq!(seqs(&app.list("u0", "?after=0&limit=200").await).len(), 60);
}

async fn bad_query_parameters_are_named(b: Backend) {
    let app = spawn_app(b).await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?after=-1", "after"),
        ("?after=x", "after"),
        ("?before=0", "before"),
        ("?after=1&before=5", "before"),
        ("?unread=maybe", "unread"),
    ] {
        let (status, problem) = app
            .get(&user_token("alice"), &format!("/v1/notifications{query}"))
            .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(problem_fields(&problem), [field], "{query}: {problem}");
    }
}

async fn unread_filter_and_count(b: Backend) {
    let app = spawn_app(b).await;
    let receipts = publish_n(&app, "alice", 5).await;
    assert_eq!(app.unread("alice").await, json!({"unread": 5, "seq": 5}));

    let (status, counts) = app
        .mark_read(
            "alice",
            &json!({"ids": [receipts[1]["id"], receipts[3]["id"]]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(counts, json!({"unread": 3, "seq": 5}));
    assert_eq!(seqs(&app.list("alice", "?unread=true").await), [5, 3, 1]);
    assert_eq!(
        seqs(&app.list("alice", "?after=0&unread=true").await),
        [1, 3, 5]
    );

    let page = app.list("alice", "?after=1&limit=1").await;
    assert!(
        page["notifications"][0]["read_at"].is_string(),
        "seq 2 was read: {page}"
    );
    let page = app.list("alice", "?after=0&limit=1").await;
    assert!(page["notifications"][0]["read_at"].is_null());

    // Marking again changes nothing and never goes below zero.
    let (_, counts) = app
        .mark_read("alice", &json!({"ids": [receipts[1]["id"]]}))
        .await;
    assert_eq!(counts["unread"], 3);
    // `4.0` is the whole number 4 (JSON Schema's `integer` includes it).
    let (status, counts) = app.mark_read("alice", &json!({"up_to": 4.0})).await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts, json!({"unread": 1, "seq": 5}));
    let (_, counts) = app.mark_read("alice", &json!({"up_to": 100})).await;
    assert_eq!(counts, json!({"unread": 0, "seq": 5}));
    assert_eq!(app.unread("alice").await, json!({"unread": 0, "seq": 5}));
    app.publish(&sample(&["alice"])).await;
    assert_eq!(app.unread("alice").await, json!({"unread": 1, "seq": 6}));
}

async fn bad_read_requests(b: Backend) {
    let app = spawn_app(b).await;
    for (body, field) in [
        (json!({}), "ids"),
        (json!({"ids": []}), "ids"),
        (json!({"ids": ["not-a-uuid"]}), "ids[0]"),
        (json!({"up_to": -3}), "up_to"),
        (json!({"up_to": 1.5}), "up_to"),
        (json!({"up_to": 1, "ids": [uuid::Uuid::nil()]}), "ids"),
        (json!({"up_to": 1, "everything": true}), "everything"),
    ] {
        let (status, problem) = app.mark_read("alice", &body).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            problem_fields(&problem).contains(&field.to_owned()),
            "{body}: {problem}"
        );
    }
    let too_many: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let (status, _) = app.mark_read("alice", &json!({ "ids": too_many })).await;
    assert_eq!(status, 422);
}

async fn users_are_isolated(b: Backend) {
    let app = spawn_app(b).await;
    let a = publish_n(&app, "alice", 3).await;
    publish_n(&app, "bob", 1).await;

    // Bob lists only his own.
    let page = app.list("bob", "?after=0").await;
    assert_eq!(seqs(&page), [1]);
    assert_eq!(page["unread"], 1);
    let ids: Vec<&Value> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["id"])
        .collect();
    assert!(a.iter().all(|r| !ids.contains(&&r["id"])));

    // Bob cannot mark Alice's read, by id or by seq, and learns nothing from trying.
    let (status, counts) = app
        .mark_read(
            "bob",
            &json!({"ids": a.iter().map(|r| &r["id"]).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(counts, json!({"unread": 1, "seq": 1}));
    let (_, counts) = app.mark_read("bob", &json!({"up_to": 3})).await;
    assert_eq!(counts, json!({"unread": 0, "seq": 1}));
    assert_eq!(app.unread("alice").await, json!({"unread": 3, "seq": 3}));
    assert!(app.list("alice", "?after=0").await["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["read_at"].is_null()));
}

crate::both_backends!(
    listing_after_and_before,
    default_and_maximum_page_size,
    bad_query_parameters_are_named,
    unread_filter_and_count,
    bad_read_requests,
    users_are_isolated,
);
