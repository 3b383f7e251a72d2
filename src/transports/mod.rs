//! The live transports: SSE, NDJSON, the hidden-iframe stream, long-poll, WebSocket and
//! STOMP over WebSocket. Each opens a hub connection from a cursor and turns
//! [`Frame`](crate::hub::Frame)s into its own wire format. They share the HTTP plumbing in
//! [`crate::http`] with the REST face, and import neither it nor each other's routes.

pub mod iframe;
pub mod longpoll;
pub mod ndjson;
pub mod sse;
pub mod stomp;
pub mod stream;
pub mod ws;

/// A WebSocket message over the socket's limit: one frame (`Overflow`), or continuations
/// adding up to more (actix-ws reports those as an I/O error). Both sockets close such a
/// client with 1009 (message too big), not 1002, so it knows to send less rather than fix
/// its framing.
pub(crate) fn is_overflow(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io.to_string().contains("maximum continuation size"),
        _ => false,
    }
}

/// A JSON object with a `"type"` member put first: `{"type":"changed",…the object's own…}`,
/// for the formats that name each event inside its JSON (NDJSON, the iframe stream,
/// WebSocket). The object is ours (built by `InboxChange::to_json`), so it starts with `{`
/// and is never empty.
pub(crate) fn typed(kind: &str, object: &str) -> String {
    match object.strip_prefix('{') {
        Some("}") | None => format!("{{\"type\":\"{kind}\"}}"),
        Some(rest) => format!("{{\"type\":\"{kind}\",{rest}"),
    }
}
