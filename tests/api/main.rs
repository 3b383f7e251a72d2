//! The API suite. Every test talks to a real server over real HTTP, once against SQLite
//! and once against Postgres.

mod helpers;

mod auth;
mod changes;
mod cursor;
mod grpc;
mod hardening;
mod idempotency;
mod inbox;
mod jsonp;
mod live;
mod migrate;
mod mqtt;
mod operations;
mod publish;
mod retention;
mod sockjs;
mod streams;
mod topics;
mod webpush;
