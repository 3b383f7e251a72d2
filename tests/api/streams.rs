//! HTTP streaming (NDJSON) and the hidden-iframe stream: the SSE machinery in other wire
//! formats, so the same cursor rules: replay after the cursor, then live, no gap, no duplicate.

use crate::helpers::{
    iframe_line, sample, spawn_app, spawn_app_with, spawn_app_with_history, user_token, Backend,
    SlowLatest, TestApp,
};
use crate::live::LATE_START;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;
use tidings_test_support::live::WAIT;

/// One open stream, read line by line; each wait is bounded by [`WAIT`].
struct Lines {
    body: BoxStream<'static, reqwest::Result<String>>,
    text: String,
    parse: fn(&str) -> Option<Value>,
}

impl Lines {
    /// Opens `path` as alice; returns once the response headers are in.
    async fn open(app: &TestApp, path: &str, parse: fn(&str) -> Option<Value>) -> Lines {
        let resp = app
            .client
            .get(app.url(path))
            .bearer_auth(user_token("alice"))
            .send()
            .await
            .expect("stream request");
        assert_eq!(resp.status(), 200, "{path}");
        Lines {
            body: resp
                .bytes_stream()
                .map(|chunk| chunk.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .boxed(),
            text: String::new(),
            parse,
        }
    }

    /// The next event; panics when none comes within [`WAIT`] or the stream ends.
    async fn next(&mut self) -> Value {
        let read = async {
            loop {
                while let Some(end) = self.text.find('\n') {
                    let line: String = self.text.drain(..=end).collect();
                    if let Some(event) = (self.parse)(line.trim()) {
                        return event;
                    }
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("stream ended early")
                    .expect("stream chunk");
                self.text.push_str(&chunk);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("no event within {WAIT:?}"))
    }

    /// The seqs of the next `n` notifications, skipping other events.
    async fn seqs(&mut self, n: usize) -> Vec<i64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let event = self.next().await;
            if event["type"] == "notification" {
                seqs.push(event["notification"]["seq"].as_i64().expect("seq"));
            }
        }
        seqs
    }
}

fn ndjson_line(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

async fn publish_n(app: &TestApp, n: usize) {
    for _ in 0..n {
        app.publish(&sample(&["alice"])).await;
    }
}

async fn ndjson_resumes_by_cursor(b: Backend) {
    let app = spawn_app(b).await;
    publish_n(&app, 3).await;
    let mut stream =
        Lines::open(&app, "/v1/notifications/stream.ndjson?after=0", ndjson_line).await;
    assert_eq!(stream.seqs(3).await, [1, 2, 3]);
    drop(stream);
    publish_n(&app, 2).await;
    // Reconnect from the cursor: exactly what was missed, then live.
    let mut stream =
        Lines::open(&app, "/v1/notifications/stream.ndjson?after=3", ndjson_line).await;
    assert_eq!(stream.seqs(2).await, [4, 5]);
    publish_n(&app, 1).await;
    assert_eq!(stream.seqs(1).await, [6]);
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
    let mut stream = Lines::open(&app, &path(0), iframe_line).await;
    assert_eq!(stream.seqs(3).await, [1, 2, 3]);
    drop(stream);
    publish_n(&app, 2).await;
    let mut stream = Lines::open(&app, &path(2), iframe_line).await;
    assert_eq!(stream.seqs(3).await, [3, 4, 5]);
    publish_n(&app, 1).await;
    assert_eq!(stream.seqs(1).await, [6]);
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
    // Only the response's own scripts run, and only that origin may frame it.
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'nonce-"),
        "{csp}"
    );
    assert!(
        csp.ends_with("; frame-ancestors https://app.example"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // The opening: padding for the browser, and postMessage addressed to that origin alone.
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("the opening within WAIT")
        .expect("the opening")
        .expect("the opening");
    let first = String::from_utf8_lossy(&first);
    assert!(first.len() > 2048, "padding before the first event");
    assert!(first.contains(r#"var o="https://app.example";function p(e){parent.postMessage(e,o)}"#));
    // A title cannot close the script block early.
    let mut hostile = sample(&["alice"]);
    hostile["title"] = "</script><script>alert(1)</script>\u{2028}&>".into();
    app.publish(&hostile).await;
    let mut rest = String::new();
    let read = async {
        while !rest.contains(r#""type":"notification""#) {
            let chunk = body.next().await.expect("stream ended").unwrap();
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the notification arrives");
    assert!(!rest.contains("</script><script>"), "{rest}");
    assert!(rest.contains(r"\u003c/script\u003e"), "{rest}");
    assert!(rest.contains(r"\u2028\u0026\u003e"), "{rest}");
}

/// "Only new notifications" starts no later than the moment the client sees the stream open:
/// a notification published as soon as the opening arrives (the response headers; for the
/// iframe, its padding) is delivered, even when the hub's read of the latest seq runs late.
/// A second one follows the first count, so a lost first one fails at once.
async fn no_cursor_starts_no_later_than_the_opening(
    path: &str,
    parse: fn(&str) -> Option<Value>,
    b: Backend,
) {
    let app = spawn_app_with_history(
        b,
        |s| s.server.allowed_origins = vec!["https://app.example".into()],
        SlowLatest::layer(LATE_START),
    )
    .await;
    let mut stream = Lines::open(&app, path, parse).await;
    app.publish(&sample(&["alice"])).await;
    let mut seqs = Vec::new();
    let mut second = false;
    while !seqs.contains(&2) {
        let event = stream.next().await;
        match event["type"].as_str() {
            Some("notification") => seqs.push(event["notification"]["seq"].as_i64().expect("seq")),
            Some("unread") if !second => {
                second = true;
                app.publish(&sample(&["alice"])).await;
            }
            _ => {}
        }
    }
    assert_eq!(seqs, [1, 2], "seq 1 committed after {path} was open");
}

async fn no_cursor_starts_no_later_than_the_ndjson_stream_opens(b: Backend) {
    no_cursor_starts_no_later_than_the_opening("/v1/notifications/stream.ndjson", ndjson_line, b)
        .await
}

async fn no_cursor_starts_no_later_than_the_iframe_padding(b: Backend) {
    no_cursor_starts_no_later_than_the_opening(
        "/v1/notifications/stream.html?origin=https://app.example",
        iframe_line,
        b,
    )
    .await
}

crate::both_backends!(
    ndjson_resumes_by_cursor,
    iframe_resumes_by_cursor,
    iframe_posts_only_to_an_allowed_origin,
    no_cursor_starts_no_later_than_the_ndjson_stream_opens,
    no_cursor_starts_no_later_than_the_iframe_padding,
);
