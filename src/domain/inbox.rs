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
}

/// Which notifications a user marks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkRead {
    Ids(Vec<Uuid>),
    UpTo(Seq),
}
