//! The API suite. Every test talks to a real server over real HTTP, once against SQLite
//! and once against Postgres.

mod helpers;

mod auth;
mod changes;
mod cursor;
mod deep_data;
mod grpc;
mod grpc_input;
mod grpc_limits;
mod hardening;
mod head;
mod idempotency;
mod inbox;
mod jsonp;
mod lifecycle;
mod live;
mod migrate;
mod mqtt;
mod oidc;
mod operations;
mod preferences;
mod publish;
mod retention;
mod scheduled;
mod sockjs;
mod sockjs_owner;
mod streams;
mod topics;
mod webpush;
