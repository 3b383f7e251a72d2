//! WebSocket: `GET /v1/ws`, JSON text frames both ways.
//!
//! The socket is the body of its own 101 response: one hand-written [`Stream`],
//! [`Socket`], that the HTTP/1 dispatcher polls in the connection's task, as it polls SSE's
//! [`EventStream`](super::stream::EventStream). It reads and decodes the client's frames
//! from the request payload, which the same dispatcher feeds (so both directions are driven
//! by one task, as actix-web-actors' WebSocket context was), polls the hub connection, the
//! heartbeat and the token's expiry, and yields the encoded frames as the body's bytes.
//!
//! Why not a spawned task with a session queue (actix-ws' `handle`, as STOMP and SockJS
//! use): nearly every socket is idle, and there an idle socket held a second task (its
//! future about 1.6 KiB), the session's queue and a oneshot besides the connection's own
//! state (bench/RESULTS.md, idle WebSocket). Here an idle socket is this struct and its two
//! timers, and nothing is allocated for a client message except while one is answered.
//!
//! Backpressure: the dispatcher polls the body only while its write buffer has room, so a
//! client that stops reading stops this stream; the hub's bounded per-connection queue then
//! overflows and cuts it off, and the stream ends with 4008 once it is polled again, as SSE
//! does. The payload is polled only while no client message is being answered, so a client
//! that floods the socket is held back by the dispatcher's bounded read buffers.

use super::stream::{Tick, Timers};
use crate::domain::ChangeKind;
use crate::domain::UserId;
use crate::http::error::ApiError;
use crate::http::extract::cursor_param;
use crate::http::extract::{query_map, StreamUser};
use crate::http::origin::check_origin;
use crate::http::AppState;
use crate::hub::{Connection, Frame};
use crate::ingest::parse_mark_read;
use crate::metrics::Transport;
use actix_http::ws::{
    CloseCode, CloseReason, Codec, Frame as WsFrame, Item, OpCode, Parser, ProtocolError,
};
use actix_web::body::{BodyStream, BoxBody};
use actix_web::dev::Payload;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::Stream;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::codec::Decoder;

/// The largest message a client may send, one frame or continuations together: a `read` of
/// 1000 ids fits easily.
const MAX_MESSAGE: usize = 64 * 1024;
/// Frames encoded into one chunk of the body at most, so a burst goes out in few writes
/// (as [`EventStream`](super::stream::EventStream)'s chunk).
const CHUNK: usize = 16 * 1024;

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
    // The handshake is checked before a hub place is taken for a request that is not one.
    let mut response = actix_http::ws::handshake(req.head())
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket handshake: {e}")))?;
    let user = user.0;
    let conn = state
        .hub
        .connect(&user.user, cursor, Transport::WebSocket)
        .await?;
    let socket = Socket::new(
        state.clone(),
        conn,
        body.into_inner(),
        state.heartbeat,
        user.expires_at,
    );
    let response = response
        .message_body(BoxBody::new(BodyStream::new(socket)))
        .map_err(|e| ApiError::Internal(format!("the WebSocket response: {e}").into()))?;
    Ok(HttpResponse::from(response))
}

/// An answer to a client message, boxed: `mark_read` goes down to the store and its future
/// is kilobytes, which an idle socket should not carry.
type Answer = Pin<Box<dyn Future<Output = Option<String>>>>;

/// One WebSocket, from the 101 to the close: the response body (see the module's doc).
pub struct Socket {
    state: web::Data<AppState>,
    conn: Connection,
    /// The client's bytes, as the dispatcher reads them.
    payload: Payload,
    codec: Codec,
    /// Read and not yet decoded: less than one frame. Emptied (no allocation) when idle.
    read: BytesMut,
    /// The fragments so far of a message sent in continuation frames (at most
    /// [`MAX_MESSAGE`]); empty, with no allocation, between messages.
    fragments: BytesMut,
    fragments_text: bool,
    /// The client message being answered. While one is, no further client frame is
    /// decoded: one message at a time, in order, bounds what a client makes the server do.
    answering: Option<Answer>,
    /// A close decided while an answer was in flight: written once the answer is (a `read`
    /// that committed also announces the new counts on the bus; cutting it off between the
    /// two would leave the user's other tabs with a stale count).
    ending: Option<End>,
    timers: Timers,
    missed_pongs: u8,
    done: bool,
}

