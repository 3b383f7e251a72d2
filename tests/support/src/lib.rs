//! Support shared by the integration suites (`tests/api`, `tests/cluster`, `tests/nginx`), as
//! one crate compiled once, rather than the same files included into each suite.
//!
//! - [`harness`]: a fresh Postgres database per test, and HS256 tokens signed like the service's.
//! - [`processes`]: log files and a private `redis-server` for the multi-process suites.
//! - [`proxy`]: a TCP proxy a test can cut, to take a database away from one server.
//! - [`live`]: real SSE, WebSocket and long-poll clients, a publisher, and the [`live::Collector`].

pub mod harness;
pub mod live;
pub mod processes;
pub mod proxy;
pub mod push;
