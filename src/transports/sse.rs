//! Server-Sent Events: `GET /v1/notifications/stream`.

use super::stream::{stream_response, EventStream, Format};
use crate::domain::{Counts, Cursor, Seq};
use crate::http::error::ApiError;
use crate::http::extract::cursor_param;
use crate::http::extract::{query_map, StreamUser};
use crate::http::AppState;
use crate::metrics::Transport;
use actix_web::{web, HttpRequest, HttpResponse};
use std::fmt::Write;

/// One Server-Sent Event, as an EventSource (or any SSE parser) hands it over.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// `notification`, `unread`, `changed`, `resync`, `truncated`, `ahead` or `token-expired`.
    #[schema(pattern = "^(notification|unread|changed|resync|truncated|ahead|token-expired)$")]
    event: String,
    /// JSON: the notification; `{"unread":n,"seq":s}`; for `changed`,
    /// `{"change":"archived"|"unarchived"|"deleted","ids":[…],"seqs":[…],"unread":n,"seq":s}`;
    /// `{"seq":s}` to resync from; `{"floor":f}` (retention removed every seq up to f before
    /// the client saw it; the replay that follows starts at the oldest kept one); for `ahead`,
    /// `{"seq":s}` (the cursor was above the latest seq s: the stream goes on from s); or `{}`.
    data: String,
    /// The seq to resume from (`Last-Event-ID`), on `notification`, `unread`, `truncated` and `ahead`.
    #[schema(pattern = "^[0-9]+$")]
    id: Option<String>,
}

/// Stream the caller's notifications as Server-Sent Events.
///
/// Replays every notification after the cursor (`Last-Event-ID` wins over `after`), then
/// streams new ones as they commit. Events: `notification` (id = seq), `unread`, `changed`
/// (notifications archived, unarchived or deleted, by any tab or by their service; an
/// `unread` follows), `resync`, `truncated` (first, when the cursor is below the history
/// floor), `ahead` (first, when the cursor is above the latest seq), `token-expired`; a `: ping` comment every heartbeat.
#[utoipa::path(
    get, path = "/v1/notifications/stream", tag = "live",
    params(
        ("after" = Option<i64>, Query, nullable = false, minimum = 0, description = "The last seq the client has seen; 0 replays from the oldest. Omitted: only new notifications."),
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "Sent by EventSource on reconnect; wins over `after`."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, when a header cannot be set (EventSource, WebSocket and iframe cannot)."),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = SseEvent, description = "The event stream: a `retry` first, then events, with a `: ping` comment every heartbeat."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "A bad `after` or `Last-Event-ID`."),
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
    // `after` is checked even when `Last-Event-ID` wins over it: a bad parameter is a 400.
    let after = cursor_param(&query_map(&req)?)?;
    let cursor = match req.headers().get("Last-Event-ID") {
        Some(v) => match v.to_str().ok().and_then(|s| Seq::parse(s.trim()).ok()) {
            Some(seq) => Cursor::After(seq),
            _ => {
                return Err(ApiError::bad_field(
                    "Last-Event-ID",
                    "must be a seq: a whole number, 0 or more",
                ))
            }
        },
        None => after,
    };
    let user = user.0;
    let conn = state
        .hub
        .connect(&user.user, cursor, Transport::Sse)
        .await?;
    Ok(
        stream_response("text/event-stream").streaming(EventStream::new(
            Sse,
            conn,
            state.heartbeat,
            user.expires_at,
        )),
    )
}

/// The `text/event-stream` wire format.
pub struct Sse;

impl Format for Sse {
    fn open(&self, out: &mut String) {
        out.push_str("retry: 3000\n\n");
    }

    fn notification(&self, out: &mut String, seq: Seq, json: &str) {
        let _ = write!(out, "event: notification\nid: {seq}\ndata: {json}\n\n");
    }

    fn unread(&self, out: &mut String, counts: &Counts, last: Seq) {
        let _ = write!(
            out,
            "event: unread\nid: {last}\ndata: {{\"unread\":{},\"seq\":{}}}\n\n",
            counts.unread, counts.seq
        );
    }

    fn changed(&self, out: &mut String, json: &str) {
        // No `id`: a change is not a place in the stream to resume from.
        let _ = write!(out, "event: changed\ndata: {json}\n\n");
    }

    fn preferences(&self, out: &mut String, json: &str) {
        let _ = write!(out, "event: preferences\ndata: {json}\n\n");
    }

    fn resync(&self, out: &mut String, seq: Seq) {
        let _ = write!(out, "event: resync\ndata: {{\"seq\":{seq}}}\n\n");
    }

    fn truncated(&self, out: &mut String, floor: Seq) {
        // The floor is a valid place to resume from (nothing at or below it is left), so it
        // is the event's id: a reconnect right after it does not hear it again.
        let _ = write!(
            out,
            "event: truncated\nid: {floor}\ndata: {{\"floor\":{floor}}}\n\n"
        );
    }

    fn ahead(&self, out: &mut String, seq: Seq) {
        // The latest seq is where the client resumes from: the event's id, so a reconnect
        // right after it asks from there.
        let _ = write!(out, "event: ahead\nid: {seq}\ndata: {{\"seq\":{seq}}}\n\n");
    }

    fn token_expired(&self, out: &mut String) {
        out.push_str("event: token-expired\ndata: {}\n\n");
    }

    fn reconnect(&self, out: &mut String) {
        // EventSource reconnects after `retry` ms when the stream ends: soon, and elsewhere.
        out.push_str("retry: 500\n\n");
    }

    fn ping(&self, out: &mut String) {
        out.push_str(": ping\n\n");
    }
}
