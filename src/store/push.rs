//! Web Push: the browsers' push subscriptions and the lease on their outbox queues.
//!
//! A subscription is one browser profile's push endpoint with its keys. Each is its own
//! queue in `webpush_outbox` (rows are fanned out per subscription at commit, see
//! [`super::outbox`]), so the sender takes the oldest rows of some subscriptions at a time;
//! on Postgres under `FOR UPDATE SKIP LOCKED` on each queue's head, so replicas share the
//! work without sending anything twice or out of order, and a replica killed mid-batch
//! leaves its rows to the others when its transaction ends. A subscription backing off
//! (a 429 or 5xx) carries `retry_at`, which every replica honours.

use super::{Store, StoreError};
use crate::domain::{format_time, UserId};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::HashMap;

/// A subscription as the browser sent it (and as `GET /v1/push/subscriptions` lists it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    pub endpoint: String,
    /// The browser's P-256 public key, base64url (65 bytes uncompressed).
    pub p256dh: String,
    /// The browser's 16-byte auth secret, base64url.
    pub auth: String,
    pub expiration_time: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    Created,
    /// The endpoint was already the caller's; its keys were refreshed.
    Updated,
    /// The caller already has `cap` other subscriptions.
    Full,
}

/// A subscription the sender delivers to.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub id: i64,
    pub user: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub failures: i32,
    /// The browser's `expirationTime` (ms since the epoch): past it, the push service no
    /// longer takes pushes for this subscription.
    pub expires: Option<i64>,
}

/// One outbox row for one subscription.
#[derive(Debug, Clone)]
pub struct PushRow {
    pub id: i64,
    pub subscription: i64,
    pub user: String,
    pub kind: super::OutboxKind,
    pub payload: String,
}

/// What a sender did with a lease, written back when it completes.
#[derive(Debug, Default)]
pub struct PushResult {
    /// Rows delivered (or dropped for good: 413, or not pushed by policy).
    pub done: Vec<i64>,
    /// Subscriptions the push service says are gone (404, 410): deleted with their rows.
    pub gone: Vec<i64>,
    /// Subscriptions to try again no sooner than the time given (429, 5xx, no answer).
    pub retry: Vec<(i64, DateTime<Utc>)>,
    /// Subscriptions that accepted a push: their failure count starts again (and a busy
    /// mark ends).
    pub healthy: Vec<i64>,
    /// Subscriptions whose queue ended with nothing accepted and nothing failing (every
    /// push dropped); recorded only by a slow queue's own outcome, as `healthy`.
    pub drained: Vec<i64>,
    /// Subscriptions still sending when the batch is recorded: no lease takes them before
    /// the time given, unless their own outcome, recorded later, says otherwise.
    pub busy: Vec<(i64, DateTime<Utc>)>,
}

/// Rows taken by one sender, released by [`PushLease::complete`] (or, on Postgres, when
/// the lease is dropped or its connection dies).
#[derive(Debug)]
pub struct PushLease {
    pub rows: Vec<PushRow>,
    pub targets: HashMap<i64, PushTarget>,
    hold: Hold,
}

