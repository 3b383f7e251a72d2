//! The scenarios, one module each, and what they share: opening the subscribers and publishing.

pub(crate) mod c100k;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod ingest;
pub(crate) mod mqtt_drain;
pub(crate) mod prefs;
mod publishing;
mod subscribers;
pub(crate) mod topic;
pub(crate) mod unicast;
pub(crate) mod webpush;
