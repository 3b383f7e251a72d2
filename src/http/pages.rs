//! The page types that several faces answer with: the REST inbox and long-poll return the
//! same page, and every face reports counters the same way.

use crate::domain::{Counts, Notification, Page, Seq};
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
    /// Present (and true) only when the cursor (`after`) is below the history floor:
    /// retention removed notifications the client never saw, and the page starts at the
    /// oldest kept one. Continue from the last notification's seq, or from `floor` when the
    /// page is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// The history floor, the highest seq removed by retention (0: none was): on every REST
    /// `after=` page, and on a long-poll answer with `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<i64>,
    /// Present (and true) only when the cursor (`after`) is above the caller's latest seq
    /// (`seq`): a database restored from a backup, or a client bug. Nothing after the cursor
    /// would ever come: continue from `seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<bool>,
    /// Long-poll only, and only when there were any: the `changed` events since the poll
    /// began, oldest first (`{"change","ids","seqs","unread","seq"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub changes: Option<Vec<serde_json::Value>>,
}

impl NotificationPage {
    /// A page read after `cursor`: says where history starts, and whether the client lost
    /// some of it.
    pub fn after(page: Page, cursor: Seq) -> Self {
        Self {
            truncated: page.truncated(cursor).then_some(true),
            ahead: page.ahead(cursor).then_some(true),
            floor: Some(page.floor.get()),
            notifications: page.notifications,
            unread: page.counts.unread,
            seq: page.counts.seq.get(),
            changes: None,
        }
    }
}
