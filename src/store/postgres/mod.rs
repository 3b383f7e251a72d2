//! The production backend: Postgres, shared by every replica.
//!
//! A publish is two statements whatever the number of recipients: one bumps every
//! recipient's cursor row (locking them in sorted order), one inserts every copy from
//! arrays. A transaction that loses a deadlock or serialization race is retried whole.

mod changes;

use super::group_commit::GroupCommit;
use super::outbox::{rows_for, unread_payload, Channel};
use super::{
    replay, stored_id, Counts, IdLookup, ListQuery, MarkRead, Outbox, OutboxKind, OutboxRow, Page,
    PreparedPublish, PublishCommand, PublishOutcome, ReadOutcome, StoreError,
};
use crate::domain::{now_micros, Notification, Seq, TopicName, UserId};
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
    group: GroupCommit,
    pub(super) outbox: Outbox,
    /// The bridges' own connections: a lease holds one for as long as the broker (or the
    /// push services) take with a batch, which must never take a connection publishing needs.
    pub(super) outbox_pool: Option<PgPool>,
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
     m.type, m.title, m.body, m.data, m.link, m.created_at, m.topic";
pub(super) const FROM: &str = "inbox i JOIN messages m ON m.id = i.message_id";
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
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
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
        let group = GroupCommit::start(pool.clone(), outbox.clone(), shutdown);
        Ok(Self {
            pool,
            read_pool,
            group,
            outbox,
            outbox_pool,
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
        if cmd.idempotency.is_none() {
            return self.group.publish(cmd).await;
        }
        let prep = PreparedPublish::new(cmd);
        retrying(|| self.try_publish(&prep)).await
    }

    async fn try_publish(&self, prep: &PreparedPublish<'_>) -> Result<PublishOutcome, StoreError> {
        let cmd = prep.cmd;
        let mut tx = self.pool.begin().await?;

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

        let outcome = prep.outcome(message, &bumped)?;
        if self.outbox.is_on() {
            let mut rows = OutboxColumns::default();
            for d in &outcome.deliveries {
                rows.push_delivery(d.recipient.as_str(), &d.notification, &d.counts);
            }
            rows.insert(&mut tx, &self.outbox).await?;
        }
        if let Some(idem) = &cmd.idempotency {
            let response = serde_json::to_string(&outcome.receipts).unwrap_or_default();
            sqlx::query(
                "UPDATE idempotency_keys SET response = $1 WHERE service = $2 AND key = $3",
            )
            .bind(response)
            .bind(&cmd.service)
            .bind(idem.key.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.outbox.poke();
        Ok(outcome)
    }

    pub async fn list(&self, user: &UserId, q: ListQuery) -> Result<Page, StoreError> {
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
            "SELECT {COLUMNS} FROM {FROM} WHERE i.user_id = $1 AND {filter} {unread_filter}
             ORDER BY i.seq {order} LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .bind(bound)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let notifications = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
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
                let l = IdLookup::new(ids);
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

    pub async fn outbox_depth(&self, channel: Channel, cap: i64) -> Result<i64, StoreError> {
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
        channel: Channel,
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

/// Outbox rows for one `unnest` insert per channel, in the order they must be delivered.
#[derive(Default)]
pub(super) struct OutboxColumns {
    users: Vec<String>,
    kinds: Vec<&'static str>,
    /// Per row, its payload on each channel (`None`: not written on that channel).
    mqtt: Vec<Option<String>>,
    webpush: Vec<Option<String>>,
}

impl OutboxColumns {
    /// A row every channel gets alike (an unread count).
    pub fn push(&mut self, user: &str, kind: OutboxKind, payload: String) {
        self.row(user, kind, Some(payload.clone()), Some(payload));
    }

    fn row(&mut self, user: &str, kind: OutboxKind, mqtt: Option<String>, webpush: Option<String>) {
        self.users.push(user.to_owned());
        self.kinds.push(kind.as_str());
        self.mqtt.push(mqtt);
        self.webpush.push(webpush);
    }

    pub fn push_delivery(&mut self, user: &str, n: &Notification, counts: &Counts) {
        for (kind, payload) in rows_for(n, counts, Channel::Mqtt) {
            self.row(user, kind, Some(payload), None);
        }
        for (kind, payload) in rows_for(n, counts, Channel::WebPush) {
            self.row(user, kind, None, Some(payload));
        }
    }

    /// Writes the rows of every channel that is on. Ids follow `ord`, so each queue's rows
    /// get ids in the order they were pushed. Web Push rows are fanned out to the user's
    /// subscriptions by the same statement; a user without one gets none.
    pub async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        outbox: &Outbox,
    ) -> Result<(), StoreError> {
        if self.users.is_empty() {
            return Ok(());
        }
        for channel in outbox.channels() {
            let (payloads, sql) = match channel {
                Channel::Mqtt => (
                    &self.mqtt,
                    "INSERT INTO mqtt_outbox (user_id, kind, payload)
                     SELECT u, k, p FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(u, k, p, ord)
                     WHERE p IS NOT NULL
                     ORDER BY ord",
                ),
                Channel::WebPush => (
                    &self.webpush,
                    "INSERT INTO webpush_outbox (subscription_id, user_id, kind, payload)
                     SELECT s.id, t.u, t.k, t.p
                     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(u, k, p, ord)
                     JOIN push_subscriptions s ON s.user_id = t.u
                     WHERE t.p IS NOT NULL
                     ORDER BY t.ord, s.id",
                ),
            };
            if payloads.iter().all(Option::is_none) {
                continue;
            }
            sqlx::query(sql)
                .bind(&self.users)
                .bind(&self.kinds)
                .bind(payloads)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Runs a transaction again when Postgres aborted it to break a deadlock (40P01) or a
/// serialization conflict (40001): the transaction rolled back whole, so a retry is safe.
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

async fn counts(conn: &mut sqlx::PgConnection, user: &UserId) -> Result<Counts, StoreError> {
    let row = sqlx::query("SELECT unread, last_seq, version FROM user_cursors WHERE user_id = $1")
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

pub(super) fn decode(row: &PgRow) -> Result<Notification, StoreError> {
    let seq: Seq = row.try_get("seq")?;
    Ok(Notification {
        id: stored_id(
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
    })
}

/// A recipient's ordinal as its 32-bit column holds it.
pub(super) fn ordinal(o: u32) -> Result<i32, StoreError> {
    i32::try_from(o).map_err(|_| {
        StoreError::Database(sqlx::Error::Protocol(format!(
            "recipient ordinal {o} past the column's range"
        )))
    })
}

/// The rows of one user (`user_id = $2` in the caller's statement) named by an
/// [`IdLookup`] bound as $3 (seqs), $4 (messages), $5 (ordinals) and $6 (legacy ids). The
/// `seq = ANY` lets the planner find derived ids by the primary key.
pub(super) const BY_IDS: &str = "(
    (seq = ANY($3::bigint[])
     AND (seq, message_id, ordinal) IN (SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::int[])))
    OR legacy_id = ANY($6::uuid[]))";
