//! SockJS (protocol 0.3.3, what sockjs-client 1.x speaks), as a layer of its own that
//! carries any session protocol: for front ends written against Spring's
//! `.withSockJS()`, which open `new SockJS(url)` and speak STOMP (or anything else) over
//! it.
//!
//! One [`Endpoint`] serves, under its prefix: the greeting, `/info`, the iframe page (and
//! the sockjs-client script it loads, from the binary, so it works offline), the raw
//! `/websocket`, and the session transports `/<server>/<session>/<transport>`:
//! `websocket`, `xhr` + `xhr_send`, `xhr_streaming`, `eventsource`, `htmlfile`, `jsonp` +
//! `jsonp_send`. What runs on a session is a [`Service`]: it gets a [`Conn`] (the client's
//! messages in, a bounded queue out) and never sees the transport.
//!
//! Everything is bounded: sessions per endpoint, bytes queued per session (a service that
//! writes faster than its client reads waits, then is refused), messages queued towards
//! the service, `xhr_send` bodies and WebSocket messages, and each streaming response (closed
//! after `stream_bytes_limit` bytes, so the browser lets go of what it held).
//!
//! Status codes on these paths are the protocol's own (a malformed `xhr_send` is a 500
//! "Broken JSON encoding."): sockjs-client and the conformance suite rely on them.
//!
//! Every session belongs to the owner of the request that opened it (see [`Service`]);
//! HTML it writes (`htmlfile`, the iframe page) carries a CSP and `nosniff`, and data in
//! its scripts is escaped by `http::html`.
//!
//! This module imports nothing of the crate but that pure escaping: [`tidings`] is where
//! Tidings' own protocols are put on it.

pub mod frame;
pub mod server;
pub mod session;
pub mod tidings;

pub use server::Endpoint;
pub use session::{Closed, Conn, Outgoing};

use actix_web::HttpRequest;
use std::time::Duration;

/// The sockjs-client build the iframe page loads (vendored from the npm package
/// `sockjs-client`, MIT; see `assets/sockjs/`), served under the endpoint's prefix.
pub const CLIENT_FILE: &str = "sockjs-client-1.6.1.min.js";
pub const CLIENT_JS: &str = include_str!("../../assets/sockjs/sockjs-client-1.6.1.min.js");

/// What runs on a SockJS session.
///
/// Every session belongs to whoever opened it: [`Service::owner`] names the party a
/// request speaks for (for Tidings, the user of its token), the endpoint stores it with the
/// session, and every later request for the session (receiving or sending, on any
/// transport) must name the same owner, or it is answered as for an unknown session and
/// sees nothing. A request that names nobody opens nothing, so it counts against no cap.
pub trait Service: Send + Sync + 'static {
    /// Who `req` speaks for: an opaque key compared for equality. An error refuses the
    /// request with that error's response when it would open a session.
    fn owner(&self, req: &HttpRequest) -> Result<String, actix_web::Error>;

    /// Starts the protocol on a new session (spawns its task), given the request that
    /// opened it (which [`Service::owner`] accepted); an error refuses the session with
    /// that error's response.
    fn open(&self, req: &HttpRequest, conn: Conn) -> Result<(), actix_web::Error>;

    /// Whether the request's `Origin` may read responses sent with credentials (CORS):
    /// sockjs-client sends every cross-origin XHR with them.
    fn trusts_origin(&self, req: &HttpRequest) -> bool;
}

/// An endpoint's settings. The defaults are sockjs-node's and Spring's.
#[derive(Debug, Clone)]
pub struct Options {
    /// Offer the WebSocket transports (`/info` says so).
    pub websocket: bool,
    /// Set a `JSESSIONID` cookie on session requests, for load balancers that stick by it.
    pub jsessionid: bool,
    /// Between `h` frames on an idle session.
    pub heartbeat: Duration,
    /// How long a session outlives its last receiving request.
    pub disconnect_delay: Duration,
    /// Bytes after which a streaming response is ended (the client opens another).
    pub stream_bytes_limit: usize,
    /// The sockjs-client script the iframe page loads; `None`: the copy in the binary.
    pub sockjs_url: Option<String>,
    /// Polling/streaming sessions at once on this endpoint.
    pub max_sessions: usize,
    /// Bytes queued towards a client before the service has to wait.
    pub max_queued_bytes: usize,
    /// Messages queued towards the service before a sender has to wait.
    pub incoming_queue: usize,
    /// The largest `xhr_send`/`jsonp_send` body or WebSocket message.
    pub max_send_bytes: usize,
    /// How long a send waits for room before the other side counts as gone.
    pub send_timeout: Duration,
    /// How long an `xhr_send`/`jsonp_send` body may take to arrive: a client trickling a
    /// byte now and then would hold its connection and buffer for as long as it likes.
    pub body_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            websocket: true,
            jsessionid: false,
            heartbeat: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            stream_bytes_limit: 128 * 1024,
            sockjs_url: None,
            max_sessions: 10_000,
            max_queued_bytes: 1024 * 1024,
            incoming_queue: 64,
            max_send_bytes: 64 * 1024 + 4 * 1024,
            send_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}
