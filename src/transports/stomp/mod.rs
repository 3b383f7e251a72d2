//! STOMP 1.2 over WebSocket: `GET /v1/stomp`, for front ends written against Spring's
//! message broker (`@stomp/stompjs`, `stomp.py`, any STOMP client with a WebSocket
//! transport).
//!
//! The pieces, each with its own reasons:
//!
//! * [`frame`]: the bounded, incremental frame codec (pure; fuzzed).
//! * [`heartbeat`]: heart-beat negotiation (pure).
//! * [`ack`]: what awaits ACK/NACK per subscription (pure, bounded).
//! * [`transaction`]: frames held until COMMIT (pure, bounded).
//! * [`protocol`]: destinations, version, cursor, token, MESSAGE framing (pure).
//! * [`session`]: the task that owns one socket and applies the rules above to it.
//!
//! Destinations follow Spring's conventions so that existing front ends only change the
//! URL: `/user/queue/notifications` is the caller's own feed, `/topic/<name>` a topic the
//! caller is subscribed to, and `SEND` goes to `/app/read`.
//!
//! Left out of STOMP 1.2, on purpose (the README lists them too):
//!
//! * `SEND` to anything but `/app/read`: clients do not publish here; services publish
//!   over REST with a service token, which is checked, validated and idempotent.
//! * Broker-style redelivery of unacknowledged messages after a reconnect: the inbox is
//!   the durable store and the cursor (`x-tidings-after`) is how a client resumes. ACK is
//!   bookkeeping and flow control; NACK redelivers once within the session.
//! * Atomic COMMIT: the held frames are applied in order, each on its own. They are
//!   mark-reads and acknowledgements, which are idempotent, so a COMMIT that fails midway
//!   (the database went away) can simply be sent again in a new session.
//! * STOMP over raw TCP: only the WebSocket transport is served (one port, one origin
//!   check, one proxy configuration).
//! * The `host` header (virtual hosts) is accepted and ignored: there is one. `login` is
//!   ignored too: the token names the user.
//! * STOMP 1.0's unescaped headers on server frames: a 1.0 session gets 1.2 escaping in
//!   MESSAGE headers (only a topic name with `:` would show it), and ERROR messages written
//!   without colons so they read the same either way.
//! * `content-type` and `content-length` of a SEND are not interpreted beyond framing: the
//!   body must be the JSON that `POST /v1/notifications/read` takes.

pub mod ack;
pub mod frame;
pub mod heartbeat;
pub mod protocol;
pub mod session;
pub mod socket;
pub mod transaction;

use crate::http::error::ApiError;
use crate::http::origin::check_origin;
use crate::http::AppState;
use actix_web::{web, HttpRequest, HttpResponse};

/// The WebSocket subprotocols of STOMP, best first. The client's first one that is in
/// this list is accepted; the STOMP version itself is negotiated by `accept-version`.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// Open a STOMP 1.2 session over WebSocket.
///
/// Subprotocols `v12.stomp`, `v11.stomp`, `v10.stomp`. The first frame must be `CONNECT` (or
/// `STOMP`) within 5 seconds, carrying the user's JWT as `Authorization: Bearer <jwt>` (or the
/// bare token) or as `passcode`; `accept-version` (1.2 preferred, 1.1 and 1.0 accepted) and
/// `heart-beat` are negotiated as the spec says: the server answers `heart-beat: 250,<heartbeat
/// ms>`, so it sends heart-beats as often as the client asks (no faster than every 250 ms) and
/// asks for one at most every `TIDINGS__SERVER__HEARTBEAT_SECONDS`; a client silent for twice
/// the negotiated interval gets `ERROR` and the close. `CONNECTED` carries `version`,
/// `heart-beat`, `server`, `session` and `user-name`.
///
/// **SUBSCRIBE** (`id`, `destination`, `ack`: `auto`, `client` or `client-individual`;
/// at most 32 per session): `/user/queue/notifications` is the caller's own feed,
/// `/topic/<name>` a topic the caller is subscribed to (the notifications of the feed
/// published to that topic). `x-tidings-after: <seq>` resumes from a cursor with the same replay
/// rules as the other transports; without it only new notifications arrive.
///
/// **MESSAGE** headers: `subscription`, `message-id`, `destination`, `content-type:
/// application/json`, `content-length`, `x-tidings-event` and, in the `client` modes, `ack`.
/// `x-tidings-event: notification` carries the Notification JSON and `x-tidings-seq`;
/// `unread` carries `{"unread":n,"seq":s}` (feed only); `resync` carries `{"seq":s}`
/// (page through `GET /v1/notifications?after=`); `preferences` carries
/// `{"version":n,"preferences":{...}}` when the user's preferences change (feed only).
///
/// **ACK/NACK** by `id` (1.2) or `message-id` (1.0, 1.1). ACK is cumulative in `client`
/// mode. It does not mark read. NACK sends the message again once, with `redelivered:
/// true`. More than 1,000 unacknowledged messages on a subscription end the session.
///
/// **SEND** to `/app/read` with `{"ids":[...]}` or `{"up_to":seq}` marks read, like `POST
/// /v1/notifications/read`. **BEGIN/COMMIT/ABORT**: SEND, ACK and NACK with a `transaction`
/// header take effect at COMMIT (at most 10 open transactions of 100 frames). **RECEIPT** for
/// every frame with a `receipt` header, once it took effect (for a frame in a transaction: once
/// it is held). **DISCONNECT** with a receipt: `RECEIPT`, then the close.
///
/// Every error is an `ERROR` frame with a one-line `message` header, then the close: code 1002
/// for a malformed or out-of-place frame, 1008 for a refused token or destination, 1009 for a
/// frame over 64 KiB, 4001 when the token expires, 4008 when the client reads too slowly (resume
/// with the cursor), 1012 when the replica restarts.
#[utoipa::path(
    get, path = "/v1/stomp", tag = "live", operation_id = "stomp",
    params(
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`v12.stomp`, `v11.stomp` or `v10.stomp`."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; STOMP frames follow."),
        (status = 400, body = crate::http::error::Problem, content_type = "application/problem+json", description = "Not a WebSocket handshake."),
        (status = 403, body = crate::http::error::Problem, content_type = "application/problem+json", description = "The Origin is not allowed."),
    ),
)]
pub async fn socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Before the upgrade: a page on another site must not open a session that the browser
    // would authenticate (the token travels in CONNECT, but a stored one could be replayed).
    check_origin(&req, &state.allowed_origins)?;
    let (response, ws, messages) = actix_ws::handle_with_protocols(&req, body, &SUBPROTOCOLS)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket handshake: {e}")))?;
    let messages = messages
        .max_frame_size(session::MAX_WS_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(session::MAX_WS_MESSAGE);
    let session = session::Session::new(state, ws);
    actix_web::rt::spawn(session.run(messages));
    Ok(response)
}
