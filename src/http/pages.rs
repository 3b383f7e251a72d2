//! The page types that several faces answer with: the REST inbox and long-poll return the
//! same page, and every face reports counters the same way.

use crate::domain::{Counts, Notification};
use serde::Serialize;
use utoipa::ToSchema;

/// The caller's unread count and latest seq.
#[derive(Serialize, ToSchema)]
pub struct UnreadCount {
    pub unread: i64,
    /// The caller's latest seq, 0 if none.
    pub seq: i64,
}

impl From<Counts> for UnreadCount {
    fn from(c: Counts) -> Self {
        Self {
            unread: c.unread,
            seq: c.seq.get(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    /// The caller's unread count.
    pub unread: i64,
    /// The caller's latest seq, 0 if none.
    pub seq: i64,
}
