//! Retention on SQLite: see [`crate::store::retention`] for the rules. All writes go through
//! the one writer connection, so a step is a short transaction queued between publishes, and
//! there is nobody to deadlock with.

use super::{stored_user, CountCursor, Pruned, Targets, COUNT_USERS_PER_STEP};
use crate::domain::{format_time, Counts, Seq, UserId};
use crate::store::outbox::unread_payload;
use crate::store::{OutboxKind, SqliteStore, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::BTreeSet;

impl SqliteStore {
    pub(crate) async fn history_floor(&self, user: &UserId) -> Result<Seq, StoreError> {
        let floor: Option<i64> =
            sqlx::query_scalar("SELECT pruned_through FROM user_cursors WHERE user_id = ?1")
                .bind(user.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(Seq::new(floor.unwrap_or(0)))
    }

    pub(crate) async fn prune_older_than(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        let young: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE created_at >= ?1 ORDER BY id LIMIT 1",
        )
        .bind(format_time(&cutoff))
        .fetch_optional(&self.reader)
        .await?;
        let rows = sqlx::query(
            "SELECT user_id, max(seq) FROM (
                 SELECT user_id, seq FROM inbox WHERE message_id < ?1
                 ORDER BY message_id LIMIT ?2
             ) GROUP BY user_id",
        )
        .bind(young.unwrap_or(i64::MAX))
        .bind(i64::from(batch))
        .fetch_all(&self.reader)
        .await?;
        let targets = rows
            .iter()
            .map(|r| {
                Ok((
                    stored_user(&r.try_get::<String, _>(0)?)?,
                    Seq::new(r.try_get(1)?),
                ))
            })
            .collect::<Result<Targets, StoreError>>()?;
        self.prune(&targets).await
    }

    pub(crate) async fn prune_beyond(
        &self,
        keep: i64,
        batch: u32,
        cursor: CountCursor,
    ) -> Result<(Pruned, Option<CountCursor>), StoreError> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM user_cursors
             WHERE last_seq - pruned_through > ?1 AND (?2 IS NULL OR user_id > ?2)
             ORDER BY user_id LIMIT ?3",
        )
        .bind(keep)
        .bind(cursor.0.as_ref().map(UserId::as_str))
        .bind(COUNT_USERS_PER_STEP)
        .fetch_all(&self.reader)
        .await?;
        let mut budget = i64::from(batch);
        let mut targets = Targets::new();
        let mut next = None;
        for user in users {
            let row = sqlx::query(
                "SELECT max(seq), count(*) FROM (
                     SELECT seq FROM inbox WHERE user_id = ?1 AND seq <= (
                         SELECT seq FROM inbox WHERE user_id = ?1
                         ORDER BY seq DESC LIMIT 1 OFFSET ?2)
                     ORDER BY seq LIMIT ?3)",
            )
            .bind(&user)
            .bind(keep)
            .bind(budget)
            .fetch_one(&self.reader)
            .await?;
            let (upto, count): (Option<i64>, i64) = (row.try_get(0)?, row.try_get(1)?);
            let user = stored_user(&user)?;
            if let Some(upto) = upto {
                targets.push((user.clone(), Seq::new(upto)));
            }
            budget -= count;
            if budget <= 0 {
                break;
            }
            next = Some(CountCursor(Some(user)));
        }
        if budget <= 0 && next.is_none() {
            next = Some(cursor);
        }
        Ok((self.prune(&targets).await?, next))
    }

    async fn prune(&self, targets: &Targets) -> Result<Pruned, StoreError> {
        if targets.is_empty() {
            return Ok(Pruned::default());
        }
        let mut tx = self.writer.begin().await?;
        let mut pruned = Pruned::default();
        let mut messages = BTreeSet::new();
        for (user, upto) in targets {
            // Read, then delete, in the one writer's transaction: SQLite's RETURNING on a
            // WITHOUT ROWID table has reported columns of the deleted row wrongly (3.40 says
            // `read_at IS NULL` is false for an unread row), and the counter must be exact.
            let gone = sqlx::query(
                "SELECT seq, message_id, read_at IS NULL FROM inbox
                 WHERE user_id = ?1 AND seq <= ?2",
            )
            .bind(user.as_str())
            .bind(upto.get())
            .fetch_all(&mut *tx)
            .await?;
            if gone.is_empty() {
                continue;
            }
            sqlx::query("DELETE FROM inbox WHERE user_id = ?1 AND seq <= ?2")
                .bind(user.as_str())
                .bind(upto.get())
                .execute(&mut *tx)
                .await?;
            // The collapse keys that pointed at pruned copies go with them (see Postgres).
            sqlx::query("DELETE FROM inbox_collapse WHERE user_id = ?1 AND seq <= ?2")
                .bind(user.as_str())
                .bind(upto.get())
                .execute(&mut *tx)
                .await?;
            let mut unread = 0i64;
            let mut top = 0i64;
            for r in &gone {
                top = top.max(r.try_get(0)?);
                messages.insert(r.try_get::<i64, _>(1)?);
                if r.try_get::<i64, _>(2)? != 0 {
                    unread += 1;
                }
            }
            pruned.rows += gone.len() as u64;
            let row = sqlx::query(
                "UPDATE user_cursors
                 SET unread = unread - ?1, version = version + 1,
                     pruned_through = max(pruned_through, ?2)
                 WHERE user_id = ?3
                 RETURNING unread, last_seq, version",
            )
            .bind(unread)
            .bind(top)
            .bind(user.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let counts = Counts {
                unread: row.try_get(0)?,
                seq: Seq::new(row.try_get(1)?),
                version: row.try_get(2)?,
            };
            if self.outbox.is_on() {
                crate::store::sqlite::insert_outbox(
                    &mut tx,
                    &self.outbox,
                    user,
                    OutboxKind::Unread,
                    &unread_payload(&counts),
                    &format_time(&Utc::now()),
                )
                .await?;
            }
            pruned.changed.push((user.clone(), counts));
        }
        for id in messages {
            pruned.messages += sqlx::query(
                "DELETE FROM messages WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM inbox WHERE message_id = ?1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        if self.outbox.is_on() && !pruned.changed.is_empty() {
            self.outbox.poke();
        }
        Ok(pruned)
    }
}
