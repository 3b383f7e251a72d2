//! Server-Sent Events: `GET /v1/notifications/stream`.

use super::cursor_param;
use crate::api::error::ApiError;
use crate::api::extract::{query_map, StreamUser};
use crate::api::AppState;
use crate::domain::{Cursor, Seq};
use crate::hub::{Connection, Frame};
use crate::metrics::Transport;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::Stream;
use std::convert::Infallible;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Interval, Sleep};

/// Frames rendered into one chunk at most, so a burst goes out in few writes.
const CHUNK: usize = 16 * 1024;

/// Stream the caller's notifications as Server-Sent Events.
///
/// Replays every notification after the cursor (`Last-Event-ID` wins over `after`), then
/// streams new ones as they commit. Events: `notification` (id = seq), `unread`, `resync`,
/// `token-expired`; a `: ping` comment every heartbeat.
#[utoipa::path(
    get, path = "/v1/notifications/stream", tag = "live",
    params(
        ("after" = Option<i64>, Query, description = "The last seq the client has seen; 0 replays from the oldest. Omitted: only new notifications."),
        ("Last-Event-ID" = Option<i64>, Header, description = "Sent by EventSource on reconnect; wins over `after`."),
        ("access_token" = Option<String>, Query, description = "The user token, for EventSource, which cannot set headers."),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "The event stream."),
        (status = 400, body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = crate::api::error::Problem, content_type = "application/problem+json", description = "The replica is full or stopping; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn stream(
    state: web::Data<AppState>,
    user: StreamUser,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_map(&req)?;
    let cursor = match req.headers().get("Last-Event-ID") {
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<Seq>().ok()) {
            Some(seq) if seq >= 0 => Cursor::After(seq),
            _ => {
                return Err(ApiError::bad_field(
                    "Last-Event-ID",
                    "must be a seq: a whole number, 0 or more",
                ))
            }
        },
        None => cursor_param(&q)?,
    };
    let user = user.0;
    let conn = state.hub.connect(&user.user, cursor, Transport::Sse)?;
    let heartbeat = state.heartbeat;
    let body = SseStream {
        conn,
        opened: false,
        done: false,
        counts_seq: 0,
        ping: tokio::time::interval_at(Instant::now() + heartbeat, heartbeat),
        expiry: Box::pin(tokio::time::sleep_until(expiry_instant(user.expires_at))),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// When a token's `exp` (Unix seconds) passes, as a timer deadline.
pub fn expiry_instant(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.clamp(0, 10 * 365 * 86_400) as u64)
}

/// The response body: polls the connection's queue, the heartbeat and the token's expiry.
/// A hand-written stream rather than an async block, to keep an idle connection small.
struct SseStream {
    conn: Connection,
    opened: bool,
    done: bool,
    /// The user's latest seq as last told: what a `resync` points to.
    counts_seq: Seq,
    ping: Interval,
    expiry: Pin<Box<Sleep>>,
}

impl SseStream {
    fn end(&mut self, last: &str) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.done = true;
        Poll::Ready(Some(Ok(Bytes::copy_from_slice(last.as_bytes()))))
    }
}

fn write_frame(out: &mut String, frame: &Frame, counts_seq: &mut Seq) {
    match frame {
        Frame::Update {
            notifications,
            counts,
            last,
        } => {
            for (seq, json) in notifications {
                let _ = write!(out, "event: notification\nid: {seq}\ndata: {json}\n\n");
            }
            *counts_seq = counts.seq;
            let _ = write!(
                out,
                "event: unread\nid: {last}\ndata: {{\"unread\":{},\"seq\":{}}}\n\n",
                counts.unread, counts.seq
            );
        }
        Frame::Resync { seq } => {
            *counts_seq = *seq;
            let _ = write!(out, "event: resync\ndata: {{\"seq\":{seq}}}\n\n");
        }
        Frame::Shutdown => {}
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.opened {
            this.opened = true;
            return Poll::Ready(Some(Ok(Bytes::from_static(b"retry: 3000\n\n"))));
        }
        if this.conn.control.overflowed() {
            // Cut off for reading too slowly: say where to resume, if it can still be written.
            let seq = this.counts_seq;
            return this.end(&format!("event: resync\ndata: {{\"seq\":{seq}}}\n\n"));
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            return this.end("event: token-expired\ndata: {}\n\n");
        }
        let mut out = String::new();
        loop {
            match this.conn.rx.poll_recv(cx) {
                Poll::Ready(Some(Frame::Shutdown)) => {
                    // Reconnect soon, to another replica.
                    out.push_str("retry: 500\n\n");
                    return this.end(&out);
                }
                Poll::Ready(Some(frame)) => {
                    write_frame(&mut out, &frame, &mut this.counts_seq);
                    if out.len() >= CHUNK {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    if !out.is_empty() {
                        break;
                    }
                    if this.conn.control.overflowed() {
                        let seq = this.counts_seq;
                        return this.end(&format!("event: resync\ndata: {{\"seq\":{seq}}}\n\n"));
                    }
                    // The session went away (it restarted): end so the client resumes.
                    return this.end("retry: 500\n\n");
                }
                Poll::Pending => break,
            }
        }
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
        if this.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(b": ping\n\n"))));
        }
        Poll::Pending
    }
}
