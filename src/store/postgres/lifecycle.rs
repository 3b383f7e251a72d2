//! Expiring and collapsing on Postgres (see `store::lifecycle`).

use super::changes::{drop_unreferenced_messages, lower_unread};
use super::{retrying, OutboxColumns, PgStore};
use crate::domain::{ChangeKind, Counts, Seq};
use crate::store::changes::{change_of, unread_among, ChangeOutcome, ChangedRow, Retracted};
use crate::store::lifecycle::{Expired, Replaced};
use crate::store::outbox::unread_payload;
use crate::store::{OutboxKind, PublishCommand, StoreError};
use sqlx::postgres::PgRow;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

fn changed_row(row: &PgRow) -> Result<ChangedRow, sqlx::Error> {
    Ok(ChangedRow {
        seq: row.try_get("seq")?,
        message: row.try_get("message_id")?,
        ordinal: row.try_get("ordinal")?,
        legacy: row.try_get("legacy_id")?,
        was_unread: row.try_get("was_unread")?,
    })
}

/// The publish's expiry rows and its collapse, inside its transaction, after the recipients'
/// cursor rows were bumped (and so locked) and their copies inserted. `users`, `seqs` and
/// `bumped` are in the same (lock) order; `bumped` is corrected for the replaced copies.
pub(super) async fn apply(
    tx: &mut sqlx::PgConnection,
    cmd: &PublishCommand,
    users: &[&str],
    seqs: &[Seq],
    bumped: &mut [Counts],
) -> Result<Replaced, StoreError> {
    let n = &cmd.notification;
    if let Some(t) = n.expires_at {
        sqlx::query(
            "INSERT INTO inbox_expiry (user_id, seq, expires_at)
             SELECT u, s, $3 FROM unnest($1::text[], $2::bigint[]) AS t(u, s)",
        )
        .bind(users)
        .bind(seqs)
        .bind(t)
        .execute(&mut *tx)
        .await?;
    }
    let mut replaced = Replaced::new();
    let Some(key) = &n.collapse_key else {
        return Ok(replaced);
    };
    // Only an unread copy is replaced: a read one stays where the user left it.
    let rows = sqlx::query(
        "WITH old AS (
           SELECT user_id, seq FROM inbox_collapse
           WHERE user_id = ANY($1::text[]) AND service = $2 AND collapse_key = $3)
         DELETE FROM inbox i USING old
         WHERE i.user_id = old.user_id AND i.seq = old.seq AND i.read_at IS NULL
         RETURNING i.user_id, i.seq, i.message_id, i.ordinal, i.legacy_id, true AS was_unread",
    )
    .bind(users)
    .bind(&cmd.service)
    .bind(key.as_str())
    .fetch_all(&mut *tx)
    .await?;
    for row in &rows {
        replaced.insert(row.try_get("user_id")?, changed_row(row)?);
    }
    if !replaced.is_empty() {
        let gone_users: Vec<&str> = replaced.keys().map(String::as_str).collect();
        let gone_seqs: Vec<i64> = replaced.values().map(|r| r.seq).collect();
        sqlx::query(
            "DELETE FROM inbox_expiry
             WHERE (user_id, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
        )
        .bind(&gone_users)
        .bind(&gone_seqs)
        .execute(&mut *tx)
        .await?;
        let messages: Vec<i64> = replaced.values().map(|r| r.message).collect();
        drop_unreferenced_messages(&mut *tx, &messages).await?;
        // Already locked by this transaction's bump: no new lock, no new order.
        let after = sqlx::query(
            "UPDATE user_cursors SET unread = unread - 1, version = version + 1
             WHERE user_id = ANY($1::text[]) RETURNING user_id, unread, version",
        )
        .bind(&gone_users)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_user: HashMap<String, (i64, i64)> = HashMap::with_capacity(after.len());
        for r in &after {
            by_user.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
        }
        for (u, counts) in users.iter().zip(bumped.iter_mut()) {
            if let Some((unread, version)) = by_user.get(*u) {
                counts.unread = *unread;
                counts.version = *version;
            }
        }
    }
    sqlx::query(
        "INSERT INTO inbox_collapse (user_id, service, collapse_key, seq)
         SELECT u, $2, $3, s FROM unnest($1::text[], $4::bigint[]) AS t(u, s)
         ON CONFLICT (user_id, service, collapse_key) DO UPDATE SET seq = EXCLUDED.seq",
    )
    .bind(users)
    .bind(&cmd.service)
    .bind(key.as_str())
    .bind(seqs)
    .execute(&mut *tx)
    .await?;
    Ok(replaced)
}

impl PgStore {
    pub(crate) async fn expire_due(&self, batch: u32) -> Result<Expired, StoreError> {
        retrying(|| self.try_expire_due(batch)).await
    }

    /// Locks in the order retention and mark-read take them: the copies first, then the
    /// users' cursor rows in user id order.
    async fn try_expire_due(&self, batch: u32) -> Result<Expired, StoreError> {
        let mut tx = self.pool.begin().await?;
        let due = sqlx::query(
            "DELETE FROM inbox_expiry WHERE (user_id, seq) IN (
                 SELECT user_id, seq FROM inbox_expiry WHERE expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING user_id, seq",
        )
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(Expired::default());
        }
        let mut due_users = Vec::with_capacity(due.len());
        let mut due_seqs = Vec::with_capacity(due.len());
        for r in &due {
            due_users.push(r.try_get::<String, _>(0)?);
            due_seqs.push(r.try_get::<i64, _>(1)?);
        }
        let rows = sqlx::query(
            "DELETE FROM inbox
             WHERE (user_id, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))
             RETURNING user_id, seq, message_id, ordinal, legacy_id, read_at IS NULL AS was_unread",
        )
        .bind(&due_users)
        .bind(&due_seqs)
        .fetch_all(&mut *tx)
        .await?;
        let mut per_user: BTreeMap<String, Vec<ChangedRow>> = BTreeMap::new();
        for row in &rows {
            let user: String = row.try_get("user_id")?;
            per_user.entry(user).or_default().push(changed_row(row)?);
        }
        let messages: Vec<i64> = per_user.values().flatten().map(|r| r.message).collect();
        if !messages.is_empty() {
            drop_unreferenced_messages(&mut tx, &messages).await?;
        }
        let after = lower_unread(&mut tx, &per_user).await?;
        let mut out = OutboxColumns::default();
        let mut retracted = Vec::with_capacity(per_user.len());
        for (user, rows) in per_user {
            let counts = after.get(&user).copied().unwrap_or_default();
            if self.outbox.is_on() && unread_among(&rows) > 0 {
                out.push(&user, OutboxKind::Unread, unread_payload(&counts));
            }
            let user = super::super::retention::stored_user(&user)?;
            retracted.push(Retracted {
                user,
                outcome: ChangeOutcome {
                    counts,
                    change: change_of(&self.ids, ChangeKind::Deleted, rows)?,
                },
            });
        }
        let announce = self.outbox.is_on();
        if announce {
            out.insert(&mut tx, &self.outbox).await?;
        }
        tx.commit().await?;
        if announce {
            self.outbox.poke();
        }
        Ok(Expired {
            due: due.len() as u64,
            retracted,
        })
    }
}
