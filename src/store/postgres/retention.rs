//! Retention on Postgres: see [`crate::store::retention`] for the rules.

use super::{stored_user, CountCursor, Pruned, Targets, COUNT_USERS_PER_STEP};
use crate::domain::{Counts, Seq, UserId};
use crate::store::outbox::unread_payload;
use crate::store::pg_rows::OutboxColumns;
use crate::store::{OutboxKind, PgStore, StoreError};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};

/// The advisory lock key of retention, one per database: "tidings" and "R" in ASCII, so it
/// is recognisable in `pg_locks` and unlikely to meet another application's key.
const LOCK_KEY: i64 = 0x7469_6469_6e67_7352;

/// Attempts at a step Postgres aborted to break a deadlock or a serialization conflict.
const ATTEMPTS: u32 = 3;

/// The right to prune: a session-level advisory lock held on a connection taken out of the
/// pool for good. If the replica dies, its connection closes and Postgres drops the lock,
/// so another replica takes over at its next run; a lock can never be left behind in a
/// pooled connection.
#[derive(Debug)]
pub struct RetentionLease {
    conn: PgConnection,
}

impl RetentionLease {
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut self.conn)
            .await;
        if let Err(e) = unlocked {
            tracing::debug!(error = %e, "could not unlock retention; closing its connection");
        }
        // Closing releases the lock whatever happened above.
        let _ = self.conn.close().await;
    }
}

impl PgStore {
    pub(crate) async fn history_floor(&self, user: &UserId) -> Result<Seq, StoreError> {
        let floor: Option<i64> =
            sqlx::query_scalar("SELECT pruned_through FROM user_cursors WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(&self.read_pool)
                .await?;
        Ok(Seq::new(floor.unwrap_or(0)))
    }

    pub(crate) async fn retention_lease(&self) -> Result<Option<RetentionLease>, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if locked {
            Ok(Some(RetentionLease { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    pub(crate) async fn prune_older_than(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        // Message ids grow with time: the first young message bounds the old ones, and the
        // scan from the oldest stops there (what it passes over is about to be pruned).
        let young: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM messages WHERE created_at >= $1 ORDER BY id LIMIT 1",
        )
        .bind(cutoff)
        .fetch_optional(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT user_id, max(seq) FROM (
                 SELECT user_id, seq FROM inbox WHERE message_id < $1
                 ORDER BY message_id LIMIT $2
             ) t GROUP BY user_id",
        )
        .bind(young.unwrap_or(i64::MAX))
        .bind(i64::from(batch))
        .fetch_all(&self.pool)
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
        // last_seq - pruned_through bounds what a user holds from above (deleted rows make
        // it smaller still), so only those users are read row by row.
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM user_cursors
             WHERE last_seq - pruned_through > $1 AND ($2::text IS NULL OR user_id > $2)
             ORDER BY user_id LIMIT $3",
        )
        .bind(keep)
        .bind(cursor.0.as_ref().map(UserId::as_str))
        .bind(COUNT_USERS_PER_STEP)
        .fetch_all(&self.read_pool)
        .await?;
        let mut budget = i64::from(batch);
        let mut targets = Targets::new();
        // Where the next step starts: after the last user whose excess was pruned whole.
        let mut next = None;
        for user in users {
            // The newest seq beyond the `keep` newest, then at most `budget` rows up to it.
            let row = sqlx::query(
                "SELECT max(seq), count(*) FROM (
                     SELECT seq FROM inbox WHERE user_id = $1 AND seq <= (
                         SELECT seq FROM inbox WHERE user_id = $1
                         ORDER BY seq DESC OFFSET $2 LIMIT 1)
                     ORDER BY seq LIMIT $3) t",
            )
            .bind(&user)
            .bind(keep)
            .bind(budget)
            .fetch_one(&self.read_pool)
            .await?;
            let (upto, count): (Option<i64>, i64) = (row.try_get(0)?, row.try_get(1)?);
            let user = stored_user(&user)?;
            if let Some(upto) = upto {
                targets.push((user.clone(), Seq::new(upto)));
            }
            budget -= count;
            if budget <= 0 {
                // This user may have more beyond its newest `keep`: the next step sees it again.
                break;
            }
            next = Some(CountCursor(Some(user)));
        }
        if budget <= 0 && next.is_none() {
            next = Some(cursor);
        }
        Ok((self.prune(&targets).await?, next))
    }

    /// Deletes every target user's rows at or below its seq, in one short transaction.
    async fn prune(&self, targets: &Targets) -> Result<Pruned, StoreError> {
        if targets.is_empty() {
            return Ok(Pruned::default());
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_prune(targets).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if tries < ATTEMPTS
                        && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    tracing::debug!(code = ?e.code(), tries, "retrying a retention step");
                }
                other => return other,
            }
        }
    }

