//! Archive, unarchive, delete and a service's retraction on Postgres (see `store::changes`).
//!
//! Locks are taken in the order mark-read takes them, inbox rows first and then the cursor
//! row, so these never deadlock with it; a retraction's cursor rows are locked in user id
//! order, as a publish locks its recipients', and a deadlock with anything else is retried.

use super::{counts, retrying, OutboxColumns, PgStore};
use crate::domain::{now_micros, ChangeKind, Counts, Seq, UserId};
use crate::store::changes::{
    change_of, unread_among, ChangeOutcome, ChangedRow, Retracted, Target,
};
use crate::store::outbox::unread_payload;
use crate::store::{OutboxKind, StoreError};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use std::collections::BTreeMap;

/// The rows a target names, as a condition on `inbox`, with its parameters numbered from
/// `$first` on, bound by [`bind_target`].
fn target_sql(target: &Target, first: usize) -> String {
    let p = |i: usize| first + i;
    match target {
        Target::UpTo(_) => format!("seq <= ${}", p(0)),
        // `seq = ANY` lets the primary key (user_id, seq) find the derived ids; the tuple
        // check then refuses an id whose message or ordinal does not match the row's.
        Target::Ids(_) => format!(
            "((seq = ANY(${0}::bigint[]) AND (seq, message_id, ordinal) IN
                 (SELECT * FROM unnest(${0}::bigint[], ${1}::bigint[], ${2}::int[])))
              OR legacy_id = ANY(${3}::uuid[]))",
            p(0),
            p(1),
            p(2),
            p(3)
        ),
    }
}

fn bind_target<'q>(
    q: Query<'q, Postgres, PgArguments>,
    target: &'q Target,
) -> Query<'q, Postgres, PgArguments> {
    match target {
        Target::UpTo(seq) => q.bind(*seq),
        Target::Ids(l) => q
            .bind(&l.seqs)
            .bind(&l.messages)
            .bind(&l.ordinals)
            .bind(&l.legacy),
    }
}

const RETURNING: &str =
    "RETURNING seq, message_id, ordinal, legacy_id, read_at IS NULL AS was_unread";

fn changed_row(row: &PgRow) -> Result<ChangedRow, sqlx::Error> {
    Ok(ChangedRow {
        seq: row.try_get("seq")?,
        message: row.try_get("message_id")?,
        ordinal: row.try_get("ordinal")?,
        legacy: row.try_get("legacy_id")?,
        was_unread: row.try_get("was_unread")?,
    })
}

impl PgStore {
    pub(crate) async fn change(
        &self,
        user: &UserId,
        kind: ChangeKind,
        target: &Target,
    ) -> Result<ChangeOutcome, StoreError> {
        if let Target::Ids(l) = target {
            if l.seqs.is_empty() && l.legacy.is_empty() {
                // No id could be the caller's: nothing to lock or write.
                let counts = self.counts(user).await?;
                return Ok(ChangeOutcome {
                    counts,
                    change: change_of(&self.ids, kind, Vec::new())?,
                });
            }
        }
        retrying(|| self.try_change(user, kind, target)).await
    }

