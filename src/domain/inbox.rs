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

    /// Whether a client resuming after `cursor` is ahead of the user's latest seq: a seq it
    /// claims to have seen was never assigned (the database was restored from a backup, or
    /// the client kept a cursor from elsewhere). Left alone it would wait for seqs that are
    /// already being handed out again below its cursor, and hear nothing.
    pub fn ahead(&self, cursor: Seq) -> bool {
        cursor > self.counts.seq
    }
}

/// Which notifications a user marks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkRead {
    Ids(Vec<Uuid>),
    UpTo(Seq),
}

/// How a user (or the service that published them) changed notifications already in an
/// inbox. Marking read is not one of these: it only changes the counters, which every
/// connection already hears of as `unread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Hidden from the inbox view (and read); still in the `after=` replay.
    Archived,
    /// Back in the inbox view (still read).
    Unarchived,
    /// Gone for good; its seq is never reused.
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Archived => "archived",
            ChangeKind::Unarchived => "unarchived",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// Which of one user's notifications changed, and how: what each of that user's
/// connections is told, so every tab can update its list without a read. `ids` and
/// `seqs` name the same notifications, in seq order: ids for clients that key their list
/// by id, seqs for those that key it by cursor (and to tell a deleted seq from a missed one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxChange {
    pub kind: ChangeKind,
    pub ids: Vec<Uuid>,
    pub seqs: Vec<Seq>,
}

impl InboxChange {
    /// The event's JSON as every JSON transport sends it:
    /// `{"change":…,"ids":[…],"seqs":[…],"unread":n,"seq":s}`. Built once per event and
    /// shared by every connection of the user.
    pub fn to_json(&self, counts: &Counts) -> String {
        serde_json::json!({
            "change": self.kind,
            "ids": self.ids,
            "seqs": self.seqs,
            "unread": counts.unread,
            "seq": counts.seq,
        })
        .to_string()
    }
}
