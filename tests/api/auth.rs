//! Tokens: who may do what, and which tokens are refused.

use crate::helpers::{sample, service_token, sign, spawn_app, user_token, Backend, SECRET};
use jsonwebtoken::Algorithm;
use serde_json::Value;

async fn expect_401(app: &crate::helpers::TestApp, token: &str, why: &str) {
    let resp = app
        .client
        .get(app.url("/v1/notifications"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "{why}");
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{why}: {challenge}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 401, "{why}");
}

async fn bad_tokens_get_401(b: Backend) {
    let app = spawn_app(b).await;
    let expired = sign(Algorithm::HS256, SECRET, "alice", -120, None);
    expect_401(&app, &expired, "expired").await;
    let other_key = sign(
        Algorithm::HS256,
        "another-secret-that-is-32-characters-long",
        "alice",
        3600,
        None,
    );
    expect_401(&app, &other_key, "wrong signature").await;
    let wrong_alg = sign(Algorithm::HS384, SECRET, "alice", 3600, None);
    expect_401(&app, &wrong_alg, "wrong algorithm").await;
    // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (empty signature)
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    expect_401(&app, none, "alg none").await;
    expect_401(&app, "not-a-jwt", "garbage").await;
    let bad_sub = sign(Algorithm::HS256, SECRET, "alice smith", 3600, None);
    expect_401(&app, &bad_sub, "sub outside the user id alphabet").await;

    let missing = app
        .client
        .get(app.url("/v1/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
}

async fn user_token_cannot_publish(b: Backend) {
    let app = spawn_app(b).await;
    let resp = app
        .publish_raw(&user_token("alice"), &sample(&["alice"]), None)
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(app.unread("alice").await["seq"], 0);
}

async fn service_token_cannot_read_an_inbox(b: Backend) {
    let app = spawn_app(b).await;
    let (status, _) = app
        .get(&service_token("billing"), "/v1/notifications")
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get(&service_token("billing"), "/v1/notifications/unread-count")
        .await;
    assert_eq!(status, 403);
}

async fn publish_without_token_is_401_before_the_body_is_read(b: Backend) {
    let app = spawn_app(b).await;
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .body("not even json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

crate::both_backends!(
    bad_tokens_get_401,
    user_token_cannot_publish,
    service_token_cannot_read_an_inbox,
    publish_without_token_is_401_before_the_body_is_read,
);
