//! WebSocket: `GET /v1/ws`, JSON text frames both ways.

use super::is_overflow;
use super::stream::expiry_instant;
use crate::domain::{ChangeKind, UserId};
use crate::http::error::ApiError;
use crate::http::extract::cursor_param;
use crate::http::extract::{query_map, StreamUser};
use crate::http::origin::check_origin;
use crate::http::AppState;
use crate::hub::{Connection, Frame};
use crate::ingest::parse_mark_read;
use crate::metrics::Transport;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use std::time::Duration;
use tokio::time::Instant;

/// The largest message a client may send: a `read` of 1000 ids fits easily.
const MAX_MESSAGE: usize = 64 * 1024;
/// A client that does not take a frame within this long is treated as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// Open a WebSocket for the caller's notifications.
///
/// Server frames: `{"type":"notification","notification":{…}}`, `{"type":"unread","unread":n,"seq":s}`,
/// `{"type":"resync","seq":s}`, `{"type":"truncated","floor":f}` (first, when the cursor is below the
/// history floor), `{"type":"ahead","seq":s}` (first, when the cursor is above the latest seq s: the
/// socket goes on from s), `{"type":"pong"}`, `{"type":"error","detail":"…"}`. Client frames:
/// `{"type":"read","ids":[…]}` or `{"type":"read","up_to":seq}`, and `{"type":"ping"}`. Close codes:
/// 4001 token expired, 4008 too slow (resume with the cursor), 1009 a message over 64 KiB,
/// 1012 server restarting.
#[utoipa::path(
    get, path = "/v1/ws", tag = "live",
    params(
        ("after" = Option<i64>, Query, nullable = false, minimum = 0, description = "The last seq the client has seen; 0 replays from the oldest. Omitted: only new notifications."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, when a header cannot be set (EventSource, WebSocket and iframe cannot)."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "A bad `after`, or not a WebSocket handshake (no `Upgrade: websocket`)."),
        (status = 401, body = crate::http::error::Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = crate::http::error::Problem, content_type = "application/problem+json", description = "Not a user token, or the Origin is not allowed."),
        (status = 429, body = crate::http::error::Problem, content_type = "application/problem+json", description = "This user holds the maximum of connections per user on this replica (TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER); close one, or see Retry-After."),
        (status = 503, body = crate::http::error::Problem, content_type = "application/problem+json", description = "The replica is full or stopping; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn socket(
    state: web::Data<AppState>,
    user: StreamUser,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state.allowed_origins)?;
    let cursor = cursor_param(&query_map(&req)?)?;
    let user = user.0;
    let conn = state
        .hub
        .connect(&user.user, cursor, Transport::WebSocket)
        .await?;
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket handshake: {e}")))?;
    let messages = messages
        .max_frame_size(MAX_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE);
    let task = SocketTask {
        state: state.clone(),
        user: user.user,
        session,
        conn,
        heartbeat: state.heartbeat,
        expires: expiry_instant(user.expires_at),
    };
    actix_web::rt::spawn(task.run(messages));
    Ok(response)
}

struct SocketTask {
    state: web::Data<AppState>,
    user: UserId,
    session: Session,
    conn: Connection,
    heartbeat: Duration,
    expires: Instant,
}

enum End {
    Close(CloseCode, &'static str),
    /// A message over [`MAX_MESSAGE`]: 1009, with a reason that names the limit.
    TooBig,
    Gone,
}

impl SocketTask {
    async fn run(mut self, mut messages: actix_ws::AggregatedMessageStream) {
        let mut ping = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        let expiry = tokio::time::sleep_until(self.expires);
        tokio::pin!(expiry);
        let mut missed_pongs = 0u8;
        let end = loop {
            tokio::select! {
                _ = &mut expiry => break End::Close(CloseCode::Other(CLOSE_TOKEN_EXPIRED), "token expired"),
                frame = self.conn.rx.recv() => match frame {
                    Some(Frame::Shutdown) => break End::Close(CloseCode::Restart, "server restarting"),
                    Some(frame) => {
                        if !self.send_all(render(&frame)).await {
                            break End::Gone;
                        }
                    }
                    None if self.conn.control.overflowed() => {
                        break End::Close(CloseCode::Other(CLOSE_TOO_SLOW), "too slow; reconnect with your cursor")
                    }
                    None => break End::Close(CloseCode::Restart, "session restarted"),
                },
                msg = messages.recv() => match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        // Boxed, so that it is allocated only while a client message is being
                        // handled: `mark_read` goes down to the store, and its future is
                        // kilobytes. Awaited inline it would be part of this task's state, which
                        // every idle socket holds for its lifetime (the idle WebSocket figure in
                        // bench/RESULTS.md).
                        let reply = Box::pin(on_client_message(&self.state, &self.user, &text)).await;
                        if let Some(reply) = reply {
                            if !self.send(reply).await {
                                break End::Gone;
                            }
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if self.session.pong(&bytes).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => missed_pongs = 0,
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        break End::Close(CloseCode::Unsupported, "send JSON text frames")
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | None => break End::Gone,
                    Some(Err(e)) if is_overflow(&e) => break End::TooBig,
                    Some(Err(_)) => break End::Close(CloseCode::Protocol, "protocol error"),
                },
                _ = ping.tick() => {
                    if missed_pongs >= 2 {
                        break End::Close(CloseCode::Away, "missed two pongs");
                    }
                    missed_pongs += 1;
                    if self.session.ping(b"").await.is_err() {
                        break End::Gone;
                    }
                }
            }
        };
        let (code, description) = match end {
            End::Close(code, description) => (code, description.to_owned()),
            End::TooBig => (
                CloseCode::Size,
                format!("message larger than the limit of {MAX_MESSAGE} bytes"),
            ),
            End::Gone => return,
        };
        let reason = CloseReason {
            code,
            description: Some(description),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.session.close(Some(reason))).await;
    }

    async fn send_all(&mut self, texts: Vec<String>) -> bool {
        for text in texts {
            if !self.send(text).await {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, text: String) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.session.text(text)).await,
            Ok(Ok(()))
        )
    }
}

/// One client message of the JSON protocol, and the reply to send, if any. Shared with
/// the same protocol over SockJS.
pub async fn on_client_message(state: &AppState, user: &UserId, text: &str) -> Option<String> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(error_frame(&format!("not JSON: {e}"))),
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("ping") => Some(r#"{"type":"pong"}"#.to_owned()),
        Some("read") => match parse_mark_read(&value, &["type"]) {
            // The new count reaches this socket (and every other) through the bus.
            Ok(what) => match state.notifier.mark_read(user, &what).await {
                Ok(_) => None,
                Err(e) => Some(error_frame(&ApiError::from(e).to_string())),
            },
            Err(errors) => {
                let fields: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{} {}", e.field, e.message))
                    .collect();
                Some(error_frame(&fields.join("; ")))
            }
        },
        Some(kind @ ("archive" | "unarchive" | "delete")) => {
            let kind = match kind {
                "archive" => ChangeKind::Archived,
                "unarchive" => ChangeKind::Unarchived,
                _ => ChangeKind::Deleted,
            };
            match parse_mark_read(&value, &["type"]) {
                // The change reaches this socket (and every other) through the bus.
                Ok(what) => match state.notifier.change(user, kind, &what).await {
                    Ok(_) => None,
                    Err(e) => Some(error_frame(&ApiError::from(e).to_string())),
                },
                Err(errors) => {
                    let fields: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{} {}", e.field, e.message))
                        .collect();
                    Some(error_frame(&fields.join("; ")))
                }
            }
        }
        _ => Some(error_frame(
            "unknown message type; send {\"type\":\"read\"|\"archive\"|\"unarchive\"|\"delete\",...} or {\"type\":\"ping\"}",
        )),
    }
}

