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
