//! Tidings: notifications with a durable inbox and live delivery.
//!
//! The data's path through the crate, and the direction of its imports: [`ingest`]
//! validates what a service sends, [`store`] commits it and assigns each recipient's `seq`,
//! [`notifier`] announces what committed on the [`bus`], the [`hub`] hands it to the
//! recipient's per-user actor on whichever replica holds the user's connections, and the
//! faces write it out: [`transports`] as SSE, NDJSON, the hidden-iframe stream, long-poll,
//! WebSocket or STOMP, [`api`] as the REST inbox, and [`grpc`] as gRPC and gRPC-Web on a
//! listener of its own; [`bridges`] push what committed to other systems (an MQTT broker)
//! from the store's transactional outbox. [`http`] is the plumbing every HTTP face stands
//! on, [`routes`] puts the faces together, [`domain`] holds the types all of them share,
//! and [`shutdown`] is the one signal that stops them in order.

pub mod api;
pub mod auth;
pub mod bridges;
pub mod bus;
pub mod configuration;
pub mod domain;
pub mod expiry;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod notifier;
pub mod retention;
pub mod routes;
pub mod scheduler;
pub mod shutdown;
pub mod sockjs;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transports;

#[cfg(test)]
mod layers;
