//! HTTP streaming as newline-delimited JSON: `GET /v1/notifications/stream.ndjson`, for
//! fetch/XHR-streaming clients and for scripts (`curl -N`). Same cursor rules as SSE.

use super::stream::{stream_response, EventStream, Format};
use super::typed;
use crate::domain::{Counts, Seq};
use crate::http::error::ApiError;
use crate::http::extract::cursor_param;
use crate::http::extract::{query_map, StreamUser};
use crate::http::AppState;
use crate::metrics::Transport;
use actix_web::{web, HttpRequest, HttpResponse};
use std::fmt::Write;

/// One JSON object per line: `{"type":"notification","notification":{…}}`,
/// `{"type":"unread","unread":n,"seq":s,"last":l}`,
/// `{"type":"changed","change":"archived"|"unarchived"|"deleted","ids":[…],"seqs":[…],"unread":n,"seq":s}`
/// (followed by an `unread`), `{"type":"resync","seq":s}`, `{"type":"truncated","floor":f}`,
/// `{"type":"ahead","seq":s}`,
/// `{"type":"token-expired"}`, `{"type":"reconnect"}`, `{"type":"ping"}`.
pub struct Ndjson;

impl Format for Ndjson {
    fn open(&self, _: &mut String) {}

    fn notification(&self, out: &mut String, _: Seq, json: &str) {
        let _ = writeln!(out, "{{\"type\":\"notification\",\"notification\":{json}}}");
    }

    fn unread(&self, out: &mut String, counts: &Counts, last: Seq) {
        let _ = writeln!(
            out,
            "{{\"type\":\"unread\",\"unread\":{},\"seq\":{},\"last\":{last}}}",
            counts.unread, counts.seq
        );
    }

    fn changed(&self, out: &mut String, json: &str) {
        let _ = writeln!(out, "{}", typed("changed", json));
    }

    fn preferences(&self, out: &mut String, json: &str) {
        let _ = writeln!(out, "{}", typed("preferences", json));
    }

    fn resync(&self, out: &mut String, seq: Seq) {
        let _ = writeln!(out, "{{\"type\":\"resync\",\"seq\":{seq}}}");
    }

    fn truncated(&self, out: &mut String, floor: Seq) {
        let _ = writeln!(out, "{{\"type\":\"truncated\",\"floor\":{floor}}}");
    }

    fn ahead(&self, out: &mut String, seq: Seq) {
        let _ = writeln!(out, "{{\"type\":\"ahead\",\"seq\":{seq}}}");
    }

    fn token_expired(&self, out: &mut String) {
        out.push_str("{\"type\":\"token-expired\"}\n");
    }

    fn reconnect(&self, out: &mut String) {
        out.push_str("{\"type\":\"reconnect\"}\n");
    }

    fn ping(&self, out: &mut String) {
        out.push_str("{\"type\":\"ping\"}\n");
    }
}

/// Stream the caller's notifications as newline-delimited JSON.
#[utoipa::path(
    get, path = "/v1/notifications/stream.ndjson", tag = "live", operation_id = "stream_ndjson",
    params(
        ("after" = Option<i64>, Query, nullable = false, minimum = 0, description = "The last seq the client has seen; 0 replays from the oldest. Omitted: only new notifications."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, when a header cannot be set (EventSource, WebSocket and iframe cannot)."),
    ),
    responses(
        (status = 200, content_type = "application/x-ndjson", body = String, description = "One JSON event per line."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "A bad `after`."),
        (status = 401, body = crate::http::error::Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = crate::http::error::Problem, content_type = "application/problem+json", description = "Not a user token."),
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
    let cursor = cursor_param(&query_map(&req)?)?;
    let user = user.0;
    let conn = state
        .hub
        .connect(&user.user, cursor, Transport::Stream)
        .await?;
    let body = EventStream::new(Ndjson, conn, state.heartbeat, user.expires_at);
    Ok(stream_response("application/x-ndjson").streaming(body))
}
