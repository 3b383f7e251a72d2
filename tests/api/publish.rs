//! Publishing: the contract's validation table, one test per rule, and atomicity.

use crate::helpers::{problem_fields, sample, service_token, spawn_app, Backend};
use serde_json::{json, Value};

/// Publishes `body` and asserts the status and that the problem names `field`.
async fn rejects(backend: Backend, body: Value, status: u16, field: &str) {
    let app = spawn_app(backend).await;
    let resp = app
        .publish_raw(&service_token("billing"), &body, None)
        .await;
    assert_eq!(resp.status().as_u16(), status, "for {body}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "errors are problem documents"
    );
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], status);
    let fields = problem_fields(&problem);
    assert!(
        fields.iter().any(|f| f == field),
        "{field} not named in {problem}"
    );
    // Nothing half-written: no recipient got anything.
    for user in ["alice", "bob"] {
        assert_eq!(
            app.unread(user).await["seq"],
            0,
            "{user} got a notification from a rejected publish"
        );
    }
}

/// `sample(["alice"])` with one field replaced.
fn with(field: &str, value: Value) -> Value {
    let mut body = sample(&["alice"]);
    body[field] = value;
    body
}

fn without(field: &str) -> Value {
    let mut body = sample(&["alice"]);
    body.as_object_mut().unwrap().remove(field);
    body
}

async fn recipients_required(b: Backend) {
    rejects(b, without("recipients"), 422, "recipients").await
}
async fn recipients_not_empty(b: Backend) {
    rejects(b, with("recipients", json!([])), 422, "recipients").await
}
async fn recipients_at_most_1000(b: Backend) {
    let many: Vec<String> = (0..1001).map(|i| format!("user{i}")).collect();
    rejects(b, with("recipients", json!(many)), 422, "recipients").await
}
async fn recipient_id_alphabet(b: Backend) {
    rejects(
        b,
        with("recipients", json!(["alice", "bob smith"])),
        422,
        "recipients[1]",
    )
    .await
}
async fn recipient_id_length(b: Backend) {
    rejects(
        b,
        with("recipients", json!(["a".repeat(129)])),
        422,
        "recipients[0]",
    )
    .await
}
async fn recipient_must_be_string(b: Backend) {
    rejects(
        b,
        with("recipients", json!(["alice", 7])),
        422,
        "recipients[1]",
    )
    .await
}
async fn type_required(b: Backend) {
    rejects(b, without("type"), 422, "type").await
}
async fn type_alphabet(b: Backend) {
    rejects(b, with("type", json!("Order Shipped")), 422, "type").await
}
async fn type_length(b: Backend) {
    rejects(b, with("type", json!("a".repeat(65))), 422, "type").await
}
async fn title_required(b: Backend) {
    rejects(b, without("title"), 422, "title").await
}
async fn title_not_empty(b: Backend) {
    rejects(b, with("title", json!("")), 422, "title").await
}
async fn title_length(b: Backend) {
    rejects(b, with("title", json!("t".repeat(201))), 422, "title").await
}
async fn body_length(b: Backend) {
    rejects(b, with("body", json!("b".repeat(4001))), 422, "body").await
}
async fn data_must_be_object(b: Backend) {
    rejects(b, with("data", json!([1, 2, 3])), 422, "data").await
}
async fn data_at_most_16k(b: Backend) {
    rejects(
        b,
        with("data", json!({"blob": "x".repeat(16 * 1024)})),
        422,
        "data",
    )
    .await
}
async fn link_absolute(b: Backend) {
    rejects(b, with("link", json!("/orders/1234")), 422, "link").await
}
async fn link_http_only(b: Backend) {
    rejects(b, with("link", json!("javascript:alert(1)")), 422, "link").await
}
async fn link_length(b: Backend) {
    rejects(
        b,
        with(
            "link",
            json!(format!("https://shop.example/{}", "a".repeat(2048))),
        ),
        422,
        "link",
    )
    .await
}
async fn unknown_fields_are_named(b: Backend) {
    let mut body = sample(&["alice"]);
    body["priority"] = json!("high");
    body["channel"] = json!("email");
    let app = spawn_app(b).await;
    let resp = app
        .publish_raw(&service_token("billing"), &body, None)
        .await;
    assert_eq!(resp.status(), 422);
    let fields = problem_fields(&resp.json().await.unwrap());
    assert!(
        fields.contains(&"priority".into()) && fields.contains(&"channel".into()),
        "{fields:?}"
    );
}

async fn invalid_json_is_400(b: Backend) {
    let app = spawn_app(b).await;
    for raw in [r#"{"recipients": ["alice"],"#, "", "not json"] {
        let resp = app
            .client
            .post(app.url("/v1/notifications"))
            .bearer_auth(service_token("billing"))
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "for {raw:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("JSON") || raw.is_empty(),
            "{problem}"
        );
    }
}

async fn body_over_64k_is_413(b: Backend) {
    let app = spawn_app(b).await;
    // Valid JSON, just too big: the size limit applies before parsing.
    let body = with("body", json!("x".repeat(70 * 1024)));
    let resp = app
        .publish_raw(&service_token("billing"), &body, None)
        .await;
    assert_eq!(resp.status(), 413);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 413);
    // Also when streamed without a Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .bearer_auth(service_token("billing"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

