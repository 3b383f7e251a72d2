//! Tidings: notifications with a durable inbox and live delivery.
//!
//! The data's path through the crate: [`ingest`] validates what a service sends, [`store`]
//! commits it and assigns each recipient's `seq`, [`notifier`] announces what committed,
//! and [`api`] is the HTTP face of it all.

pub mod api;
pub mod auth;
pub mod configuration;
pub mod domain;
pub mod ingest;
pub mod notifier;
pub mod startup;
pub mod store;
pub mod telemetry;
