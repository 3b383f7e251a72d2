//! The production backend: Postgres, shared by every replica.
//!
//! A publish is two statements whatever the number of recipients: one bumps every
//! recipient's cursor row (locking them in sorted order), one inserts every copy from
//! arrays. A transaction that loses a deadlock or serialization race is retried whole.

mod changes;
pub(super) mod lifecycle;

use super::group_commit::GroupCommit;
use super::outbox::{unread_payload, OutboxChannel};
use super::pg_rows::{ordinal, OutboxColumns};
use super::{
    replay, stored_id, Counts, IdLookup, ListQuery, MarkRead, Outbox, OutboxKind, OutboxRow, Page,
    PreparedPublish, PublishCommand, PublishOutcome, ReadOutcome, StoreError,
};
use crate::domain::{now_micros, IdKey, Notification, Seq, TopicName, UserId};
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// Writes (publish, mark read) and reads (listing, replay, catch-up) use separate pools,
/// so a storm of reconnecting clients replaying their backlog can never starve publishing
/// of connections: the notification that the clients are waiting for must still commit.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    pub(super) read_pool: PgPool,
    pub(super) group: GroupCommit,
    pub(super) outbox: Outbox,
    /// The bridges' own connections: a lease holds one for as long as the broker (or the
    /// push services) take with a batch, which must never take a connection publishing needs.
    pub(super) outbox_pool: Option<PgPool>,
    /// Encrypts the notification ids handed out; the same on every replica.
    pub(super) ids: IdKey,
}

/// Rows of the outbox window a lease looks at to find users with work: the oldest first, so
/// no user waits behind newer rows, and bounded, so a huge backlog costs no more per lease.
const LEASE_WINDOW_PER_USER: i64 = 16;
/// A lease that outlives this (a replica frozen mid-batch) is ended by Postgres, so its
/// users go to other workers.
const LEASE_TIMEOUT: &str = "60s";

/// A notification as the inbox shows it: the recipient's row joined to its message.
pub(super) const COLUMNS: &str =
    "i.seq, i.message_id, i.ordinal, i.legacy_id, i.read_at, i.archived_at,
     m.type, m.title, m.body, m.data, m.link, m.created_at, m.topic, x.expires_at";
/// With the copy's expiry, if it has one (a primary-key lookup; see [`ALIVE`]).
pub(super) const FROM: &str = "inbox i JOIN messages m ON m.id = i.message_id
     LEFT JOIN inbox_expiry x ON x.user_id = i.user_id AND x.seq = i.seq";