async fn publish_returns_one_receipt_per_distinct_recipient(b: Backend) {
    let app = spawn_app(b).await;
    let body = app.publish(&sample(&["alice", "bob", "alice"])).await;
    let receipts = body["notifications"].as_array().unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0]["recipient"], "alice");
    assert_eq!(receipts[1]["recipient"], "bob");
    for r in receipts {
        assert_eq!(r["seq"], 1);
        assert!(uuid::Uuid::parse_str(r["id"].as_str().unwrap()).is_ok());
        assert!(chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).is_ok());
    }
    assert_ne!(receipts[0]["id"], receipts[1]["id"]);
    // The notification is committed before the response: it is readable at once.
    let page = app.list("alice", "").await;
    assert_eq!(page["notifications"][0]["id"], receipts[0]["id"]);
    assert_eq!(page["notifications"][0]["title"], "Your order has shipped");
    assert_eq!(page["notifications"][0]["data"]["order_id"], 1234);
    assert_eq!(
        page["notifications"][0]["created_at"],
        receipts[0]["created_at"]
    );
}

async fn a_thousand_recipients_in_one_transaction(b: Backend) {
    let app = spawn_app(b).await;
    let users: Vec<String> = (0..1000).map(|i| format!("u{i:04}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let body = app.publish(&sample(&refs)).await;
    assert_eq!(body["notifications"].as_array().unwrap().len(), 1000);
    assert_eq!(body["notifications"][999]["recipient"], "u0999");
    assert_eq!(app.unread("u0500").await, json!({"unread": 1, "seq": 1}));
}

/// Postgres cannot store U+0000 in `text` or `jsonb` (it was a 500 there and stored on
/// SQLite): every string of a publish refuses it with a 422 naming the field, on both.
async fn nul_is_refused_in_every_string(b: Backend) {
    let app = spawn_app(b).await;
    let nul = "a\u{0}b";
    let cases = [
        ("title", with("title", json!(nul)), "title"),
        ("body", with("body", json!(nul)), "body"),
        (
            "link",
            with("link", json!("https://shop.example/a\u{0}b")),
            "link",
        ),
        ("data value", with("data", json!({ "k": nul })), "data"),
        ("data key", with("data", json!({ nul: 1 })), "data"),
        (
            "nested data value",
            with(
                "data",
                json!({"order": {"lines": [{"sku": "ok"}, {"sku": nul}]}}),
            ),
            "data",
        ),
        (
            "nested data key",
            with("data", json!({"order": {"lines": [{ nul: "x" }]}})),
            "data",
        ),
        ("type", with("type", json!(nul)), "type"),
        (
            "recipient",
            with("recipients", json!([nul])),
            "recipients[0]",
        ),
        (
            "topic",
            json!({"topic": nul, "type": "a", "title": "t"}),
            "topic",
        ),
    ];
    for (what, body, field) in cases {
        let resp = app
            .publish_raw(&service_token("billing"), &body, None)
            .await;
        assert_eq!(resp.status(), 422, "NUL in {what}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(
            problem_fields(&problem),
            [field],
            "NUL in {what}: {problem}"
        );
        if field != "type" && !field.starts_with("recipients") && field != "topic" {
            let message = problem["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains("NUL"), "NUL in {what}: {message}");
        }
    }
    assert_eq!(app.unread("alice").await["seq"], 0, "nothing was stored");
    let problem: Value = app
        .publish_raw(
            &service_token("billing"),
            &with("data", json!({"order": {"lines": [{"sku": nul}]}})),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.ends_with("at /order/lines/0/sku"), "{message}");

    // The six characters `\u0000` spelled out are ordinary text, and round-trip.
    let spelled = r"a\u0000b";
    let mut body = with("data", json!({ spelled: spelled }));
    body["title"] = json!(spelled);
    app.publish(&body).await;
    let page = app.list("alice", "").await;
    assert_eq!(page["notifications"][0]["title"], spelled);
    assert_eq!(page["notifications"][0]["data"][spelled], spelled);
}

/// `null` means absent for `topic` and `recipients` as for every optional field, as the
/// document says: a client that sends all its fields, unset ones as `null`, can publish.
async fn null_topic_or_recipients_is_absent(b: Backend) {
    let app = spawn_app(b).await;
    let mut body = sample(&["alice"]);
    body["topic"] = Value::Null;
    let receipts = app.publish(&body).await;
    assert_eq!(receipts["notifications"][0]["recipient"], "alice");

    let resp = app
        .client
        .put(app.url("/v1/topics/news/subscribers/bob"))
        .bearer_auth(service_token("billing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let sent = app
        .publish(&json!({"topic": "news", "recipients": null, "type": "news.item", "title": "t"}))
        .await;
    assert_eq!(sent, json!({"topic": "news", "recipients": 1, "muted": 0}));
    // Both null is neither.
    let both_null = json!({"topic": null, "recipients": null, "type": "a", "title": "t"});
    rejects(b, both_null, 422, "recipients").await;
}

crate::both_backends!(
    nul_is_refused_in_every_string,
    null_topic_or_recipients_is_absent,
    recipients_required,
    recipients_not_empty,
    recipients_at_most_1000,
    recipient_id_alphabet,
    recipient_id_length,
    recipient_must_be_string,
    type_required,
    type_alphabet,
    type_length,
    title_required,
    title_not_empty,
    title_length,
    body_length,
    data_must_be_object,
    data_at_most_16k,
    link_absolute,
    link_http_only,
    link_length,
    unknown_fields_are_named,
    invalid_json_is_400,
    body_over_64k_is_413,
    publish_returns_one_receipt_per_distinct_recipient,
    a_thousand_recipients_in_one_transaction,
);
