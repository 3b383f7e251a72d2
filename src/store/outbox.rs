//! The transactional outbox for the MQTT bridge: rows written in the same transaction as
//! the change they announce, read back in order per user by the bridge, deleted after the
//! broker acknowledged them.
//!
//! The store knows nothing of MQTT: a row is a user, a kind and the JSON payload, computed
//! here at commit time so the bridge publishes exactly what committed.

use crate::domain::{Counts, Notification};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;

/// What a row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A new notification, as the REST API shows it (with its `seq`).
    Notification,
    /// The user's unread count after a change: `{"unread", "seq", "version"}`.
    Unread,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Notification => "notification",
            OutboxKind::Unread => "unread",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "notification" => Some(OutboxKind::Notification),
            "unread" => Some(OutboxKind::Unread),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub user: String,
    pub kind: OutboxKind,
    pub payload: String,
}

/// Whether the store writes outbox rows, and whom it wakes when it did. Off unless the
/// bridge is configured: without a reader the table would only grow.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    written: Option<Arc<Notify>>,
}

impl Outbox {
    pub fn off() -> Self {
        Self { written: None }
    }

    pub fn on() -> Self {
        Self {
            written: Some(Arc::new(Notify::new())),
        }
    }

    pub fn is_on(&self) -> bool {
        self.written.is_some()
    }

    /// Called after a commit that wrote rows: a waiting bridge worker on this replica looks
    /// at once instead of at its next poll.
    pub(crate) fn poke(&self) {
        if let Some(n) = &self.written {
            n.notify_one();
        }
    }

    /// Resolves after the next [`Outbox::poke`] (or at once if one happened since the last
    /// wait); never when the outbox is off.
    pub async fn written(&self) {
        match &self.written {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }
}

/// The rows a committed notification writes: the notification, then the unread count.
pub(crate) fn rows_for(n: &Notification, counts: &Counts) -> [(OutboxKind, String); 2] {
    [
        (
            OutboxKind::Notification,
            serde_json::to_string(n).unwrap_or_default(),
        ),
        (OutboxKind::Unread, unread_payload(counts)),
    ]
}

/// `version` grows with every change to the counters (publish and read alike), so a
/// consumer that sees two unread messages keeps the one with the higher version.
pub(crate) fn unread_payload(counts: &Counts) -> String {
    json!({
        "unread": counts.unread,
        "seq": counts.seq,
        "version": counts.version,
    })
    .to_string()
}
