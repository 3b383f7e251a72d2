//! Expiring and collapsing notifications (issue 26): what both backends share.
//!
//! **Expiry.** Each expiring copy has a row in `inbox_expiry` (user, seq, expires_at). Reads
//! leave out copies past their time, and the unread count subtracts the user's unread ones
//! not yet deleted, so reads are exact at the second however late the clean-up runs. The
//! clean-up ([`Store::expire_due`]) takes the due rows by the `expires_at` index, a bounded
//! batch per transaction, and deletes their copies the way a service's retraction does: in
//! the same transaction it takes the unread ones off each user's counter and bumps its
//! version, and the notifier then announces a `changed` event (`deleted`) per user. On
//! Postgres the due rows are taken `FOR UPDATE SKIP LOCKED`, so every replica may run it at
//! once without two deleting the same copy.
//!
//! **Collapse.** `inbox_collapse` points each (user, service, collapse key) at the user's
//! newest copy published with it. A publish with a key, after it has locked the recipients'
//! cursor rows (the lock every publish to that user takes, held until commit), deletes the
//! copy each row points at if it is still there and unread, takes it off the unread count
//! (so the count rises by one only when nothing was replaced), and points the row at the new
//! copy. Two publishes with one key to one user therefore run one after the other, and the
//! second sees the first's copy: exactly one unread copy is left. The key is scoped to the
//! publishing service: another service's "general" is another conversation.
//! Retention deletes the rows whose copies it prunes, so the table is bounded as the inbox is.
//!
//! On Postgres these publishes take the per-request transaction rather than the group
//! commit (whose whole batch is one statement, with seqs computed inside it); that keeps the
//! collapse's delete-then-count plain SQL, at the price of group commit's throughput for
//! publishes that carry `collapse_key` or an expiry.

use super::changes::{change_of, ChangedRow, Retracted};
use super::{PublishOutcome, Store, StoreError};
use crate::domain::{ChangeKind, IdKey};
use std::collections::HashMap;

/// Due rows taken per clean-up transaction: about a retention batch, so a publish to one of
/// the users waits behind at most one short transaction.
pub const EXPIRY_BATCH: u32 = 500;

/// The copies a collapsing publish replaced, by user.
pub(crate) type Replaced = HashMap<String, ChangedRow>;

/// What one clean-up step did.
#[derive(Debug, Default)]
pub struct Expired {
    /// Due expiry rows taken (0: nothing is due). More than the copies deleted when some
    /// copies were already gone.
    pub due: u64,
    /// Per user, the copies deleted and the counters after: what to announce.
    pub retracted: Vec<Retracted>,
}

/// Hangs each replaced copy on its recipient's delivery, to be announced before it.
pub(crate) fn attach(
    key: &IdKey,
    outcome: &mut PublishOutcome,
    mut replaced: Replaced,
) -> Result<(), StoreError> {
    if replaced.is_empty() {
        return Ok(());
    }
    for d in &mut outcome.deliveries {
        if let Some(row) = replaced.remove(d.recipient.as_str()) {
            d.replaced = Some(Box::new(change_of(key, ChangeKind::Deleted, vec![row])?));
        }
    }
    Ok(())
}

impl Store {
    /// Deletes up to `batch` copies whose time has passed (see the module doc).
    pub async fn expire_due(&self, batch: u32) -> Result<Expired, StoreError> {
        match self {
            Store::Sqlite(s) => s.expire_due(batch).await,
            Store::Postgres(s) => s.expire_due(batch).await,
        }
    }
}