/// Leaves out copies whose time has passed but that the clean-up has not deleted yet: no
/// read returns an expired notification (issue 26).
pub(super) const ALIVE: &str = "(x.expires_at IS NULL OR x.expires_at > now())";
const ATTEMPTS: usize = 5;

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        outbox: Outbox,
        shutdown: &Shutdown,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("tidings");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        // A later release's migrations, already applied by one of its replicas during a
        // rolling upgrade (or before a rollback), are not an error: every migration is
        // additive for the release before it (docs/upgrading.md), so this one still works.
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let ids = super::load_id_key(&pool).await?;
        let read_pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone().application_name("tidings-read"))
            .await?;
        let outbox_pool = if outbox.is_on() {
            Some(
                PgPoolOptions::new()
                    // A lease each for the MQTT and the Web Push sender, and their housekeeping.
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options.application_name("tidings-outbox"))
                    .await?,
            )
        } else {
            None
        };
        let group = GroupCommit::start(pool.clone(), outbox.clone(), ids.clone(), shutdown);
        Ok(Self {
            pool,
            read_pool,
            group,
            outbox,
            outbox_pool,
            ids,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read_pool).await?;
        Ok(())
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        // Idempotent and scheduled publishes take the single-request path: the claim of the
        // key or the schedule row must be in the publish's own transaction. So do expiring and
        // collapsing ones: a collapse deletes and counts under the recipients' cursor locks
        // before it can answer, which the group commit's single statement does not express
        // (see `lifecycle`).
        if cmd.idempotency.is_none() && cmd.schedule.is_none() && !cmd.notification.has_lifecycle()
        {
            return self.group.publish(cmd).await;
        }
        retrying(|| self.try_publish(cmd)).await
    }

    async fn try_publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        let mut prep = PreparedPublish::new(cmd, &self.ids);
        let mut tx = self.pool.begin().await?;
        if let Some(claim) = &cmd.schedule {
            super::scheduled::pg_claim(&mut tx, claim).await?;
        }

        if let Some(idem) = &cmd.idempotency {
            // Blocks on a concurrent first use of the same key until it commits, then sees it.
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (service, key, fingerprint, response, created_at)
                 VALUES ($1, $2, $3, NULL, $4)
                 ON CONFLICT (service, key) DO UPDATE
                   SET fingerprint = EXCLUDED.fingerprint, response = NULL, created_at = EXCLUDED.created_at
                   WHERE idempotency_keys.created_at < $5",
            )
            .bind(&cmd.service)
            .bind(idem.key.as_str())
            .bind(&idem.fingerprint)
            .bind(prep.created_at)
            .bind(super::idempotency_cutoff())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                let row = sqlx::query(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE service = $1 AND key = $2",
                )
                .bind(&cmd.service)
                .bind(idem.key.as_str())
                .fetch_one(&mut *tx)
                .await?;
                let fingerprint: String = row.try_get(0)?;
                let response: Option<String> = row.try_get(1)?;
                return match response {
                    Some(r) if fingerprint == idem.fingerprint => replay(&r),
                    _ => Err(StoreError::IdempotencyMismatch),
                };
            }
        }

        // Preferences, on this (idempotent, single-request) path: lock every recipient's
        // cursor row in sorted order first, then read their preferences in a statement of its
        // own, whose snapshot is taken after the locks: it sees every `PUT` that committed
        // before, and a `PUT` still running waits for this commit (it takes the same lock).
        if !cmd.notification.critical {
            let all: Vec<&str> = prep.rows.iter().map(|(u, _)| u.as_str()).collect();
            sqlx::query(
                "INSERT INTO user_cursors (user_id, last_seq, unread, version)
                 SELECT u, 0, 0, 0 FROM unnest($1::text[]) WITH ORDINALITY AS t(u, ord) ORDER BY ord
                 ON CONFLICT (user_id) DO UPDATE SET last_seq = user_cursors.last_seq",
            )
            .bind(&all)
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT user_id, document FROM preferences WHERE user_id = ANY($1)")
                    .bind(&all)
                    .fetch_all(&mut *tx)
                    .await?;
            if !rows.is_empty() {
                let mut prefs = HashMap::with_capacity(rows.len());
                for (u, d) in rows {
                    let p = super::preferences::decode(&u, &d)?;
                    prefs.insert(u, std::sync::Arc::new(p));
                }
                prep.mute(|u| prefs.get(u).cloned());
            }
        }
        if prep.rows.is_empty() {
            // Every recipient muted it: no message row is left behind without copies.
            let outcome = prep.outcome(0, &[])?;
            finish_idempotency(&mut tx, cmd, &outcome).await?;
            tx.commit().await?;
            return Ok(outcome);
        }

        let users: Vec<&str> = prep.rows.iter().map(|(u, _)| u.as_str()).collect();
        let ordinals: Vec<i32> = prep
            .rows
            .iter()
            .map(|(_, o)| ordinal(*o))
            .collect::<Result<_, _>>()?;
        let bumped_rows = sqlx::query(
            "INSERT INTO user_cursors (user_id, last_seq, unread, version)
             SELECT u, 1, 1, 1 FROM unnest($1::text[]) WITH ORDINALITY AS t(u, ord) ORDER BY ord
             ON CONFLICT (user_id) DO UPDATE
               SET last_seq = user_cursors.last_seq + 1, unread = user_cursors.unread + 1,
                   version = user_cursors.version + 1
             RETURNING user_id, last_seq, unread, version",
        )
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_user: HashMap<String, Counts> = HashMap::with_capacity(bumped_rows.len());
        for r in &bumped_rows {
            let counts = Counts {
                seq: r.try_get(1)?,
                unread: r.try_get(2)?,
                version: r.try_get(3)?,
            };
            by_user.insert(r.try_get(0)?, counts);
        }
        let mut bumped = Vec::with_capacity(users.len());
        for u in &users {
            let counts = by_user.get(*u).copied().ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol(format!("no cursor returned for {u}")))
            })?;
            bumped.push(counts);
        }
        let seqs: Vec<Seq> = bumped.iter().map(|c| c.seq).collect();

        let n = &cmd.notification;
        let message: i64 = sqlx::query_scalar(
            "INSERT INTO messages (service, type, title, body, data, link, created_at, topic)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) RETURNING id",
        )
        .bind(&cmd.service)
        .bind(n.kind.as_str())
        .bind(n.title.as_str())
        .bind(n.body.as_ref().map(|b| b.as_str()))
        .bind(prep.data_json())
        .bind(n.link.as_ref().map(|l| l.as_str()))
        .bind(prep.created_at)
        .bind(n.topic.as_ref().map(|t| t.as_str()))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO inbox (user_id, seq, message_id, ordinal)
             SELECT u, s, $3, o FROM unnest($1::text[], $2::bigint[], $4::int[]) AS t(u, s, o)",
        )
        .bind(&users)
        .bind(&seqs)
        .bind(message)
        .bind(&ordinals)
        .execute(&mut *tx)
        .await?;

        let replaced = lifecycle::apply(&mut tx, cmd, &users, &seqs, &mut bumped).await?;
        let mut outcome = prep.outcome(message, &bumped)?;
        super::lifecycle::attach(&self.ids, &mut outcome, replaced)?;
        if self.outbox.is_on() {
            let mut rows = OutboxColumns::default();
            for d in &outcome.deliveries {
                for (channel, kind, payload) in
                    prep.outbox_rows(d.recipient.as_str(), &d.notification, &d.counts)
                {
                    rows.push_on(channel, d.recipient.as_str(), kind, payload);
                }
            }
            rows.insert(&mut tx, &self.outbox).await?;
            super::preferences::pg_record_all_holds(&mut tx, &self.outbox, std::iter::once(&prep))
                .await?;
        }
        finish_idempotency(&mut tx, cmd, &outcome).await?;
        tx.commit().await?;
        self.outbox.poke();
        Ok(outcome)
    }

    /// A page of the inbox. The read runs on a task of its own, to its end, even when the
    /// caller stops waiting (a client gone, a stream ended): sqlx's `begin()` is not
    /// cancel-safe, and a read dropped between its `BEGIN` and sqlx's note of it returned
    /// the connection to the pool inside an open transaction, so the next read on it failed
    /// ("SET TRANSACTION ISOLATION LEVEL must be called before any query", a 500).
    pub async fn list(&self, user: &UserId, q: ListQuery) -> Result<Page, StoreError> {
        let store = self.clone();
        let user = user.clone();
        tokio::spawn(async move { store.list_in_snapshot(&user, q).await })
            .await
            .map_err(|e| {
                StoreError::Database(sqlx::Error::Protocol(format!("the inbox read failed: {e}")))
            })?
    }

    async fn list_in_snapshot(&self, user: &UserId, q: ListQuery) -> Result<Page, StoreError> {
        // One snapshot for the page and the counts, so they agree with each other.
        let mut tx = self.read_pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let (filter, order, bound, limit, unread_only) = match q {
            ListQuery::After {
                after,
                limit,
                unread_only,
            } => ("i.seq > $2", "ASC", after, limit, unread_only),
            ListQuery::Before {
                before,
                limit,
                unread_only,
                archived,
            } => (
                if archived {
                    "i.seq < $2 AND i.archived_at IS NOT NULL"
                } else {
                    "i.seq < $2 AND i.archived_at IS NULL"
                },
                "DESC",
                before.unwrap_or(Seq::MAX),
                limit,
                unread_only,
            ),
        };
        let unread_filter = if unread_only {
            "AND i.read_at IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM {FROM} WHERE i.user_id = $1 AND {filter} {unread_filter} AND {ALIVE}
             ORDER BY i.seq {order} LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .bind(bound)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let notifications = rows
            .iter()
            .map(|r| decode(r, &self.ids))
            .collect::<Result<Vec<_>, _>>()?;
        let counts = counts(&mut tx, user).await?;
        tx.commit().await?;
        Ok(Page {
            notifications,
            counts,
            floor: Seq::ZERO,
        })
    }

    pub async fn counts(&self, user: &UserId) -> Result<Counts, StoreError> {
        let mut conn = self.read_pool.acquire().await?;
        counts(&mut conn, user).await
    }

    pub async fn mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        retrying(|| self.try_mark_read(user, what)).await
    }

    async fn try_mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        let now = now_micros();
        let mut tx = self.pool.begin().await?;
        let changed = match what {
            MarkRead::Ids(ids) => {
                let l = IdLookup::new(ids, &self.ids);
                sqlx::query(&format!(
                    "UPDATE inbox SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL AND {BY_IDS}"
                ))
                .bind(now)
                .bind(user.as_str())
                .bind(&l.seqs)
                .bind(&l.messages)
                .bind(&l.ordinals)
                .bind(&l.legacy)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
            MarkRead::UpTo(seq) => sqlx::query(
                "UPDATE inbox SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL AND seq <= $3",
            )
            .bind(now)
            .bind(user.as_str())
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if changed > 0 {
            sqlx::query("UPDATE user_cursors SET unread = unread - $1, version = version + 1 WHERE user_id = $2")
                .bind(i64::try_from(changed).unwrap_or(i64::MAX))
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let counts = counts(&mut tx, user).await?;
        let announce = changed > 0 && self.outbox.is_on();
        if announce {
            let mut rows = OutboxColumns::default();
            rows.push(user.as_str(), OutboxKind::Unread, unread_payload(&counts));
            rows.insert(&mut tx, &self.outbox).await?;
        }
        tx.commit().await?;
        if announce {
            self.outbox.poke();
        }
        Ok(ReadOutcome { counts, changed })
    }

    pub async fn subscribe(&self, topic: &TopicName, users: &[UserId]) -> Result<u64, StoreError> {
        let users: Vec<&str> = users.iter().map(UserId::as_str).collect();
        Ok(sqlx::query(
            "INSERT INTO topic_subscribers (topic, user_id, created_at)
             SELECT $1, u, now() FROM unnest($2::text[]) AS t(u)
             ON CONFLICT DO NOTHING",
        )
        .bind(topic.as_str())
        .bind(&users)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn unsubscribe(
        &self,
        topic: &TopicName,
        users: &[UserId],
    ) -> Result<u64, StoreError> {
        let users: Vec<&str> = users.iter().map(UserId::as_str).collect();
        Ok(sqlx::query(
            "DELETE FROM topic_subscribers WHERE topic = $1 AND user_id = ANY($2::text[])",
        )
        .bind(topic.as_str())
        .bind(&users)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn topic_subscribers(
        &self,
        topic: &TopicName,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM topic_subscribers WHERE topic = $1 AND user_id > $2
             ORDER BY user_id LIMIT $3",
        )
        .bind(topic.as_str())
        .bind(after.map_or("", UserId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read_pool)
        .await?;
        Ok(rows.iter().filter_map(|u| UserId::parse(u).ok()).collect())
    }

    pub async fn is_topic_subscriber(
        &self,
        topic: &TopicName,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM topic_subscribers WHERE topic = $1 AND user_id = $2")
                .bind(topic.as_str())
                .bind(user.as_str())
                .fetch_optional(&self.read_pool)
                .await?
                .is_some(),
        )
    }

    pub async fn topic_size(&self, topic: &TopicName) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM topic_subscribers WHERE topic = $1")
                .bind(topic.as_str())
                .fetch_one(&self.read_pool)
                .await?,
        )
    }

    pub async fn purge_idempotency_keys(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.read_pool.close().await;
        if let Some(p) = &self.outbox_pool {
            p.close().await;
        }
    }

    pub(super) fn outbox_pool(&self) -> &PgPool {
        self.outbox_pool.as_ref().unwrap_or(&self.pool)
    }

    pub async fn outbox_lease(&self, users: u32, per_user: u32) -> Result<Lease, StoreError> {
        let mut tx = self.outbox_pool().begin().await?;
        sqlx::query(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{LEASE_TIMEOUT}'"
        ))
        .execute(&mut *tx)
        .await?;
        // Each user's oldest row is that user's lock: whoever holds it publishes the user's
        // rows; the others skip the user. A later row of a held user is never a head, so it
        // is never taken by anyone else either.
        let heads: Vec<String> = sqlx::query_scalar(
            "SELECT o.user_id FROM mqtt_outbox o
             WHERE o.id IN (
                 SELECT min(w.id) FROM (SELECT id, user_id FROM mqtt_outbox ORDER BY id LIMIT $1) w
                 GROUP BY w.user_id)
             ORDER BY o.id
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(users).saturating_mul(LEASE_WINDOW_PER_USER))
        .bind(i64::from(users))
        .fetch_all(&mut *tx)
        .await?;
        if heads.is_empty() {
            tx.rollback().await?;
            return Ok(Lease {
                rows: Vec::new(),
                tx: None,
            });
        }
        let rows = sqlx::query(
            "SELECT r.id, r.user_id, r.kind, r.payload
             FROM unnest($1::text[]) AS u(user_id)
             CROSS JOIN LATERAL (
                 SELECT id, user_id, kind, payload FROM mqtt_outbox
                 WHERE user_id = u.user_id ORDER BY id LIMIT $2) r
             ORDER BY r.id",
        )
        .bind(&heads)
        .bind(i64::from(per_user))
        .fetch_all(&mut *tx)
        .await?;
        Ok(Lease {
            rows: rows.iter().filter_map(outbox_row).collect(),
            tx: Some(tx),
        })
    }

    pub async fn outbox_depth(&self, channel: OutboxChannel, cap: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM {} LIMIT $1) t",
            channel.table()
        ))
        .bind(cap)
        .fetch_one(self.outbox_pool())
        .await?)
    }

    pub async fn outbox_drop_before(
        &self,
        channel: OutboxChannel,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // SKIP LOCKED: rows under a live lease are being published right now; leave them.
        let table = channel.table();
        Ok(sqlx::query(&format!(
            "DELETE FROM {table} WHERE id IN (
                 SELECT id FROM {table} WHERE created_at < $1 FOR UPDATE SKIP LOCKED)"
        ))
        .bind(cutoff)
        .execute(self.outbox_pool())
        .await?
        .rows_affected())
    }
}

