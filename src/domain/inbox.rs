//! What a user's inbox answers with, and how a user changes it: shared by the store that
//! keeps it, the hub that replays it and every face that shows it.

use super::{Notification, Seq};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's unread count and latest seq (0 when they have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub unread: i64,
    pub seq: Seq,
    /// How many times the user's counters changed: orders updates that arrive out of order.
    pub version: i64,
}

/// A slice of one user's inbox, with the counters read in the same snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub notifications: Vec<Notification>,
    pub counts: Counts,
    /// The history floor: the user's seqs at or below it were pruned by retention (0 when
    /// nothing was). Set on `after` reads (the only ones that resume from a cursor), read
    /// after the page: it only rises, so every kept seq above it that had committed when the
    /// page was read is in the page's range, and a reader that skips to it misses nothing
    /// that was kept.
    pub floor: Seq,
}

impl Page {
    /// Whether a client resuming after `cursor` lost history: seqs between its cursor and
    /// the floor were pruned before it saw them.
    pub fn truncated(&self, cursor: Seq) -> bool {
        cursor < self.floor
    }
}

/// Which notifications a user marks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkRead {
    Ids(Vec<Uuid>),
    UpTo(Seq),
}
