//! Archive, unarchive, delete and a service's retraction on SQLite (see `store::changes`).
//! One writer connection runs every write, so each transaction here sees nothing change
//! under it: the counts it takes are exact without row locks.

use super::{counts, insert_outbox, SqliteStore};
use crate::domain::{format_time, now_micros, ChangeKind, Counts, UserId};
use crate::store::changes::{
    change_of, unread_among, ChangeOutcome, ChangedRow, Retracted, Target,
};
use crate::store::outbox::unread_payload;
use crate::store::{OutboxKind, StoreError};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite};
use std::collections::BTreeMap;

/// The rows a target names, as a condition on `inbox`, with its parameters numbered from
/// `?first` on, bound by [`bind_target`]. Id lists travel as JSON arrays (SQLite has no
/// array parameters): derived ids as `[[seq, message, ordinal], …]`, legacy ones as strings.
fn target_sql(target: &Target, first: usize) -> String {
    match target {
        Target::UpTo(_) => format!("seq <= ?{first}"),
        Target::Ids(_) => format!(
            "((seq, message_id, ordinal) IN
                 (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
                  FROM json_each(?{first}))
              OR legacy_id IN (SELECT value FROM json_each(?{})))",
            first + 1
        ),
    }
}

fn bind_target<'q>(
    q: Query<'q, Sqlite, SqliteArguments<'q>>,
    target: &'q Target,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    match target {
        Target::UpTo(seq) => q.bind(*seq),
        Target::Ids(l) => {
            let derived: Vec<(i64, i64, i32)> = l
                .seqs
                .iter()
                .zip(&l.messages)
                .zip(&l.ordinals)
                .map(|((s, m), o)| (*s, *m, *o))
                .collect();
            let legacy: Vec<String> = l.legacy.iter().map(|u| u.to_string()).collect();
            q.bind(serde_json::to_string(&derived).unwrap_or_else(|_| "[]".into()))
                .bind(serde_json::to_string(&legacy).unwrap_or_else(|_| "[]".into()))
        }
    }
}

const RETURNING: &str = "RETURNING seq, message_id, ordinal, legacy_id";

pub(super) fn changed_row(row: &SqliteRow, was_unread: bool) -> Result<ChangedRow, StoreError> {
    let legacy: Option<String> = row.try_get("legacy_id")?;
    let legacy = legacy
        .map(|s| s.parse())
        .transpose()
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
    Ok(ChangedRow {
        seq: row.try_get("seq")?,
        message: row.try_get("message_id")?,
        ordinal: row.try_get("ordinal")?,
        legacy,
        was_unread,
    })
}