    async fn try_prune(&self, targets: &Targets) -> Result<Pruned, StoreError> {
        let users: Vec<&str> = targets.iter().map(|(u, _)| u.as_str()).collect();
        let upto: Vec<i64> = targets.iter().map(|(_, s)| s.get()).collect();
        let mut tx = self.pool.begin().await?;
        // Old rows first: no publish writes them, so this waits on nobody a publish holds.
        let gone = sqlx::query(
            "WITH gone AS (
                 DELETE FROM inbox i USING unnest($1::text[], $2::bigint[]) AS t(user_id, upto)
                 WHERE i.user_id = t.user_id AND i.seq <= t.upto
                 RETURNING i.user_id, i.seq, i.message_id, i.read_at IS NULL AS unread
             )
             SELECT user_id, count(*) FILTER (WHERE unread), max(seq),
                    array_agg(DISTINCT message_id), count(*)
             FROM gone GROUP BY user_id ORDER BY user_id",
        )
        .bind(&users)
        .bind(&upto)
        .fetch_all(&mut *tx)
        .await?;
        let mut touched = Vec::with_capacity(gone.len());
        let mut unread = Vec::with_capacity(gone.len());
        let mut top = Vec::with_capacity(gone.len());
        let mut messages: Vec<i64> = Vec::new();
        let mut rows = 0u64;
        for r in &gone {
            touched.push(r.try_get::<String, _>(0)?);
            unread.push(r.try_get::<i64, _>(1)?);
            top.push(r.try_get::<i64, _>(2)?);
            messages.extend(r.try_get::<Vec<i64>, _>(3)?);
            rows += u64::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0);
        }
        if touched.is_empty() {
            tx.commit().await?;
            return Ok(Pruned::default());
        }
        // Then the cursors, in user id order as a publish locks them.
        sqlx::query(
            "SELECT 1 FROM user_cursors WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE",
        )
        .bind(&touched)
        .execute(&mut *tx)
        .await?;
        // The collapse keys that pointed at pruned copies go with them, or `inbox_collapse`
        // would keep a row for every key ever used. After the cursor locks: a publish writes
        // these rows while holding its recipient's cursor lock, so taking them first could
        // deadlock with it.
        sqlx::query(
            "DELETE FROM inbox_collapse c USING unnest($1::text[], $2::bigint[]) AS t(user_id, top)
             WHERE c.user_id = t.user_id AND c.seq <= t.top",
        )
        .bind(&touched)
        .bind(&top)
        .execute(&mut *tx)
        .await?;
        let counted = sqlx::query(
            "UPDATE user_cursors c
             SET unread = c.unread - t.unread, version = c.version + 1,
                 pruned_through = GREATEST(c.pruned_through, t.top)
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, unread, top)
             WHERE c.user_id = t.user_id
             RETURNING c.user_id, c.unread, c.last_seq, c.version",
        )
        .bind(&touched)
        .bind(&unread)
        .bind(&top)
        .fetch_all(&mut *tx)
        .await?;
        messages.sort_unstable();
        messages.dedup();
        let dropped = sqlx::query(
            "DELETE FROM messages m WHERE m.id = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = m.id)",
        )
        .bind(&messages)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut changed = Vec::with_capacity(counted.len());
        for r in &counted {
            changed.push((
                stored_user(&r.try_get::<String, _>(0)?)?,
                Counts {
                    unread: r.try_get(1)?,
                    seq: Seq::new(r.try_get(2)?),
                    version: r.try_get(3)?,
                },
            ));
        }
        let announce = self.outbox.is_on();
        if announce {
            // The MQTT bridge's unread topic (and the Web Push badge) follows every change
            // of a count.
            let mut out = OutboxColumns::default();
            for (u, c) in &changed {
                out.push(u.as_str(), OutboxKind::Unread, unread_payload(c));
            }
            out.insert(&mut tx, &self.outbox).await?;
        }
        tx.commit().await?;
        if announce {
            self.outbox.poke();
        }
        Ok(Pruned {
            rows,
            messages: dropped,
            changed,
        })
    }
}