/// A worker's hold on some users' outbox rows: an open transaction holding each user's
/// oldest row locked until [`Lease::complete`] commits the deletions (or the lease is
/// dropped, or its connection dies, and Postgres rolls it back).
#[derive(Debug)]
pub struct Lease {
    pub(super) rows: Vec<OutboxRow>,
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl Lease {
    pub async fn complete(self, done: &[i64]) -> Result<(), StoreError> {
        let Some(mut tx) = self.tx else {
            return Ok(());
        };
        if !done.is_empty() {
            sqlx::query("DELETE FROM mqtt_outbox WHERE id = ANY($1::bigint[])")
                .bind(done)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A row with a kind this version does not know is skipped (left in place), not fatal.
fn outbox_row(r: &PgRow) -> Option<OutboxRow> {
    Some(OutboxRow {
        id: r.try_get(0).ok()?,
        user: r.try_get(1).ok()?,
        kind: OutboxKind::parse(r.try_get::<&str, _>(2).ok()?)?,
        payload: r.try_get(3).ok()?,
    })
}

/// Runs a transaction again when Postgres aborted it to break a deadlock (40P01) or a
/// serialization conflict (40001): the transaction rolled back whole, so a retry is safe.
/// Stores the response under the publish's idempotency key, if it has one.
async fn finish_idempotency(
    tx: &mut sqlx::PgConnection,
    cmd: &PublishCommand,
    outcome: &PublishOutcome,
) -> Result<(), StoreError> {
    if let Some(idem) = &cmd.idempotency {
        let response = serde_json::to_string(&outcome.receipts).unwrap_or_default();
        sqlx::query("UPDATE idempotency_keys SET response = $1 WHERE service = $2 AND key = $3")
            .bind(response)
            .bind(&cmd.service)
            .bind(idem.key.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if tries < ATTEMPTS && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                tracing::debug!(code = ?e.code(), tries, "retrying transaction");
            }
            other => return other,
        }
    }
}

pub(super) async fn counts(
    conn: &mut sqlx::PgConnection,
    user: &UserId,
) -> Result<Counts, StoreError> {
    // The stored counter, less the user's unread copies that expired but that the clean-up
    // has not deleted yet (a few at most: it runs every half second), so the count is exact
    // at the second, like the list.
    let row = sqlx::query(
        "SELECT c.unread - (SELECT count(*) FROM inbox_expiry x JOIN inbox i
                              ON i.user_id = x.user_id AND i.seq = x.seq
                            WHERE x.user_id = $1 AND x.expires_at <= now() AND i.read_at IS NULL),
                c.last_seq, c.version
         FROM user_cursors c WHERE c.user_id = $1",
    )
    .bind(user.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(r) => Counts {
            unread: r.try_get(0)?,
            seq: r.try_get(1)?,
            version: r.try_get(2)?,
        },
        None => Counts::default(),
    })
}

pub(super) fn decode(row: &PgRow, key: &IdKey) -> Result<Notification, StoreError> {
    let seq: Seq = row.try_get("seq")?;
    Ok(Notification {
        id: stored_id(
            key,
            row.try_get("legacy_id")?,
            row.try_get("message_id")?,
            row.try_get("ordinal")?,
            seq,
        )?,
        seq,
        kind: row.try_get("type")?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        data: row.try_get("data")?,
        link: row.try_get("link")?,
        created_at: row.try_get("created_at")?,
        read_at: row.try_get("read_at")?,
        topic: row.try_get("topic")?,
        archived_at: row.try_get("archived_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The rows of one user (`user_id = $2` in the caller's statement) named by an
/// [`IdLookup`] bound as $3 (seqs), $4 (messages), $5 (ordinals) and $6 (legacy ids). The
/// `seq = ANY` lets the planner find derived ids by the primary key.
pub(super) const BY_IDS: &str = "(
    (seq = ANY($3::bigint[])
     AND (seq, message_id, ordinal) IN (SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::int[])))
    OR legacy_id = ANY($6::uuid[]))";
