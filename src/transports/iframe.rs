//! The hidden-iframe stream: `GET /v1/notifications/stream.html?origin=…`, for browsers
//! and proxies where neither EventSource nor streaming fetch works. The response is an HTML
//! document that never ends; each event is a `<script>` chunk that hands it to the parent
//! page with `postMessage`, addressed to the parent's origin only (never `*`), and only when
//! that origin is allowed.

use super::ndjson::Ndjson;
use super::stream::{stream_response, EventStream, Format};
use crate::domain::{Counts, Seq};
use crate::http::error::ApiError;
use crate::http::extract::cursor_param;
use crate::http::extract::{query_map, StreamUser};
use crate::http::html::{self, script_safe};
use crate::http::origin::check_origin_value;
use crate::http::AppState;
use crate::metrics::Transport;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use std::fmt::Write;

/// Browsers render a partial document only after a first kilobyte or two: this much
/// padding goes out before the first event.
const PADDING: usize = 2048;

pub struct Iframe {
    /// The parent's origin as a JS string literal, escaped for a `<script>` block.
    origin_js: String,
    /// This response's CSP nonce, on each of its `<script>` tags.
    nonce: String,
}

impl Iframe {
    /// Each NDJSON event, posted to the parent by one `<script>` chunk.
    fn post(&self, out: &mut String, render: impl FnOnce(&mut String)) {
        let mut lines = String::new();
        render(&mut lines);
        for event in lines.lines() {
            let _ = writeln!(
                out,
                "<script nonce=\"{}\">p({})</script>",
                self.nonce,
                script_safe(event)
            );
        }
    }
}

impl Format for Iframe {
    fn open(&self, out: &mut String) {
        let _ = write!(
            out,
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tidings</title></head><body>\n\
             <script nonce=\"{}\">var o={};function p(e){{parent.postMessage(e,o)}}</script>\n<!--",
            self.nonce, self.origin_js
        );
        out.extend(std::iter::repeat_n(' ', PADDING));
        out.push_str("-->\n");
    }

    fn notification(&self, out: &mut String, seq: Seq, json: &str) {
        self.post(out, |o| Ndjson.notification(o, seq, json));
    }

    fn unread(&self, out: &mut String, counts: &Counts, last: Seq) {
        self.post(out, |o| Ndjson.unread(o, counts, last));
    }

    fn changed(&self, out: &mut String, json: &str) {
        self.post(out, |o| Ndjson.changed(o, json));
    }

    fn preferences(&self, out: &mut String, json: &str) {
        self.post(out, |o| Ndjson.preferences(o, json));
    }

    fn resync(&self, out: &mut String, seq: Seq) {
        self.post(out, |o| Ndjson.resync(o, seq));
    }

    fn truncated(&self, out: &mut String, floor: Seq) {
        self.post(out, |o| Ndjson.truncated(o, floor));
    }

    fn ahead(&self, out: &mut String, seq: Seq) {
        self.post(out, |o| Ndjson.ahead(o, seq));
    }

    fn token_expired(&self, out: &mut String) {
        self.post(out, |o| Ndjson.token_expired(o));
        out.push_str("</body></html>\n");
    }

    fn reconnect(&self, out: &mut String) {
        self.post(out, |o| Ndjson.reconnect(o));
        out.push_str("</body></html>\n");
    }

    fn ping(&self, out: &mut String) {
        out.push_str("<!-- ping -->\n");
    }
}

/// Stream the caller's notifications into a hidden iframe, as `postMessage` calls to the parent.
#[utoipa::path(
    get, path = "/v1/notifications/stream.html", tag = "live", operation_id = "stream_html",
    params(
        ("origin" = String, Query, description = "The parent page's origin: it must be an allowed origin (or this server's own), and events are posted to it only."),
        ("after" = Option<i64>, Query, nullable = false, minimum = 0, description = "The last seq the client has seen; 0 replays from the oldest. Omitted: only new notifications."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, when a header cannot be set (EventSource, WebSocket and iframe cannot)."),
    ),
    responses(
        (status = 200, content_type = "text/html", body = String, description = "A never-ending HTML document of `<script>` chunks; each calls `parent.postMessage(event, origin)` with the same events as the NDJSON stream."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "A missing `origin` or a bad `after`."),
        (status = 401, body = crate::http::error::Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = crate::http::error::Problem, content_type = "application/problem+json", description = "Not a user token, or the origin is not allowed."),
        (status = 429, body = crate::http::error::Problem, content_type = "application/problem+json", description = "This user holds the maximum of connections per user on this replica (TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER); close one, or see Retry-After."),
        (status = 503, body = crate::http::error::Problem, content_type = "application/problem+json", description = "The replica is full or stopping; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn stream(
    state: web::Data<AppState>,
    user: StreamUser,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_map(&req)?;
    let origin = q.get("origin").ok_or_else(|| {
        ApiError::bad_field(
            "origin",
            "is required: the parent page's origin, such as https://app.example",
        )
    })?;
    let parsed = url::Url::parse(origin)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            ApiError::bad_field("origin", "must be an origin such as https://app.example")
        })?;
    let origin = parsed.origin().ascii_serialization();
    check_origin_value(&req, &origin, &state.allowed_origins)?;
    let cursor = cursor_param(&q)?;
    let user = user.0;
    let conn = state
        .hub
        .connect(&user.user, cursor, Transport::Stream)
        .await?;
    let format = Iframe {
        origin_js: script_safe(&serde_json::to_string(&origin).unwrap_or_default()),
        nonce: html::nonce(),
    };
    // Only this response's own scripts run (an injected one lacks the nonce), and only the
    // parent it posts to may frame it.
    let csp = format!(
        "{}; frame-ancestors {origin}",
        html::nonce_policy(&format.nonce)
    );
    Ok(stream_response("text/html; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, html::NOSNIFF))
        .insert_header((header::CONTENT_SECURITY_POLICY, csp))
        .streaming(EventStream::new(
            format,
            conn,
            state.heartbeat,
            user.expires_at,
        )))
}
