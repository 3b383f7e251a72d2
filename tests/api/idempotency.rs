//! `Idempotency-Key`: a retried publish creates nothing new.

use crate::helpers::{problem_fields, sample, service_token, spawn_app, Backend};
use serde_json::{json, Value};

async fn same_key_returns_the_first_response(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    let first = app
        .publish_raw(&token, &sample(&["alice", "bob"]), Some("order-1234"))
        .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    // The same content, reformatted with keys in another order, is the same request.
    let mut reordered = serde_json::Map::new();
    let original = sample(&["alice", "bob"]);
    for key in ["link", "data", "body", "title", "type", "recipients"] {
        reordered.insert(key.into(), original[key].clone());
    }
    let again = app
        .publish_raw(&token, &Value::Object(reordered), Some("order-1234"))
        .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "same ids, seqs and timestamps");
    assert_eq!(
        app.unread("alice").await,
        json!({"unread": 1, "seq": 1}),
        "nothing new created"
    );

    // Another service's key space is its own.
    let other = app
        .publish_raw(
            &service_token("shipping"),
            &sample(&["alice"]),
            Some("order-1234"),
        )
        .await;
    assert_eq!(other.status(), 201);
    assert_eq!(app.unread("alice").await["seq"], 2);
}

async fn same_key_with_another_body_is_422(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    assert_eq!(
        app.publish_raw(&token, &sample(&["alice"]), Some("k1"))
            .await
            .status(),
        201
    );
    let mut changed = sample(&["alice"]);
    changed["title"] = json!("A different title");
    let resp = app.publish_raw(&token, &changed, Some("k1")).await;
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().contains("idempotency"),
        "{problem}"
    );
    assert_eq!(app.unread("alice").await["seq"], 1);
}

async fn concurrent_retries_create_one_notification(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    let body = sample(&["alice"]);
    let tries = (0..8).map(|_| app.publish_raw(&token, &body, Some("burst")));
    let responses = futures::future::join_all(tries).await;
    let mut bodies = Vec::new();
    for r in responses {
        assert_eq!(r.status(), 201);
        bodies.push(r.json::<Value>().await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every retry saw the same ids"
    );
    assert_eq!(app.unread("alice").await["seq"], 1);
}

async fn bad_keys_are_named(b: Backend) {
    let app = spawn_app(b).await;
    let resp = app
        .publish_raw(
            &service_token("billing"),
            &sample(&["alice"]),
            Some(&"k".repeat(256)),
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        problem_fields(&resp.json().await.unwrap()),
        ["Idempotency-Key"]
    );
}

/// A key that is not visible ASCII never reaches the database (where a NUL would be a 500 on
/// Postgres): a 422 naming the header, or for a NUL a 400 from the HTTP parser itself.
async fn non_ascii_and_nul_keys_are_refused(b: Backend) {
    let app = spawn_app(b).await;
    let token = service_token("billing");
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .bearer_auth(&token)
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("clé-1".as_bytes()).unwrap(),
        )
        .json(&sample(&["alice"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        problem_fields(&resp.json().await.unwrap()),
        ["Idempotency-Key"]
    );

    // No HTTP client sends a NUL in a header, so write the request by hand.
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = sample(&["alice"]).to_string();
    let request = format!(
        "POST /v1/notifications HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Idempotency-Key: a\0b\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    })
    .await
    .unwrap();
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    // actix's HTTP/1 parser refuses the request before any handler runs, with an
    // empty 400: the key can never reach the database, though nothing can name the header.
    assert_eq!(status, 400, "{response}");
    assert_eq!(app.unread("alice").await["seq"], 0);
}

crate::both_backends!(
    non_ascii_and_nul_keys_are_refused,
    same_key_returns_the_first_response,
    same_key_with_another_body_is_422,
    concurrent_retries_create_one_notification,
    bad_keys_are_named,
);
