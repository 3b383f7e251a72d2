//! Expiring and collapsing on SQLite (see `store::lifecycle`). The one writer connection
//! orders every write, so a collapse's read-then-delete sees nothing change under it.

use super::{insert_outbox, SqliteStore};
use crate::domain::{format_time, now_micros, ChangeKind, Counts, Seq};
use crate::store::changes::{change_of, unread_among, ChangeOutcome, ChangedRow, Retracted};
use crate::store::lifecycle::Expired;
use crate::store::outbox::unread_payload;
use crate::store::{OutboxKind, PublishCommand, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use std::collections::BTreeMap;

/// A deleted copy whose query also returned `was_unread`.
fn changed_row(row: &SqliteRow) -> Result<ChangedRow, StoreError> {
    super::changes::changed_row(row, row.try_get("was_unread")?)
}

/// One recipient's expiry row and collapse, in the publish's transaction, right after its
/// copy went in at `seq`; `counts` (after the bump) is corrected for a replaced copy.
pub(super) async fn apply(
    tx: &mut sqlx::SqliteConnection,
    cmd: &PublishCommand,
    user: &str,
    seq: Seq,
    counts: &mut Counts,
) -> Result<Option<ChangedRow>, StoreError> {
    let n = &cmd.notification;
    if let Some(t) = n.expires_at {
        sqlx::query("INSERT INTO inbox_expiry (user_id, seq, expires_at) VALUES (?1, ?2, ?3)")
            .bind(user)
            .bind(seq)
            .bind(format_time(&t))
            .execute(&mut *tx)
            .await?;
    }
    let Some(key) = &n.collapse_key else {
        return Ok(None);
    };
    // Only an unread copy is replaced: a read one stays where the user left it.
    let old = sqlx::query(
        "DELETE FROM inbox WHERE user_id = ?1 AND read_at IS NULL AND seq = (
             SELECT seq FROM inbox_collapse
             WHERE user_id = ?1 AND service = ?2 AND collapse_key = ?3)
         RETURNING seq, message_id, ordinal, legacy_id, 1 AS was_unread",
    )
    .bind(user)
    .bind(&cmd.service)
    .bind(key.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let replaced = old.as_ref().map(changed_row).transpose()?;
    if let Some(r) = &replaced {
        sqlx::query("DELETE FROM inbox_expiry WHERE user_id = ?1 AND seq = ?2")
            .bind(user)
            .bind(r.seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM messages WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM inbox WHERE message_id = ?1)",
        )
        .bind(r.message)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "UPDATE user_cursors SET unread = unread - 1, version = version + 1
             WHERE user_id = ?1 RETURNING unread, version",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        counts.unread = row.try_get(0)?;
        counts.version = row.try_get(1)?;
    }
    sqlx::query(
        "INSERT INTO inbox_collapse (user_id, service, collapse_key, seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, service, collapse_key) DO UPDATE SET seq = excluded.seq",
    )
    .bind(user)
    .bind(&cmd.service)
    .bind(key.as_str())
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    Ok(replaced)
}

impl SqliteStore {
    pub(crate) async fn expire_due(&self, batch: u32) -> Result<Expired, StoreError> {
        let now = format_time(&now_micros());
        let mut tx = self.writer.begin().await?;
        let due: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, seq FROM inbox_expiry WHERE expires_at <= ?1
             ORDER BY expires_at LIMIT ?2",
        )
        .bind(&now)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(Expired::default());
        }
        let mut per_user: BTreeMap<String, Vec<ChangedRow>> = BTreeMap::new();
        for (user, seq) in &due {
            sqlx::query("DELETE FROM inbox_expiry WHERE user_id = ?1 AND seq = ?2")
                .bind(user)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            let gone = sqlx::query(
                "DELETE FROM inbox WHERE user_id = ?1 AND seq = ?2
                 RETURNING seq, message_id, ordinal, legacy_id, read_at IS NULL AS was_unread",
            )
            .bind(user)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = gone {
                per_user
                    .entry(user.clone())
                    .or_default()
                    .push(changed_row(&row)?);
            }
        }
        let messages: Vec<i64> = per_user.values().flatten().map(|r| r.message).collect();
        sqlx::query(
            "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?1))
             AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = messages.id)",
        )
        .bind(serde_json::to_string(&messages).unwrap_or_else(|_| "[]".into()))
        .execute(&mut *tx)
        .await?;
        let mut retracted = Vec::with_capacity(per_user.len());
        for (user, rows) in per_user {
            let unread = unread_among(&rows);
            let row = sqlx::query(
                "UPDATE user_cursors SET unread = unread - ?2, version = version + 1
                 WHERE user_id = ?1 RETURNING unread, last_seq, version",
            )
            .bind(&user)
            .bind(unread)
            .fetch_one(&mut *tx)
            .await?;
            let counts = Counts {
                unread: row.try_get(0)?,
                seq: row.try_get(1)?,
                version: row.try_get(2)?,
            };
            let user = crate::store::retention::stored_user(&user)?;
            if unread > 0 && self.outbox.is_on() {
                let payload = unread_payload(&counts);
                insert_outbox(
                    &mut tx,
                    &self.outbox,
                    &user,
                    OutboxKind::Unread,
                    &payload,
                    &now,
                )
                .await?;
            }
            retracted.push(Retracted {
                user,
                outcome: ChangeOutcome {
                    counts,
                    change: change_of(&self.ids, ChangeKind::Deleted, rows)?,
                },
            });
        }
        tx.commit().await?;
        if self.outbox.is_on() {
            self.outbox.poke();
        }
        Ok(Expired {
            due: due.len() as u64,
            retracted,
        })
    }
}
