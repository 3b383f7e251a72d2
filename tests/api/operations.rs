//! Health, readiness, the OpenAPI document and the docs page, and unknown routes.

use crate::helpers::{service_token, spawn_app, user_token, Backend};
use serde_json::Value;

async fn health_and_readiness(b: Backend) {
    let app = spawn_app(b).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "up");
    assert!(body["bus"].is_string());
    // The release, so an operator sees which replicas a rolling upgrade has reached.
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

async fn served_openapi_matches_the_committed_file(b: Backend) {
    let app = spawn_app(b).await;
    let served = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed");
    assert!(
        served == committed,
        "openapi/openapi.json is out of date: run `cargo run -- openapi > openapi/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/notifications",
        "/v1/notifications/read",
        "/v1/notifications/unread-count",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    // OpenAPI requires every operationId to be unique.
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operationIds");
}

async fn docs_render_offline(b: Backend) {
    let app = spawn_app(b).await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger"), "a Swagger UI page");
    assert!(!html.contains("cdn."), "no CDN: it must work offline");
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(init.text().await.unwrap().contains("/openapi.json"));
}

async fn unknown_routes_and_methods_are_problems(b: Backend) {
    let app = spawn_app(b).await;
    let resp = app
        .client
        .get(app.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = app
        .client
        .delete(app.url("/v1/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

/// Every 405 names the methods the resource does answer (RFC 9110 §15.5.6), which are the
/// methods the document lists for that path.
async fn method_not_allowed_lists_the_allowed_methods(b: Backend) {
    let app = spawn_app(b).await;
    let doc: Value = serde_json::from_str(&tidings::routes::openapi::document()).unwrap();
    for (method, path, documented, allow) in [
        (
            "DELETE",
            "/v1/notifications",
            "/v1/notifications",
            "GET, POST",
        ),
        (
            "POST",
            "/v1/notifications/unread-count",
            "/v1/notifications/unread-count",
            "GET",
        ),
        (
            "GET",
            "/v1/notifications/read",
            "/v1/notifications/read",
            "POST",
        ),
        (
            "POST",
            "/v1/notifications/stream",
            "/v1/notifications/stream",
            "GET",
        ),
        (
            "PUT",
            "/v1/notifications/stream.ndjson",
            "/v1/notifications/stream.ndjson",
            "GET",
        ),
        (
            "POST",
            "/v1/notifications/poll",
            "/v1/notifications/poll",
            "GET",
        ),
        (
            "GET",
            "/v1/notifications/archive",
            "/v1/notifications/archive",
            "POST",
        ),
        (
            "PUT",
            "/v1/notifications/unarchive",
            "/v1/notifications/unarchive",
            "POST",
        ),
        (
            "DELETE",
            "/v1/notifications/delete",
            "/v1/notifications/delete",
            "POST",
        ),
        (
            "GET",
            "/v1/notifications/0190a5c4-8b2e-7c3d-9e4f-5a6b7c8d9e0f",
            "/v1/notifications/{id}",
            "DELETE",
        ),
        ("POST", "/v1/ws", "/v1/ws", "GET"),
        ("PATCH", "/v1/topics/t1", "/v1/topics/{topic}", "GET"),
        (
            "GET",
            "/v1/topics/t1/subscribers",
            "/v1/topics/{topic}/subscribers",
            "POST",
        ),
        (
            "POST",
            "/v1/topics/t1/subscribers/alice",
            "/v1/topics/{topic}/subscribers/{user}",
            "PUT, DELETE",
        ),
        ("POST", "/healthz", "/healthz", "GET"),
        ("DELETE", "/readyz", "/readyz", "GET"),
        ("PUT", "/metrics", "/metrics", "GET"),
    ] {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(service_token("billing"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let header = resp
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(header, allow, "{method} {path}");
        let mut listed: Vec<String> = doc["paths"][documented]
            .as_object()
            .unwrap_or_else(|| panic!("{documented} is documented"))
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        let mut allowed: Vec<String> = header.split(", ").map(str::to_owned).collect();
        listed.sort();
        allowed.sort();
        assert_eq!(allowed, listed, "Allow for {path} matches the document");
    }
}

/// Requests the server refuses get a status the document lists for that operation.
async fn refusals_are_documented(b: Backend) {
    let app = spawn_app(b).await;
    let doc: Value = serde_json::from_str(&tidings::routes::openapi::document()).unwrap();
    let user = user_token("alice");
    for (method, path, documented, status) in [
        (
            "get",
            "/v1/notifications/stream.ndjson?after=x",
            "/v1/notifications/stream.ndjson",
            400,
        ),
        (
            "get",
            "/v1/notifications/stream.ndjson?after=-1",
            "/v1/notifications/stream.ndjson",
            400,
        ),
        (
            "get",
            "/v1/notifications/stream?after=x",
            "/v1/notifications/stream",
            400,
        ),
        (
            "get",
            "/v1/notifications/stream.html?after=0",
            "/v1/notifications/stream.html",
            400,
        ),
        ("get", "/v1/ws", "/v1/ws", 400),
        ("get", "/v1/ws?after=x", "/v1/ws", 400),
        (
            "get",
            "/v1/notifications/poll",
            "/v1/notifications/poll",
            400,
        ),
        (
            "get",
            "/v1/notifications?after=1&before=2",
            "/v1/notifications",
            400,
        ),
        (
            "get",
            "/v1/notifications?limit=201",
            "/v1/notifications",
            400,
        ),
        (
            "get",
            "/v1/notifications/unread-count",
            "/v1/notifications/unread-count",
            200,
        ),
        (
            "get",
            "/v1/notifications?after=0&archived=true",
            "/v1/notifications",
            400,
        ),
    ] {
        let resp = app
            .client
            .get(app.url(path))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let responses = &doc["paths"][documented][method]["responses"];
        assert!(
            responses[status.to_string()].is_object(),
            "{path}: {status} is not documented for {method} {documented}"
        );
    }
    // The documented bounds are the server's.
    let list = &doc["paths"]["/v1/notifications"]["get"]["parameters"];
    let param = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    assert_eq!(param("after")["minimum"], 0);
    assert_eq!(param("before")["minimum"], 1);
    assert_eq!(param("limit")["minimum"], 1);
    assert_eq!(param("limit")["maximum"], 200);
    let topic = &doc["paths"]["/v1/topics/{topic}"]["get"]["parameters"][0]["schema"];
    assert_eq!(topic["pattern"], "^[A-Za-z0-9._:@-]{1,128}$");
    // Every response has a description: OpenAPI requires one.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
}

crate::both_backends!(
    method_not_allowed_lists_the_allowed_methods,
    refusals_are_documented,
    health_and_readiness,
    served_openapi_matches_the_committed_file,
    docs_render_offline,
    unknown_routes_and_methods_are_problems,
);
