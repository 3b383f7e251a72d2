//! Archive, unarchive and delete: a user tidying their own inbox, and a service retracting
//! a message it published. The SQL is in each backend's `changes.rs`; this is what they
//! share and the dispatch.
//!
//! Counters stay exact the way mark-read keeps them: the statement that changes rows says
//! which of them were unread, in the same transaction as the cursor update, so a concurrent
//! mark-read or publish can neither be counted twice nor missed. Every change bumps the
//! counters' version (even one that leaves `unread` as it was), so the event announcing it
//! is newer than anything a connection has seen.

use super::{IdLookup, Store, StoreError};
use crate::domain::{
    ChangeKind, Counts, IdKey, InboxChange, MarkRead, NotificationId, Seq, UserId,
};
use uuid::Uuid;

/// What one change did to one user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeOutcome {
    /// The user's counters after it.
    pub counts: Counts,
    /// The notifications it changed, in seq order: empty when none did (nothing to
    /// announce: ids that are not the caller's, or already in that state).
    pub change: InboxChange,
}

/// A service's retraction as it reached one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Retracted {
    pub user: UserId,
    pub outcome: ChangeOutcome,
}

/// One changed row, as the backends return it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChangedRow {
    pub seq: i64,
    pub message: i64,
    pub ordinal: i32,
    pub legacy: Option<Uuid>,
    /// It was unread before (archive and delete take it off the unread count).
    pub was_unread: bool,
}

/// Builds the announced change from the rows a statement returned (in any order).
pub(crate) fn change_of(
    key: &IdKey,
    kind: ChangeKind,
    mut rows: Vec<ChangedRow>,
) -> Result<InboxChange, StoreError> {
    rows.sort_by_key(|r| r.seq);
    let mut ids = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(super::stored_id(
            key,
            r.legacy,
            r.message,
            r.ordinal,
            Seq::new(r.seq),
        )?);
        seqs.push(Seq::new(r.seq));
    }
    Ok(InboxChange { kind, ids, seqs })
}

/// How many of the changed rows were unread.
pub(crate) fn unread_among(rows: &[ChangedRow]) -> i64 {
    rows.iter().filter(|r| r.was_unread).count() as i64
}

/// Which rows of the caller's inbox a body names.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Ids(IdLookup),
    UpTo(Seq),
}

impl Target {
    pub fn new(what: &MarkRead, key: &IdKey) -> Self {
        match what {
            MarkRead::Ids(ids) => Target::Ids(IdLookup::new(ids, key)),
            MarkRead::UpTo(seq) => Target::UpTo(*seq),
        }
    }
}

impl Store {
    /// Archives (and marks read), unarchives or deletes the caller's notifications named by
    /// ids or up to a seq. Ids that are not the caller's change nothing.
    pub async fn change(
        &self,
        user: &UserId,
        kind: ChangeKind,
        what: &MarkRead,
    ) -> Result<ChangeOutcome, StoreError> {
        let target = Target::new(what, self.id_key());
        match self {
            Store::Sqlite(s) => s.change(user, kind, &target).await,
            Store::Postgres(s) => s.change(user, kind, &target).await,
        }
    }

    /// Deletes, for every recipient, the message behind notification `id` if `service`
    /// published it. `None` when it did not (or no longer exists): the caller answers 404,
    /// saying nothing of other services' messages.
    pub async fn retract(
        &self,
        service: &str,
        id: Uuid,
    ) -> Result<Option<Vec<Retracted>>, StoreError> {
        // Notifications from before the storage layout have no recorded publisher: no
        // service may retract them.
        let Some(parts) = NotificationId::decode(&id, self.id_key()) else {
            return Ok(None);
        };
        match self {
            Store::Sqlite(s) => s.retract(service, parts.message).await,
            Store::Postgres(s) => s.retract(service, parts.message).await,
        }
    }
}
