//! The STOMP rules of this server that need no socket: what a CONNECT frame says, which
//! destinations exist, how a cursor is written, which hub events a subscription gets and
//! how they are framed as MESSAGEs, what a SEND to `/app/read` must carry.
//!
//! Why apart from [`super::session`]: these are pure functions of their input, so each is
//! unit-tested beside its code without a WebSocket, a database or a clock, and a reader of
//! the session's state machine (timers, subscriptions, transactions, the order of frames)
//! is not wading through header parsing. One file per concern, the way mini-redis keeps
//! one file per command:
//!
//! * `connect`: version negotiation (`accept-version`) and the CONNECT token.
//! * `destination`: SUBSCRIBE destinations (the feed, `/topic/<name>`).
//! * `cursor`: `x-tidings-after`.
//! * `message`: hub frames to events, topic matching, MESSAGE framing.
//! * `read`: the SEND destination `/app/read` and its body.

mod connect;
mod cursor;
mod destination;
mod message;
mod read;

pub(crate) use connect::VERSIONS;
pub use connect::{connect_token, negotiate_version};
pub use cursor::{parse_cursor, AFTER_HEADER};
pub use destination::{parse_destination, Destination, FEED, TOPIC_PREFIX};
pub use message::{events, is_on_topic, message_frame, Event};
pub use read::{parse_read_body, READ};