#[derive(Debug)]
enum Hold {
    None,
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A lease that outlives this (a replica frozen mid-batch) is ended by Postgres.
const LEASE_TIMEOUT: &str = "60s";

impl Store {
    /// Stores `sub` for `user`, idempotent on the endpoint. An endpoint another user held
    /// moves to `user`, and its undelivered rows (the other user's) are deleted with it.
    pub async fn push_subscribe(
        &self,
        user: &UserId,
        sub: &PushSubscription,
        cap: u32,
    ) -> Result<SubscribeOutcome, StoreError> {
        let cap = i64::from(cap);
        match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin().await?;
                sqlx::query(
                    "DELETE FROM webpush_outbox WHERE subscription_id IN (
                         SELECT id FROM push_subscriptions WHERE endpoint = ?1 AND user_id <> ?2)",
                )
                .bind(&sub.endpoint)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?1 AND user_id <> ?2")
                    .bind(&sub.endpoint)
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
                let (others, mine): (i64, i64) = {
                    let r = sqlx::query(
                        "SELECT COUNT(*) FILTER (WHERE endpoint <> ?2), COUNT(*) FILTER (WHERE endpoint = ?2)
                         FROM push_subscriptions WHERE user_id = ?1",
                    )
                    .bind(user.as_str())
                    .bind(&sub.endpoint)
                    .fetch_one(&mut *tx)
                    .await?;
                    (r.try_get(0)?, r.try_get(1)?)
                };
                if mine == 0 && others >= cap {
                    return Ok(SubscribeOutcome::Full);
                }
                sqlx::query(
                    "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, expiration_time, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (endpoint) DO UPDATE SET p256dh = excluded.p256dh, auth = excluded.auth,
                       expiration_time = excluded.expiration_time, retry_at = NULL, failures = 0",
                )
                .bind(user.as_str())
                .bind(&sub.endpoint)
                .bind(&sub.p256dh)
                .bind(&sub.auth)
                .bind(sub.expiration_time)
                .bind(format_time(&Utc::now()))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(if mine == 0 {
                    SubscribeOutcome::Created
                } else {
                    SubscribeOutcome::Updated
                })
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                // Serialises one user's subscribes, so two at once cannot both pass the cap.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('push:' || $1, 0))")
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "WITH moved AS (
                         DELETE FROM push_subscriptions WHERE endpoint = $1 AND user_id <> $2
                         RETURNING id)
                     DELETE FROM webpush_outbox WHERE subscription_id IN (SELECT id FROM moved)",
                )
                .bind(&sub.endpoint)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
                let r = sqlx::query(
                    "SELECT COUNT(*) FILTER (WHERE endpoint <> $2), COUNT(*) FILTER (WHERE endpoint = $2)
                     FROM push_subscriptions WHERE user_id = $1",
                )
                .bind(user.as_str())
                .bind(&sub.endpoint)
                .fetch_one(&mut *tx)
                .await?;
                let (others, mine): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                if mine == 0 && others >= cap {
                    return Ok(SubscribeOutcome::Full);
                }
                sqlx::query(
                    "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, expiration_time)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (endpoint) DO UPDATE SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                       expiration_time = EXCLUDED.expiration_time, retry_at = NULL, failures = 0
                     WHERE push_subscriptions.user_id = EXCLUDED.user_id",
                )
                .bind(user.as_str())
                .bind(&sub.endpoint)
                .bind(&sub.p256dh)
                .bind(&sub.auth)
                .bind(sub.expiration_time)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(if mine == 0 {
                    SubscribeOutcome::Created
                } else {
                    SubscribeOutcome::Updated
                })
            }
        }
    }

    /// The caller's own subscriptions, oldest first.
    pub async fn push_subscriptions(
        &self,
        user: &UserId,
    ) -> Result<Vec<PushSubscription>, StoreError> {
        let sql_sqlite = "SELECT endpoint, p256dh, auth, expiration_time FROM push_subscriptions WHERE user_id = ?1 ORDER BY id";
        let sql_pg = "SELECT endpoint, p256dh, auth, expiration_time FROM push_subscriptions WHERE user_id = $1 ORDER BY id";
        let subs = match self {
            Store::Sqlite(s) => sqlx::query(sql_sqlite)
                .bind(user.as_str())
                .fetch_all(&s.reader)
                .await?
                .iter()
                .map(subscription_of)
                .collect::<Result<_, sqlx::Error>>()?,
            Store::Postgres(s) => sqlx::query(sql_pg)
                .bind(user.as_str())
                .fetch_all(&s.read_pool)
                .await?
                .iter()
                .map(subscription_of)
                .collect::<Result<_, sqlx::Error>>()?,
        };
        Ok(subs)
    }

    /// Removes the caller's subscription to `endpoint` (and its undelivered rows). Another
    /// user's endpoint is left alone. Returns whether one was removed.
    pub async fn push_unsubscribe(
        &self,
        user: &UserId,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let removed: Option<i64> = match self {
            Store::Sqlite(s) => {
                let mut tx = s.writer.begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "DELETE FROM push_subscriptions WHERE user_id = ?1 AND endpoint = ?2 RETURNING id",
                )
                .bind(user.as_str())
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM webpush_outbox WHERE subscription_id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                id
            }
            Store::Postgres(s) => {
                let mut tx = s.pool.begin().await?;
                let id: Option<i64> = sqlx::query_scalar(
                    "DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2 RETURNING id",
                )
                .bind(user.as_str())
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM webpush_outbox WHERE subscription_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                id
            }
        };
        Ok(removed.is_some())
    }

    /// Records what a sender did outside a lease (the queues a batch left running), in a
    /// transaction of its own.
    pub async fn push_complete(&self, r: &PushResult) -> Result<(), StoreError> {
        let hold = match self {
            Store::Sqlite(s) => Hold::Sqlite(s.writer.clone()),
            Store::Postgres(s) => Hold::Postgres(s.outbox_pool().begin().await?),
        };
        PushLease {
            rows: Vec::new(),
            targets: HashMap::new(),
            hold,
        }
        .complete(r)
        .await
    }

    /// Takes the oldest rows of at most `subscriptions` subscriptions that are not backing
    /// off, at most `per_subscription` each, in id order.
    pub async fn push_lease(
        &self,
        subscriptions: u32,
        per_subscription: u32,
    ) -> Result<PushLease, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let now = format_time(&Utc::now());
                // One replica: nobody else takes rows, so no lock. Ready queues only.
                let rows = sqlx::query(
                    "SELECT r.id, r.subscription_id, r.user_id, r.kind, r.payload FROM (
                         SELECT o.id, o.subscription_id, o.user_id, o.kind, o.payload,
                                ROW_NUMBER() OVER (PARTITION BY o.subscription_id ORDER BY o.id) AS n
                         FROM webpush_outbox o JOIN push_subscriptions s ON s.id = o.subscription_id
                         WHERE s.retry_at IS NULL OR s.retry_at <= ?1) r
                     WHERE r.n <= ?2
                     ORDER BY r.id LIMIT ?3",
                )
                .bind(&now)
                .bind(i64::from(per_subscription))
                .bind(i64::from(subscriptions.saturating_mul(per_subscription)))
                .fetch_all(&s.reader)
                .await?;
                let rows: Vec<PushRow> = rows.iter().filter_map(push_row).collect();
                let ids: Vec<i64> = distinct_subscriptions(&rows);
                let ids_json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
                let targets = sqlx::query(
                    "SELECT id, user_id, endpoint, p256dh, auth, failures, expiration_time FROM push_subscriptions
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(ids_json)
                .fetch_all(&s.reader)
                .await?;
                Ok(PushLease {
                    rows,
                    targets: targets_of(&targets)?,
                    hold: Hold::Sqlite(s.writer.clone()),
                })
            }
            Store::Postgres(s) => {
                let mut tx = s.outbox_pool().begin().await?;
                sqlx::query(&format!(
                    "SET LOCAL idle_in_transaction_session_timeout = '{LEASE_TIMEOUT}'"
                ))
                .execute(&mut *tx)
                .await?;
                // Each queue's oldest row is its lock: whoever holds it sends the queue; the
                // others skip it. A later row of a held queue is never a head, so nobody
                // else takes it either. One index probe per subscription with rows.
                let heads: Vec<i64> = sqlx::query_scalar(
                    "SELECT o.subscription_id FROM webpush_outbox o
                     WHERE o.id IN (
                         SELECT (SELECT min(w.id) FROM webpush_outbox w WHERE w.subscription_id = s.id)
                         FROM push_subscriptions s
                         WHERE s.retry_at IS NULL OR s.retry_at <= now())
                     ORDER BY o.id
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED",
                )
                .bind(i64::from(subscriptions))
                .fetch_all(&mut *tx)
                .await?;
                if heads.is_empty() {
                    tx.rollback().await?;
                    return Ok(PushLease {
                        rows: Vec::new(),
                        targets: HashMap::new(),
                        hold: Hold::None,
                    });
                }
                let rows = sqlx::query(
                    "SELECT r.id, r.subscription_id, r.user_id, r.kind, r.payload
                     FROM unnest($1::bigint[]) AS h(sid)
                     CROSS JOIN LATERAL (
                         SELECT id, subscription_id, user_id, kind, payload FROM webpush_outbox
                         WHERE subscription_id = h.sid ORDER BY id LIMIT $2) r
                     ORDER BY r.id",
                )
                .bind(&heads)
                .bind(i64::from(per_subscription))
                .fetch_all(&mut *tx)
                .await?;
                let targets = sqlx::query(
                    "SELECT id, user_id, endpoint, p256dh, auth, failures, expiration_time FROM push_subscriptions
                     WHERE id = ANY($1::bigint[])",
                )
                .bind(&heads)
                .fetch_all(&mut *tx)
                .await?;
                Ok(PushLease {
                    rows: rows.iter().filter_map(push_row).collect(),
                    targets: targets_of(&targets)?,
                    hold: Hold::Postgres(tx),
                })
            }
        }
    }
}

