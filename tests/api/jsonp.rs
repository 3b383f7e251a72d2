//! JSONP short polling: `callback=` on the unread count and the `after` listing.

use crate::helpers::{sample, spawn_app, user_token, Backend, TestApp};
use serde_json::Value;

/// GET without headers (as a `<script src>` does): status, content type, nosniff, body.
async fn script(app: &TestApp, path: &str) -> (u16, String, Option<String>, String) {
    let resp = app.client.get(app.url(path)).send().await.expect("get");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let nosniff = header("x-content-type-options");
    (
        status,
        content_type,
        nosniff,
        resp.text().await.expect("body"),
    )
}

/// The JSON a script hands to `callback`.
fn argument(body: &str, callback: &str) -> Value {
    let inner = body
        .strip_prefix(&format!("/**/{callback}("))
        .and_then(|b| b.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a call of {callback}: {body}"));
    serde_json::from_str(inner).expect("JSON argument")
}

async fn jsonp_answers_the_count_and_the_page(b: Backend) {
    let app = spawn_app(b).await;
    for _ in 0..3 {
        app.publish(&sample(&["alice"])).await;
    }
    let token = user_token("alice");

    let (status, ct, nosniff, body) = script(
        &app,
        &format!("/v1/notifications/unread-count?callback=badge.set&access_token={token}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/javascript"), "{ct}");
    assert_eq!(nosniff.as_deref(), Some("nosniff"));
    assert_eq!(
        argument(&body, "badge.set"),
        serde_json::json!({"unread": 3, "seq": 3})
    );

    let (status, _, nosniff, body) = script(
        &app,
        &format!("/v1/notifications?after=1&callback=$cb_1&access_token={token}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(nosniff.as_deref(), Some("nosniff"));
    let page = argument(&body, "$cb_1");
    let seqs: Vec<i64> = page["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["seq"].as_i64())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(page["unread"], 3);
}

async fn jsonp_errors_reach_the_callback(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    // No token: a <script> cannot read a 401, so the callback gets the problem.
    let (status, ct, _, body) = script(&app, "/v1/notifications/unread-count?callback=cb").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/javascript"), "{ct}");
    let problem = argument(&body, "cb");
    assert_eq!(problem["status"], 401, "{problem}");
    assert_eq!(problem["type"], "urn:tidings:problem:unauthorized");

    let (_, _, _, body) = script(
        &app,
        &format!("/v1/notifications?after=x&callback=cb&access_token={token}"),
    )
    .await;
    let problem = argument(&body, "cb");
    assert_eq!(problem["status"], 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "after");
}

async fn bad_callbacks_are_a_400(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    let long = "a".repeat(65);
    for cb in [
        "alert(1)//",
        "1x",
        "a-b",
        "a..b",
        "a%20b",
        "%3Cscript%3E",
        &long,
    ] {
        for path in ["/v1/notifications/unread-count", "/v1/notifications"] {
            let (status, ct, _, body) = script(
                &app,
                &format!("{path}?after=0&callback={cb}&access_token={token}"),
            )
            .await;
            assert_eq!(status, 400, "{path} {cb}: {body}");
            assert!(ct.starts_with("application/problem+json"), "{ct}");
            let problem: Value = serde_json::from_str(&body).expect("problem");
            assert_eq!(problem["errors"][0]["field"], "callback", "{problem}");
        }
    }
}

async fn access_token_in_the_url_only_with_a_callback(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    // Tokens stay out of URLs elsewhere: without a callback the header is required.
    let (status, _, _, _) = script(
        &app,
        &format!("/v1/notifications/unread-count?access_token={token}"),
    )
    .await;
    assert_eq!(status, 401);
}

crate::both_backends!(
    jsonp_answers_the_count_and_the_page,
    jsonp_errors_reach_the_callback,
    bad_callbacks_are_a_400,
    access_token_in_the_url_only_with_a_callback,
);
