//! What a STOMP session runs on: a WebSocket (`/v1/stomp`) or any other message
//! channel that carries text both ways, such as a SockJS session (`/v1/sockjs`).
//!
//! The smallest generalisation of [`super::session`] over its socket: the session writes
//! through [`Outbound`] and reads [`Inbound`]. The WebSocket implementation is actix-ws's
//! own types; other channels implement the two traits where they are defined.

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseReason, ProtocolError};

/// The peer is gone: nothing can be written.
#[derive(Debug, Clone, Copy)]
pub struct Gone;

/// The writing half.
#[allow(async_fn_in_trait)]
pub trait Outbound {
    /// Whether the channel has pings and pongs of its own, which prove the client alive
    /// when it sends no STOMP heart-beats. A channel without them (SockJS) detects a gone
    /// client itself and ends [`Inbound::recv`].
    const PINGS: bool;
    async fn text(&mut self, text: String) -> Result<(), Gone>;
    async fn ping(&mut self) -> Result<(), Gone>;
    async fn pong(&mut self, payload: &[u8]) -> Result<(), Gone>;
    async fn close(self, reason: Option<CloseReason>);
    /// STOMP heart-beats were negotiated: a channel with keep-alives of its own (SockJS
    /// `h` frames) may stop sending them, as Spring does.
    fn heartbeats_negotiated(&mut self) {}
}

/// The reading half: actix-ws's message type, which every channel can produce.
#[allow(async_fn_in_trait)]
pub trait Inbound {
    async fn recv(&mut self) -> Option<Result<AggregatedMessage, ProtocolError>>;
}

impl Outbound for actix_ws::Session {
    const PINGS: bool = true;

    async fn text(&mut self, text: String) -> Result<(), Gone> {
        actix_ws::Session::text(self, text).await.map_err(|_| Gone)
    }

    async fn ping(&mut self) -> Result<(), Gone> {
        actix_ws::Session::ping(self, b"").await.map_err(|_| Gone)
    }

    async fn pong(&mut self, payload: &[u8]) -> Result<(), Gone> {
        actix_ws::Session::pong(self, payload)
            .await
            .map_err(|_| Gone)
    }

    async fn close(self, reason: Option<CloseReason>) {
        let _ = actix_ws::Session::close(self, reason).await;
    }
}

impl Inbound for AggregatedMessageStream {
    async fn recv(&mut self) -> Option<Result<AggregatedMessage, ProtocolError>> {
        AggregatedMessageStream::recv(self).await
    }
}
