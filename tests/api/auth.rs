//! Tokens: who may do what, and which tokens are refused.

use crate::helpers::{
    sample, service_token, sign, spawn_app, spawn_app_with, user_token, Backend, TestApp, SECRET,
};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// Signs any claims with the test secret: for tokens the `sign` helper cannot express
/// (`iss`, `aud`, `nbf`, a `sub` that is not a string the CLI would accept).
fn sign_claims(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// GET /v1/notifications with `token`: the status and the problem's `detail`.
async fn read_inbox(app: &TestApp, token: &str) -> (u16, String) {
    let (status, body) = app.get(token, "/v1/notifications").await;
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A publish to alice with `token`: the status and the problem's `detail`.
async fn publish_as(app: &TestApp, token: &str, key: Option<&str>) -> (u16, String) {
    let resp = app.publish_raw(token, &sample(&["alice"]), key).await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

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

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "tidings";

async fn with_issuer_and_audience(b: Backend) -> TestApp {
    spawn_app_with(b, |s| {
        s.auth.issuer = Some(ISSUER.into());
        s.auth.audience = Some(AUDIENCE.into());
    })
    .await
}

async fn configured_issuer_and_audience_are_required(b: Backend) {
    let app = with_issuer_and_audience(b).await;
    let exp = now() + 3600;
    let neither = sign_claims(json!({"sub": "alice", "exp": exp}));
    let (status, detail) = read_inbox(&app, &neither).await;
    assert_eq!(status, 401, "a token without iss or aud: {detail}");
    assert!(
        detail.contains("`iss`") || detail.contains("`aud`"),
        "{detail}"
    );

    let no_aud = sign_claims(json!({"sub": "alice", "exp": exp, "iss": ISSUER}));
    let (status, detail) = read_inbox(&app, &no_aud).await;
    assert_eq!(status, 401, "a token without aud: {detail}");
    assert!(detail.contains("`aud` claim is required"), "{detail}");

    let no_iss = sign_claims(json!({"sub": "alice", "exp": exp, "aud": AUDIENCE}));
    let (status, detail) = read_inbox(&app, &no_iss).await;
    assert_eq!(status, 401, "a token without iss: {detail}");
    assert!(detail.contains("`iss` claim is required"), "{detail}");

    // And a service token without them cannot publish.
    let service = sign_claims(
        json!({"sub": "billing", "exp": exp, "scope": "notifications:publish", "iss": ISSUER}),
    );
    let (status, detail) = publish_as(&app, &service, None).await;
    assert_eq!(status, 401, "{detail}");
    assert!(detail.contains("`aud` claim is required"), "{detail}");

    let both = sign_claims(json!({"sub": "alice", "exp": exp, "iss": ISSUER, "aud": AUDIENCE}));
    assert_eq!(read_inbox(&app, &both).await.0, 200);
    let wrong = sign_claims(json!({"sub": "alice", "exp": exp, "iss": ISSUER, "aud": "other"}));
    assert_eq!(read_inbox(&app, &wrong).await.0, 401);
}

async fn audience_may_be_an_array(b: Backend) {
    let app = with_issuer_and_audience(b).await;
    let exp = now() + 3600;
    let token =
        |aud: Value| sign_claims(json!({"sub": "alice", "exp": exp, "iss": ISSUER, "aud": aud}));
    for aud in [json!([AUDIENCE]), json!(["billing-api", AUDIENCE])] {
        let (status, detail) = read_inbox(&app, &token(aud.clone())).await;
        assert_eq!(status, 200, "aud {aud}: {detail}");
    }
    let service = sign_claims(json!({
        "sub": "billing", "exp": exp, "scope": "notifications:publish",
        "iss": ISSUER, "aud": ["billing-api", AUDIENCE],
    }));
    let (status, detail) = publish_as(&app, &service, None).await;
    assert_eq!(status, 201, "{detail}");

    for aud in [json!(["billing-api"]), json!([])] {
        let (status, detail) = read_inbox(&app, &token(aud.clone())).await;
        assert_eq!(status, 401, "aud {aud}");
        assert!(detail.contains("aud"), "{detail}");
    }
}

async fn a_token_is_not_valid_before_its_nbf(b: Backend) {
    let app = spawn_app(b).await;
    let exp = now() + 3600;
    let later = now() + 120;
    let user = sign_claims(json!({"sub": "alice", "exp": exp, "nbf": later}));
    let (status, detail) = read_inbox(&app, &user).await;
    assert_eq!(status, 401, "{detail}");
    assert!(detail.contains("nbf"), "{detail}");
    let service = sign_claims(
        json!({"sub": "billing", "exp": exp, "nbf": later, "scope": "notifications:publish"}),
    );
    let (status, detail) = publish_as(&app, &service, None).await;
    assert_eq!(status, 401, "{detail}");
    assert!(detail.contains("nbf"), "{detail}");
    assert_eq!(app.unread("alice").await["seq"], 0, "nothing was published");

    // Already valid: an `nbf` in the past, or now.
    for nbf in [now() - 60, now()] {
        let user = sign_claims(json!({"sub": "alice", "exp": exp, "nbf": nbf}));
        assert_eq!(read_inbox(&app, &user).await.0, 200, "nbf {nbf}");
    }
}

async fn a_service_token_sub_follows_the_service_name_rule(b: Backend) {
    let app = spawn_app(b).await;
    let (huge, long) = ("s".repeat(10 * 1024), "s".repeat(3000));
    let cases = [
        ("", "must not be empty"),
        (huge.as_str(), "at most 128 characters"),
        // 3,000 bytes were a 500 on Postgres with an Idempotency-Key: the B-tree row limit.
        (long.as_str(), "at most 128 characters"),
        ("billé", "only A-Z a-z 0-9 . _ : @ - are allowed"),
        ("bill\u{1}ing", "only A-Z a-z 0-9 . _ : @ - are allowed"),
        ("bill\u{0}ing", "only A-Z a-z 0-9 . _ : @ - are allowed"),
        ("bill ing", "only A-Z a-z 0-9 . _ : @ - are allowed"),
    ];
    for (sub, rule) in cases {
        let token = sign(
            Algorithm::HS256,
            SECRET,
            sub,
            3600,
            Some("notifications:publish"),
        );
        for key in [None, Some("order-1234")] {
            let (status, detail) = publish_as(&app, &token, key).await;
            assert_eq!(
                status,
                401,
                "sub of {} bytes, key {key:?}: {detail}",
                sub.len()
            );
            assert!(
                detail.contains("`sub`") && detail.contains(rule),
                "sub of {} bytes: {detail}",
                sub.len()
            );
        }
    }
    assert_eq!(app.unread("alice").await["seq"], 0, "nothing was published");
    let longest = service_token(&"s".repeat(128));
    assert_eq!(publish_as(&app, &longest, Some("order-1234")).await.0, 201);
}

crate::both_backends!(
    configured_issuer_and_audience_are_required,
    audience_may_be_an_array,
    a_token_is_not_valid_before_its_nbf,
    a_service_token_sub_follows_the_service_name_rule,
    bad_tokens_get_401,
    user_token_cannot_publish,
    service_token_cannot_read_an_inbox,
    publish_without_token_is_401_before_the_body_is_read,
);
