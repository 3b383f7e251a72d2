//! The committed-change event: what the notifier announces, the bus carries between
//! replicas and the hub hands to a user's connections. It lives here, below all three, so
//! that none of them has to import another one upstream of it to name it.

use super::{Counts, InboxChange, Notification, UserId};
use serde::{Deserialize, Serialize};

/// A change that committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A notification committed for `user`: everything needed to deliver it without a
    /// database read per recipient.
    Notification {
        user: UserId,
        /// Boxed: it is most of the event's size, and the other variants are small.
        notification: Box<Notification>,
        counts: Counts,
        /// When it committed, for the publish-to-delivery latency histogram.
        committed_at_us: i64,
    },
    /// The user's unread count changed (a read, from any tab on any replica).
    Counts { user: UserId, counts: Counts },
    /// Notifications already in the user's inbox were archived, unarchived or deleted;
    /// `counts` are the user's counters right after (a change bumps their version).
    Changed {
        user: UserId,
        /// Boxed, like a notification: two lists would double the size of every event.
        change: Box<InboxChange>,
        counts: Counts,
    },
    /// The user's preferences changed (from any tab or service, on any replica): every open
    /// settings page takes the new document.
    Preferences {
        user: UserId,
        version: i64,
        /// The whole document, as `GET /v1/preferences` answers it. Boxed: rarely sent.
        document: Box<serde_json::Value>,
    },
    /// Events may have been lost on the way: every session re-reads the database.
    CatchUp,
}

impl Event {
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Event::Notification { user, .. }
            | Event::Counts { user, .. }
            | Event::Changed { user, .. }
            | Event::Preferences { user, .. } => Some(user),
            Event::CatchUp => None,
        }
    }
}
