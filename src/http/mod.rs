//! Shared HTTP plumbing: what every HTTP face (the REST API, the live transports, and any
//! face added beside them) stands on.
//!
//! The application state, the one mapping of every error to a status and a problem
//! document, the extractors (tokens, bodies, query parameters, cursors, the Origin check)
//! and the page types that several faces answer with. It imports the core and nothing of
//! the faces, so the faces can share it without importing each other.

pub mod error;
pub mod extract;
pub mod head;
pub mod html;
pub mod jsonp;
pub mod origin;
pub mod pages;

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::notifier::Notifier;
use crate::shutdown::Shutdown;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// What every handler can reach. Cloned per worker; everything inside is shared.
pub struct AppState {
    pub store: Store,
    pub notifier: Notifier,
    pub auth: Arc<Authenticator>,
    pub hub: Hub,
    /// Between SSE `: ping` comments and WebSocket pings.
    pub heartbeat: Duration,
    /// Origins allowed to open a WebSocket besides the server's own.
    pub allowed_origins: Vec<String>,
    /// How long a request body may take to arrive, from the end of the head.
    pub body_timeout: Duration,
    /// Cancelled when the replica starts to stop: readiness fails so no new clients
    /// arrive. Part of the replica's one shutdown signal (see `startup`).
    pub stopping: Shutdown,
}
