//! Tidings: notifications with a durable inbox and live delivery.
//!
//! The data's path through the crate: [`ingest`] validates what a service sends, [`store`]
//! commits it and assigns each recipient's `seq`, [`notifier`] announces what committed on
//! the [`bus`], the [`hub`] hands it to the recipient's per-user actor on whichever replica
//! holds the user's connections, and [`transports`] write it out as SSE, long-poll or
//! WebSocket. [`api`] is the REST face of it all.

pub mod api;
pub mod auth;
pub mod bus;
pub mod configuration;
pub mod domain;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod notifier;
pub mod routes;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transports;