impl PushLease {
    /// Writes back what the sender did, in the lease's own transaction on Postgres.
    pub async fn complete(self, r: &PushResult) -> Result<(), StoreError> {
        let json = |v: &[i64]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        match self.hold {
            Hold::None => Ok(()),
            Hold::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "DELETE FROM webpush_outbox WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(json(&r.done))
                .execute(&mut *tx)
                .await?;
                for table_key in [
                    ("push_subscriptions", "id"),
                    ("webpush_outbox", "subscription_id"),
                ] {
                    sqlx::query(&format!(
                        "DELETE FROM {} WHERE {} IN (SELECT value FROM json_each(?1))",
                        table_key.0, table_key.1
                    ))
                    .bind(json(&r.gone))
                    .execute(&mut *tx)
                    .await?;
                }
                for (id, at) in &r.retry {
                    sqlx::query(
                        "UPDATE push_subscriptions SET retry_at = ?1, failures = failures + 1 WHERE id = ?2",
                    )
                    .bind(format_time(at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                for (id, at) in &r.busy {
                    sqlx::query("UPDATE push_subscriptions SET retry_at = ?1 WHERE id = ?2")
                        .bind(format_time(at))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "UPDATE push_subscriptions SET retry_at = NULL, failures = 0
                     WHERE (failures > 0 OR retry_at IS NOT NULL)
                       AND id IN (SELECT value FROM json_each(?1))",
                )
                .bind(json(&r.healthy))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
            Hold::Postgres(mut tx) => {
                sqlx::query("DELETE FROM webpush_outbox WHERE id = ANY($1::bigint[])")
                    .bind(&r.done)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM push_subscriptions WHERE id = ANY($1::bigint[])")
                    .bind(&r.gone)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM webpush_outbox WHERE subscription_id = ANY($1::bigint[])")
                    .bind(&r.gone)
                    .execute(&mut *tx)
                    .await?;
                let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = r.retry.iter().copied().unzip();
                sqlx::query(
                    "UPDATE push_subscriptions s SET retry_at = t.at, failures = s.failures + 1
                     FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, at) WHERE s.id = t.id",
                )
                .bind(&ids)
                .bind(&ats)
                .execute(&mut *tx)
                .await?;
                let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = r.busy.iter().copied().unzip();
                sqlx::query(
                    "UPDATE push_subscriptions s SET retry_at = t.at
                     FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, at) WHERE s.id = t.id",
                )
                .bind(&ids)
                .bind(&ats)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE push_subscriptions SET retry_at = NULL, failures = 0
                     WHERE (failures > 0 OR retry_at IS NOT NULL) AND id = ANY($1::bigint[])",
                )
                .bind(&r.healthy)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

fn distinct_subscriptions(rows: &[PushRow]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows.iter().map(|r| r.subscription).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A row with a kind this version does not know is skipped (left in place), not fatal.
fn push_row<R: Row>(r: &R) -> Option<PushRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Some(PushRow {
        id: r.try_get(0).ok()?,
        subscription: r.try_get(1).ok()?,
        user: r.try_get(2).ok()?,
        kind: super::OutboxKind::parse(&r.try_get::<String, _>(3).ok()?)?,
        payload: r.try_get(4).ok()?,
    })
}

/// A `SELECT endpoint, p256dh, auth, expiration_time` row, on either backend.
fn subscription_of<R: Row>(r: &R) -> Result<PushSubscription, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(PushSubscription {
        endpoint: r.try_get(0)?,
        p256dh: r.try_get(1)?,
        auth: r.try_get(2)?,
        expiration_time: r.try_get(3)?,
    })
}

fn targets_of<R: Row>(rows: &[R]) -> Result<HashMap<i64, PushTarget>, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let t = PushTarget {
            id: r.try_get(0)?,
            user: r.try_get(1)?,
            endpoint: r.try_get(2)?,
            p256dh: r.try_get(3)?,
            auth: r.try_get(4)?,
            failures: r.try_get(5)?,
            expires: r.try_get(6)?,
        };
        out.insert(t.id, t);
    }
    Ok(out)
}