    async fn try_change(
        &self,
        user: &UserId,
        kind: ChangeKind,
        target: &Target,
    ) -> Result<ChangeOutcome, StoreError> {
        let now: DateTime<Utc> = now_micros();
        let mut tx = self.pool.begin().await?;
        let mut newly_read = 0i64;
        let rows = match kind {
            ChangeKind::Archived => {
                // Archiving marks read. Counted by the statement that does it, as mark-read
                // counts: rows another transaction marked read meanwhile are not counted twice.
                let mark = format!(
                    "UPDATE inbox SET read_at = $2
                     WHERE user_id = $1 AND read_at IS NULL AND archived_at IS NULL AND {}",
                    target_sql(target, 3)
                );
                let q = sqlx::query(&mark).bind(user.as_str()).bind(now);
                let done = bind_target(q, target).execute(&mut *tx).await?;
                newly_read = i64::try_from(done.rows_affected()).unwrap_or(i64::MAX);
                let sql = format!(
                    "UPDATE inbox SET archived_at = $2
                     WHERE user_id = $1 AND archived_at IS NULL AND {} {RETURNING}",
                    target_sql(target, 3)
                );
                let q = sqlx::query(&sql).bind(user.as_str()).bind(now);
                bind_target(q, target).fetch_all(&mut *tx).await?
            }
            ChangeKind::Unarchived | ChangeKind::Deleted => {
                let sql = if kind == ChangeKind::Deleted {
                    format!(
                        "DELETE FROM inbox WHERE user_id = $1 AND {} {RETURNING}",
                        target_sql(target, 2)
                    )
                } else {
                    format!(
                        "UPDATE inbox SET archived_at = NULL
                         WHERE user_id = $1 AND archived_at IS NOT NULL AND {} {RETURNING}",
                        target_sql(target, 2)
                    )
                };
                let q = sqlx::query(&sql).bind(user.as_str());
                bind_target(q, target).fetch_all(&mut *tx).await?
            }
        };
        let rows = rows
            .iter()
            .map(changed_row)
            .collect::<Result<Vec<_>, _>>()?;
        let unread_delta = match kind {
            ChangeKind::Archived => newly_read,
            ChangeKind::Unarchived => 0,
            ChangeKind::Deleted => unread_among(&rows),
        };
        if kind == ChangeKind::Deleted && !rows.is_empty() {
            let messages: Vec<i64> = rows.iter().map(|r| r.message).collect();
            drop_unreferenced_messages(&mut tx, &messages).await?;
        }
        let counts = if rows.is_empty() {
            counts(&mut tx, user).await?
        } else {
            let row = sqlx::query(
                "UPDATE user_cursors SET unread = unread - $2, version = version + 1
                 WHERE user_id = $1 RETURNING unread, last_seq, version",
            )
            .bind(user.as_str())
            .bind(unread_delta)
            .fetch_one(&mut *tx)
            .await?;
            Counts {
                unread: row.try_get("unread")?,
                seq: Seq::new(row.try_get("last_seq")?),
                version: row.try_get("version")?,
            }
        };
        let announce = unread_delta > 0 && self.outbox.is_on();
        if announce {
            let mut out = OutboxColumns::default();
            out.push(user.as_str(), OutboxKind::Unread, unread_payload(&counts));
            out.insert(&mut tx, &self.outbox).await?;
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
        retrying(|| self.try_retract(service, message)).await
    }

    async fn try_retract(
        &self,
        service: &str,
        message: i64,
    ) -> Result<Option<Vec<Retracted>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let owned =
            sqlx::query("SELECT id FROM messages WHERE id = $1 AND service = $2 FOR UPDATE")
                .bind(message)
                .bind(service)
                .fetch_optional(&mut *tx)
                .await?;
        if owned.is_none() {
            return Ok(None);
        }
        let sql = format!("DELETE FROM inbox WHERE message_id = $1 {RETURNING}, user_id");
        let rows = sqlx::query(&sql).bind(message).fetch_all(&mut *tx).await?;
        let mut per_user: BTreeMap<String, Vec<ChangedRow>> = BTreeMap::new();
        for row in &rows {
            let user: String = row.try_get("user_id")?;
            per_user.entry(user).or_default().push(changed_row(row)?);
        }
        sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(message)
            .execute(&mut *tx)
            .await?;
        let after = lower_unread(&mut tx, &per_user).await?;
        let mut out = OutboxColumns::default();
        let mut retracted = Vec::with_capacity(per_user.len());
        for (user, rows) in per_user {
            let counts = after.get(&user).copied().unwrap_or_default();
            if self.outbox.is_on() && unread_among(&rows) > 0 {
                out.push(&user, OutboxKind::Unread, unread_payload(&counts));
            }
            let Ok(user) = UserId::parse(&user) else {
                continue;
            };
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
        Ok(Some(retracted))
    }
}

/// Deletes the messages no inbox row refers to any more. Each is locked first, so of two
/// users deleting the last two copies at once the second to lock sees the first's delete
/// committed and drops the message.
pub(super) async fn drop_unreferenced_messages(
    tx: &mut sqlx::PgConnection,
    messages: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE")
        .bind(messages)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM messages m WHERE m.id = ANY($1::bigint[])
         AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = m.id)",
    )
    .bind(messages)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Locks the users' cursor rows (in user id order, as a publish locks its recipients) and
/// lowers each one's unread count by the unread copies among its removed rows: the step every
/// removal of other users' copies shares (a service's retraction, an expiry). The counts after.
pub(super) async fn lower_unread(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    per_user: &BTreeMap<String, Vec<ChangedRow>>,
) -> Result<BTreeMap<String, Counts>, StoreError> {
    let users: Vec<&str> = per_user.keys().map(String::as_str).collect();
    let deltas: Vec<i64> = per_user.values().map(|r| unread_among(r)).collect();
    sqlx::query(
        "SELECT 1 FROM user_cursors WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE",
    )
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    let updated = sqlx::query(
        "UPDATE user_cursors c SET unread = c.unread - d.n, version = c.version + 1
         FROM unnest($1::text[], $2::bigint[]) AS d(u, n)
         WHERE c.user_id = d.u RETURNING c.user_id, c.unread, c.last_seq, c.version",
    )
    .bind(&users)
    .bind(&deltas)
    .fetch_all(&mut **tx)
    .await?;
    let mut after = BTreeMap::new();
    for row in &updated {
        after.insert(
            row.try_get("user_id")?,
            Counts {
                unread: row.try_get("unread")?,
                seq: Seq::new(row.try_get("last_seq")?),
                version: row.try_get("version")?,
            },
        );
    }
    Ok(after)
}