fn error_frame(detail: &str) -> String {
    serde_json::json!({"type": "error", "detail": detail}).to_string()
}

/// One hub frame as WebSocket messages, one JSON object per text frame.
pub fn render(frame: &Frame) -> Vec<String> {
    match frame {
        Frame::Update(u) => {
            let (notifications, counts) = (&u.notifications, &u.counts);
            let mut out = Vec::with_capacity(notifications.len() + 1);
            for (_, json) in notifications {
                out.push(format!(
                    "{{\"type\":\"notification\",\"notification\":{json}}}"
                ));
            }
            out.push(format!(
                "{{\"type\":\"unread\",\"unread\":{},\"seq\":{}}}",
                counts.unread, counts.seq
            ));
            out
        }
        Frame::Changed(c) => vec![
            super::typed("changed", &c.json),
            format!(
                "{{\"type\":\"unread\",\"unread\":{},\"seq\":{}}}",
                c.counts.unread, c.counts.seq
            ),
        ],
        Frame::Preferences(json) => vec![super::typed("preferences", json)],
        Frame::Resync { seq } => vec![format!("{{\"type\":\"resync\",\"seq\":{seq}}}")],
        Frame::Truncated { floor } => {
            vec![format!("{{\"type\":\"truncated\",\"floor\":{floor}}}")]
        }
        Frame::Ahead { seq } => vec![format!("{{\"type\":\"ahead\",\"seq\":{seq}}}")],
        // The hub retries the read; the socket carries on when it succeeds.
        Frame::Shutdown | Frame::Unavailable => Vec::new(),
    }
}
