//! HTTP streaming (NDJSON) and the hidden-iframe stream: the SSE machinery in other wire
//! formats, so the same cursor rules: replay after the cursor, then live, no gap, no duplicate.

use crate::helpers::{sample, spawn_app, spawn_app_with, user_token, Backend, TestApp};
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// Reads a stream until `want` notifications have arrived; returns their seqs, in order.
async fn read_seqs(
    app: &TestApp,
    path: &str,
    want: usize,
    parse: fn(&str) -> Option<Value>,
) -> Vec<i64> {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(user_token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut seqs = Vec::new();
    let read = async {
        while seqs.len() < want {
            let chunk = body.next().await.expect("stream ended early").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                if let Some(event) = parse(line.trim()) {
                    if event["type"] == "notification" {
                        seqs.push(event["notification"]["seq"].as_i64().unwrap());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("timed out reading the stream");
    seqs
}

fn ndjson_line(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

/// `<script>p({...})</script>` → the event.
fn iframe_line(line: &str) -> Option<Value> {
    let json = line
        .strip_prefix("<script>p(")?
        .strip_suffix(")</script>")?;
    serde_json::from_str(json).ok()
}

async fn publish_n(app: &TestApp, n: usize) {
    for _ in 0..n {
        app.publish(&sample(&["alice"])).await;
    }
}

async fn ndjson_resumes_by_cursor(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, 3).await;
    assert_eq!(
        read_seqs(
            &app,
            "/v1/notifications/stream.ndjson?after=0",
            3,
            ndjson_line
        )
        .await,
        [1, 2, 3]
    );
    publish_n(&app, 2).await;
    // Reconnect from the cursor: exactly what was missed, then live.
    let live = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_n(&app, 1).await;
    };
    let (seqs, ()) = futures::join!(
        read_seqs(
            &app,
            "/v1/notifications/stream.ndjson?after=3",
            3,
            ndjson_line
        ),
        live
    );
    assert_eq!(seqs, [4, 5, 6]);
}

async fn iframe_resumes_by_cursor(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    publish_n(&app, 3).await;
    let path = |after: i64| {
        format!("/v1/notifications/stream.html?origin=https://app.example&after={after}")
    };
    assert_eq!(read_seqs(&app, &path(0), 3, iframe_line).await, [1, 2, 3]);
    publish_n(&app, 2).await;
    let live = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_n(&app, 1).await;
    };
    let resume = path(2);
    let (seqs, ()) = futures::join!(read_seqs(&app, &resume, 4, iframe_line), live);
    assert_eq!(seqs, [3, 4, 5, 6]);
}

async fn iframe_posts_only_to_an_allowed_origin(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.server.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let token = user_token("alice");
    let get = |path: String| {
        let req = app.client.get(app.url(&path)).bearer_auth(&token);
        async move { req.send().await.unwrap() }
    };
    let resp = get("/v1/notifications/stream.html?origin=https://evil.example".into()).await;
    assert_eq!(resp.status(), 403);
    let resp = get("/v1/notifications/stream.html".into()).await;
    assert_eq!(resp.status(), 400);
    let resp = get("/v1/notifications/stream.html?origin=https://app.example".into()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-security-policy"],
        "frame-ancestors https://app.example"
    );
    // The opening: padding for the browser, and postMessage addressed to that origin alone.
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.len() > 2048, "padding before the first event");
    assert!(first.contains(r#"var o="https://app.example";function p(e){parent.postMessage(e,o)}"#));
    // A title cannot close the script block early.
    let mut hostile = sample(&["alice"]);
    hostile["title"] = "</script><script>alert(1)</script>".into();
    app.publish(&hostile).await;
    let mut rest = String::new();
    let read = async {
        while !rest.contains(r#""type":"notification""#) {
            let chunk = body.next().await.expect("stream ended").unwrap();
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the notification arrives");
    assert!(!rest.contains("</script><script>"), "{rest}");
    assert!(rest.contains(r"\u003c/script>"), "{rest}");
}

crate::both_backends!(
    ndjson_resumes_by_cursor,
    iframe_resumes_by_cursor,
    iframe_posts_only_to_an_allowed_origin
);
