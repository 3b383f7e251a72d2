//! Retention: pruning old notifications in short, bounded transactions, and the history
//! floor it leaves behind.
//!
//! One prune step deletes at most about a batch of inbox rows and, for every user it touched,
//! in the same transaction: takes the unread rows it deleted off `user_cursors.unread` (so the
//! counter stays exact), bumps `version` (so every tab's badge takes the new count), and
//! raises `pruned_through` to the highest seq deleted. A user's pruned seqs are always a
//! prefix (every seq at or below the floor is gone), so "seqs <= floor were removed by
//! retention" is exact, and a cursor below it is told so by every transport. Messages no
//! inbox row references any more are deleted in the same transaction.
//!
//! Locking: a step first deletes the inbox rows (old rows no publish touches), then locks the
//! users' cursor rows in user id order, as a publish does, so the two cannot deadlock; a
//! mark-read that holds one user's rows and then its cursor waits or is waited on, never both.

use super::{Store, StoreError};
use crate::domain::{Counts, Seq, UserId};
use chrono::{DateTime, Utc};

#[path = "sqlite/retention.rs"]
mod lite;
#[path = "postgres/retention.rs"]
mod pg;

pub use pg::RetentionLease as PgRetentionLease;

/// What one prune step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruned {
    /// Inbox rows deleted.
    pub rows: u64,
    /// Messages deleted because no inbox row referenced them any more.
    pub messages: u64,
    /// Each touched user's counters after the step, to announce.
    pub changed: Vec<(UserId, Counts)>,
}

/// Where a pruning-by-count pass goes on from: users are visited in id order, so a pass
/// over a million users is many short steps, each starting after the last user it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountCursor(pub Option<UserId>);

/// Users looked at per pruning-by-count step (each costs one indexed read).
pub(crate) const COUNT_USERS_PER_STEP: i64 = 200;

/// Holds the right to prune for the whole cluster while it lives (Postgres: a session-level
/// advisory lock on a connection of its own; SQLite: nothing, there is one process).
#[derive(Debug)]
pub enum RetentionLease {
    Sqlite,
    Postgres(PgRetentionLease),
}

impl RetentionLease {
    /// Gives the right back. Dropping the lease gives it back too (the connection closes).
    pub async fn release(self) {
        if let RetentionLease::Postgres(l) = self {
            l.release().await;
        }
    }
}

/// A user id read back from the database; one that no longer parses is a bug, not input.
pub(crate) fn stored_user(s: &str) -> Result<UserId, StoreError> {
    UserId::parse(s).map_err(|e| {
        StoreError::Database(sqlx::Error::Decode(
            format!("stored user id {s:?}: {e}").into(),
        ))
    })
}

/// The candidate rows of one step: per user, every seq at or below `upto` goes.
pub(crate) type Targets = Vec<(UserId, Seq)>;

impl Store {
    /// The user's history floor: seqs at or below it were pruned (0 when none were).
    pub async fn history_floor(&self, user: &UserId) -> Result<Seq, StoreError> {
        match self {
            Store::Sqlite(s) => s.history_floor(user).await,
            Store::Postgres(s) => s.history_floor(user).await,
        }
    }

    /// Takes the cluster-wide right to prune, or `None` when another replica holds it.
    pub async fn retention_lease(&self) -> Result<Option<RetentionLease>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Some(RetentionLease::Sqlite)),
            Store::Postgres(s) => Ok(s.retention_lease().await?.map(RetentionLease::Postgres)),
        }
    }

    /// Deletes up to about `batch` inbox rows whose message was created before `cutoff`,
    /// oldest messages first. `rows == 0` means nothing is left to prune by age.
    pub async fn prune_older_than(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune_older_than(cutoff, batch).await,
            Store::Postgres(s) => s.prune_older_than(cutoff, batch).await,
        }
    }

    /// One step of pruning by count: looks at the next users after `cursor` that may hold
    /// more than `keep` notifications and deletes up to about `batch` rows of theirs,
    /// oldest first, so that each keeps its newest `keep`. Returns where the next step
    /// starts, or `None` when the pass has seen every user.
    pub async fn prune_beyond(
        &self,
        keep: u64,
        batch: u32,
        cursor: CountCursor,
    ) -> Result<(Pruned, Option<CountCursor>), StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        match self {
            Store::Sqlite(s) => s.prune_beyond(keep, batch, cursor).await,
            Store::Postgres(s) => s.prune_beyond(keep, batch, cursor).await,
        }
    }
}