/// How a socket ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Close(CloseCode, &'static str),
    /// A message over [`MAX_MESSAGE`]: 1009, with a reason that names the limit.
    TooBig,
    /// The client sent Close: the same code back, then the end.
    Echo(Option<CloseCode>),
    /// The client is gone: nothing more to write.
    Gone,
}

/// One client message, decoded and put together from its fragments.
enum Incoming {
    Text(Bytes),
    Binary,
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
    TooBig,
    Invalid,
    Gone,
}

impl Socket {
    fn new(
        state: web::Data<AppState>,
        conn: Connection,
        payload: Payload,
        heartbeat: Duration,
        expires_at: i64,
    ) -> Self {
        Self {
            state,
            conn,
            payload,
            codec: Codec::new().max_size(MAX_MESSAGE),
            read: BytesMut::new(),
            fragments: BytesMut::new(),
            fragments_text: false,
            answering: None,
            ending: None,
            timers: Timers::new(heartbeat, expires_at),
            missed_pongs: 0,
            done: false,
        }
    }

    /// Everything that is ready, written to `out`; `Some` when the socket ends.
    fn step(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Option<End> {
        if let Some(answer) = self.answering.as_mut() {
            if let Poll::Ready(reply) = answer.as_mut().poll(cx) {
                self.answering = None;
                if let Some(reply) = reply {
                    text(out, &reply);
                }
            }
        }
        if let Some(end) = self.ending {
            return self.answering.is_none().then_some(end);
        }
        let end = self.poll_sources(cx, out)?;
        if self.answering.is_some() && !matches!(end, End::Gone) {
            self.ending = Some(end);
            return None;
        }
        Some(end)
    }

    fn poll_sources(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Option<End> {
        if let Some(end) = self.poll_client(cx, out) {
            return Some(end);
        }
        let tick = self.timers.poll_tick(cx);
        if tick == Poll::Ready(Tick::Expired) {
            return Some(End::Close(
                CloseCode::Other(CLOSE_TOKEN_EXPIRED),
                "token expired",
            ));
        }
        while out.len() < CHUNK {
            match self.conn.rx.poll_recv(cx) {
                Poll::Ready(Some(Frame::Shutdown)) => {
                    return Some(End::Close(CloseCode::Restart, "server restarting"))
                }
                Poll::Ready(Some(frame)) => {
                    for json in render(&frame) {
                        text(out, &json);
                    }
                }
                // Cut off by the hub for reading too slowly, after what was queued.
                Poll::Ready(None) if self.conn.control.overflowed() => {
                    return Some(End::Close(
                        CloseCode::Other(CLOSE_TOO_SLOW),
                        "too slow; reconnect with your cursor",
                    ))
                }
                Poll::Ready(None) => {
                    return Some(End::Close(CloseCode::Restart, "session restarted"))
                }
                Poll::Pending => break,
            }
        }
        if tick == Poll::Ready(Tick::Ping) {
            if self.missed_pongs >= 2 {
                return Some(End::Close(CloseCode::Away, "missed two pongs"));
            }
            self.missed_pongs += 1;
            Parser::write_message(out, b"", OpCode::Ping, true, false);
        }
        None
    }

    /// The client's messages, while none is being answered and `out` has room.
    fn poll_client(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Option<End> {
        while self.answering.is_none() && out.len() < CHUNK {
            let Poll::Ready(incoming) = self.poll_incoming(cx) else {
                return None;
            };
            match incoming {
                Incoming::Text(bytes) => {
                    let Ok(message) = String::from_utf8(Vec::from(bytes)) else {
                        return Some(End::Close(CloseCode::Protocol, "protocol error"));
                    };
                    let (state, user) = (self.state.clone(), self.conn.user().clone());
                    let mut answer: Answer =
                        Box::pin(async move { on_client_message(&state, &user, &message).await });
                    match answer.as_mut().poll(cx) {
                        Poll::Ready(Some(reply)) => text(out, &reply),
                        Poll::Ready(None) => {}
                        Poll::Pending => self.answering = Some(answer),
                    }
                }
                Incoming::Ping(bytes) => {
                    Parser::write_message(out, bytes, OpCode::Pong, true, false)
                }
                Incoming::Pong => self.missed_pongs = 0,
                Incoming::Binary => {
                    return Some(End::Close(CloseCode::Unsupported, "send JSON text frames"))
                }
                Incoming::Close(reason) => return Some(End::Echo(reason.map(|r| r.code))),
                Incoming::TooBig => return Some(End::TooBig),
                Incoming::Invalid => {
                    return Some(End::Close(CloseCode::Protocol, "protocol error"))
                }
                Incoming::Gone => return Some(End::Gone),
            }
        }
        None
    }

    /// The next whole client message: decoded from what was read, reading more as needed.
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        loop {
            match self.codec.decode(&mut self.read) {
                Ok(Some(frame)) => {
                    if self.read.is_empty() {
                        // Give the read allocation back: the frame holds what it needs.
                        self.read = BytesMut::new();
                    }
                    if let Some(incoming) = self.assemble(frame) {
                        return Poll::Ready(incoming);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(ProtocolError::Overflow) => return Poll::Ready(Incoming::TooBig),
                Err(_) => return Poll::Ready(Incoming::Invalid),
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if self.read.is_empty() {
                        self.read = BytesMut::from(bytes);
                    } else {
                        self.read.extend_from_slice(&bytes);
                    }
                }
                // The connection closed, or broke, without a Close frame.
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Incoming::Gone),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// One decoded frame: a message, or `None` when it is a fragment of one still coming.
    fn assemble(&mut self, frame: WsFrame) -> Option<Incoming> {
        let (first, last, bytes) = match frame {
            WsFrame::Text(bytes) => return Some(Incoming::Text(bytes)),
            WsFrame::Binary(_) => return Some(Incoming::Binary),
            WsFrame::Ping(bytes) => return Some(Incoming::Ping(bytes)),
            WsFrame::Pong(_) => return Some(Incoming::Pong),
            WsFrame::Close(reason) => return Some(Incoming::Close(reason)),
            WsFrame::Continuation(Item::FirstText(bytes)) => (Some(true), false, bytes),
            WsFrame::Continuation(Item::FirstBinary(bytes)) => (Some(false), false, bytes),
            WsFrame::Continuation(Item::Continue(bytes)) => (None, false, bytes),
            WsFrame::Continuation(Item::Last(bytes)) => (None, true, bytes),
        };
        if let Some(is_text) = first {
            self.fragments_text = is_text;
        }
        if self.fragments.len() + bytes.len() > MAX_MESSAGE {
            return Some(Incoming::TooBig);
        }
        self.fragments.extend_from_slice(&bytes);
        if !last {
            return None;
        }
        let message = std::mem::take(&mut self.fragments).freeze();
        Some(if self.fragments_text {
            Incoming::Text(message)
        } else {
            Incoming::Binary
        })
    }
}

/// One JSON text frame.
fn text(out: &mut BytesMut, json: &str) {
    Parser::write_message(out, json.as_bytes(), OpCode::Text, true, false);
}

impl Stream for Socket {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = BytesMut::new();
        if let Some(end) = this.step(cx, &mut out) {
            this.done = true;
            let reason = match end {
                End::Gone => return Poll::Ready(None),
                End::Close(code, description) => Some(CloseReason {
                    code,
                    description: Some(description.to_owned()),
                }),
                End::TooBig => Some(CloseReason {
                    code: CloseCode::Size,
                    description: Some(format!(
                        "message larger than the limit of {MAX_MESSAGE} bytes"
                    )),
                }),
                End::Echo(code) => code.map(CloseReason::from),
            };
            // The body ends after the Close: the dispatcher then closes the connection.
            Parser::write_close(&mut out, reason, false);
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(out.freeze())))
        }
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