impl SqliteStore {
    pub(crate) async fn change(
        &self,
        user: &UserId,
        kind: ChangeKind,
        target: &Target,
    ) -> Result<ChangeOutcome, StoreError> {
        let now = format_time(&now_micros());
        let mut tx = self.writer.begin().await?;
        // ?2 is the time, bound to every statement (a statement that does not use it
        // still numbers its own parameters from ?3, like the others).
        let filter = target_sql(target, 3);
        let (rows, unread_delta) = match kind {
            ChangeKind::Archived => {
                let mark = format!(
                    "UPDATE inbox SET read_at = ?2
                     WHERE user_id = ?1 AND read_at IS NULL AND archived_at IS NULL AND {filter}"
                );
                let q = sqlx::query(&mark).bind(user.as_str()).bind(&now);
                let done = bind_target(q, target).execute(&mut *tx).await?;
                let sql = format!(
                    "UPDATE inbox SET archived_at = ?2
                     WHERE user_id = ?1 AND archived_at IS NULL AND {filter} {RETURNING}"
                );
                let q = sqlx::query(&sql).bind(user.as_str()).bind(&now);
                let rows = bind_target(q, target).fetch_all(&mut *tx).await?;
                let rows = rows
                    .iter()
                    .map(|r| changed_row(r, false))
                    .collect::<Result<Vec<_>, _>>()?;
                (
                    rows,
                    i64::try_from(done.rows_affected()).unwrap_or(i64::MAX),
                )
            }
            ChangeKind::Unarchived => {
                let sql = format!(
                    "UPDATE inbox SET archived_at = NULL
                     WHERE user_id = ?1 AND archived_at IS NOT NULL AND {filter} {RETURNING}"
                );
                let q = sqlx::query(&sql).bind(user.as_str()).bind(&now);
                let rows = bind_target(q, target).fetch_all(&mut *tx).await?;
                let rows = rows
                    .iter()
                    .map(|r| changed_row(r, false))
                    .collect::<Result<Vec<_>, _>>()?;
                (rows, 0)
            }
            ChangeKind::Deleted => {
                // RETURNING gives no expression of the old row on SQLite: read_at is the
                // deleted row's own column, which is what it was.
                let sql = format!(
                    "DELETE FROM inbox WHERE user_id = ?1 AND {filter} {RETURNING}, read_at"
                );
                let q = sqlx::query(&sql).bind(user.as_str()).bind(&now);
                let rows = bind_target(q, target).fetch_all(&mut *tx).await?;
                let rows = rows
                    .iter()
                    .map(|r| {
                        let read_at: Option<String> = r.try_get("read_at")?;
                        changed_row(r, read_at.is_none())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let delta = unread_among(&rows);
                if !rows.is_empty() {
                    let messages: Vec<i64> = rows.iter().map(|r| r.message).collect();
                    sqlx::query(
                        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?1))
                         AND NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.message_id = messages.id)",
                    )
                    .bind(serde_json::to_string(&messages).unwrap_or_else(|_| "[]".into()))
                    .execute(&mut *tx)
                    .await?;
                }
                (rows, delta)
            }
        };
        let counts = if rows.is_empty() {
            counts(&mut tx, user).await?
        } else {
            sqlx::query(
                "UPDATE user_cursors SET unread = unread - ?2, version = version + 1 WHERE user_id = ?1",
            )
            .bind(user.as_str())
            .bind(unread_delta)
            .execute(&mut *tx)
            .await?;
            counts(&mut tx, user).await?
        };
        let announce = unread_delta > 0 && self.outbox.is_on();
        if announce {
            insert_outbox(
                &mut tx,
                &self.outbox,
                user,
                OutboxKind::Unread,
                &unread_payload(&counts),
                &now,
            )
            .await?;
        }
        tx.commit().await?;
        if announce {
            self.outbox.poke();
        }
        Ok(ChangeOutcome {
            counts,
            change: change_of(&self.ids, kind, rows)?,
        })
    }

    pub(crate) async fn retract(
        &self,
        service: &str,
        message: i64,
    ) -> Result<Option<Vec<Retracted>>, StoreError> {
        let now = format_time(&now_micros());
        let mut tx = self.writer.begin().await?;
        let owned = sqlx::query("SELECT id FROM messages WHERE id = ?1 AND service = ?2")
            .bind(message)
            .bind(service)
            .fetch_optional(&mut *tx)
            .await?;
        if owned.is_none() {
            return Ok(None);
        }
        let sql = format!("DELETE FROM inbox WHERE message_id = ?1 {RETURNING}, read_at, user_id");
        let rows = sqlx::query(&sql).bind(message).fetch_all(&mut *tx).await?;
        let mut per_user: BTreeMap<String, Vec<ChangedRow>> = BTreeMap::new();
        for row in &rows {
            let user: String = row.try_get("user_id")?;
            let read_at: Option<String> = row.try_get("read_at")?;
            per_user
                .entry(user)
                .or_default()
                .push(changed_row(row, read_at.is_none())?);
        }
        sqlx::query("DELETE FROM messages WHERE id = ?1")
            .bind(message)
            .execute(&mut *tx)
            .await?;
        let mut retracted = Vec::with_capacity(per_user.len());
        let mut announce = false;
        for (user, rows) in per_user {
            let Ok(user) = UserId::parse(&user) else {
                continue;
            };
            let delta = unread_among(&rows);
            sqlx::query(
                "UPDATE user_cursors SET unread = unread - ?2, version = version + 1 WHERE user_id = ?1",
            )
            .bind(user.as_str())
            .bind(delta)
            .execute(&mut *tx)
            .await?;
            let counts: Counts = counts(&mut tx, &user).await?;
            if delta > 0 && self.outbox.is_on() {
                insert_outbox(
                    &mut tx,
                    &self.outbox,
                    &user,
                    OutboxKind::Unread,
                    &unread_payload(&counts),
                    &now,
                )
                .await?;
                announce = true;
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
        if announce {
            self.outbox.poke();
        }
        Ok(Some(retracted))
    }
}
