//! HEAD wherever GET works (RFC 9110 §9.3.2): the GET's status and head, no body.

use crate::helpers::{spawn_app, user_token, Backend};

async fn head_answers_wherever_get_does(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("alice");
    for path in [
        "/healthz",
        "/readyz",
        "/v1/notifications/unread-count",
        "/v1/notifications?limit=5",
        "/v1/sockjs/info",
        "/openapi.json",
    ] {
        let get = app
            .client
            .get(app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET");
        let get_status = get.status();
        let get_type = get.headers().get("content-type").cloned();
        let get_body = get.bytes().await.expect("GET body");
        assert_eq!(get_status, 200, "GET {path}");

        let head = app
            .client
            .head(app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("HEAD");
        assert_eq!(head.status(), get_status, "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type").cloned(),
            get_type,
            "HEAD {path}"
        );
        // The GET's length, when it has one (RFC 9110 §8.6), and never a body. Only for
        // fixed documents: /readyz and /v1/sockjs/info say something new each time.
        let fixed = ["/healthz", "/openapi.json"].contains(&path);
        if let Some(length) = head.headers().get("content-length").filter(|_| fixed) {
            assert_eq!(
                length.to_str().ok(),
                Some(get_body.len().to_string().as_str()),
                "HEAD {path}"
            );
        }
        assert!(
            head.bytes().await.expect("HEAD body").is_empty(),
            "HEAD {path}"
        );
    }
    // A method that GET does not stand for is still refused.
    let put = app
        .client
        .put(app.url("/healthz"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 405);
}

crate::both_backends!(head_answers_wherever_get_does);
