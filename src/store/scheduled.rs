//! Scheduled notifications (`deliver_at`): the stored request, its lease and its claim.
//!
//! A schedule is one row holding the publish request as the service sent it (validated,
//! without `deliver_at`). At its time the scheduler leases due rows (Postgres: `FOR UPDATE
//! SKIP LOCKED` and a short lease, so one replica takes each; SQLite: the one process) and
//! publishes each through the ordinary publish path, with a [`ScheduleClaim`]. The claim is an
//! `UPDATE` of the row inside the publish's own transaction: it marks the row delivered (for a
//! topic, moves its fan-out cursor) only if nobody did so before. So the notification and the
//! mark commit together or not at all: a replica killed mid-way, or a database gone mid-way,
//! leaves the row pending for the next attempt, and a second replica that raced for the same
//! row waits for the first's lock, then finds it delivered and publishes nothing.

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Idempotency, StoreError};
use crate::domain::format_time;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

/// Delivered rows are kept this long, so that a cancel that comes late is told 409
/// ("already delivered") rather than 404; then the idempotency purge removes them.
pub const DELIVERED_KEPT: std::time::Duration = super::IDEMPOTENCY_TTL;

/// Delivered rows removed per purge statement.
const PURGE_BATCH: i64 = 10_000;

/// The answer to a scheduled publish (202), also stored as its idempotent response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleReceipt {
    /// Names the schedule in `GET /v1/scheduled` and `DELETE /v1/scheduled/{id}`.
    pub schedule_id: Uuid,
    /// When it will be published (to the microsecond, in UTC).
    #[serde(with = "super::rfc3339_serde")]
    #[schema(value_type = String, format = DateTime)]
    pub deliver_at: DateTime<Utc>,
}

/// A schedule to store.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub service: String,
    pub deliver_at: DateTime<Utc>,
    /// The validated publish body without `deliver_at`, as JSON: parsed again at delivery.
    pub request: String,
    pub idempotency: Option<Idempotency>,
    /// The service's pending schedules may not exceed this.
    pub max_pending: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleOutcome {
    pub receipt: ScheduleReceipt,
    /// The first answer again, for a reused `Idempotency-Key`.
    pub replayed: bool,
}

/// One pending schedule, as its service lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScheduledItem {
    pub schedule_id: Uuid,
    #[serde(serialize_with = "crate::domain::serialize_time")]
    #[schema(value_type = String, format = DateTime)]
    pub deliver_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::serialize_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// The publish body as it will be sent, without `deliver_at`.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    /// Delivered already (or, for a topic, its fan-out has begun).
    Delivered,
    /// Not this service's, or unknown (or delivered longer ago than [`DELIVERED_KEPT`]).
    Unknown,
}

/// A due schedule, leased by this replica.
#[derive(Debug, Clone, PartialEq)]
pub struct DueSchedule {
    pub id: Uuid,
    pub service: String,
    pub deliver_at: DateTime<Utc>,
    pub request: String,
    /// A topic fan-out's progress: the last subscriber it reached.
    pub topic_after: Option<String>,
}

/// The change a publish makes to its schedule row, in the publish's transaction: from
/// fan-out cursor `after` to `next`, and delivered when `done`. If the row is no longer at
/// `after` (delivered, moved on or cancelled meanwhile), the publish fails with
/// [`StoreError::ScheduleGone`] and writes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleClaim {
    pub id: Uuid,
    pub after: Option<String>,
    pub next: Option<String>,
    pub done: bool,
}

fn decode_request(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

fn gone_unless_one(rows: u64) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::ScheduleGone)
    }
}

/// The stored idempotent answer of a schedule, if `response` is one.
pub(crate) fn receipt_of(response: &str) -> Option<ScheduleReceipt> {
    serde_json::from_str(response).ok()
}

fn replayed_or_mismatch(
    idem: &Idempotency,
    fingerprint: String,
    response: Option<String>,
) -> Result<ScheduleOutcome, StoreError> {
    match response.as_deref().and_then(receipt_of) {
        Some(receipt) if fingerprint == idem.fingerprint => Ok(ScheduleOutcome {
            receipt,
            replayed: true,
        }),
        _ => Err(StoreError::IdempotencyMismatch),
    }
}

impl PgStore {
    pub async fn schedule(&self, s: &NewSchedule) -> Result<ScheduleOutcome, StoreError> {
        let now = crate::domain::now_micros();
        let mut tx = self.pool.begin().await?;
        if let Some(idem) = &s.idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (service, key, fingerprint, response, created_at)
                 VALUES ($1, $2, $3, NULL, $4)
                 ON CONFLICT (service, key) DO UPDATE
                   SET fingerprint = EXCLUDED.fingerprint, response = NULL, created_at = EXCLUDED.created_at
                   WHERE idempotency_keys.created_at < $5",
            )
            .bind(&s.service)
            .bind(idem.key.as_str())
            .bind(&idem.fingerprint)
            .bind(now)
            .bind(super::idempotency_cutoff())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                let (fingerprint, response): (String, Option<String>) = sqlx::query_as(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE service = $1 AND key = $2",
                )
                .bind(&s.service)
                .bind(idem.key.as_str())
                .fetch_one(&mut *tx)
                .await?;
                return replayed_or_mismatch(idem, fingerprint, response);
            }
        }
        // No lock around the count and the insert: one would queue every schedule of a
        // service behind the previous one's commit (about 100 a second). Without it, schedules
        // stored at the same moment may pass the cap by at most their number, which the write
        // pool bounds: the table stays bounded.
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM scheduled
               WHERE service = $1 AND delivered_at IS NULL LIMIT $2) t",
        )
        .bind(&s.service)
        .bind(i64::try_from(s.max_pending).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
        if u64::try_from(pending).unwrap_or(u64::MAX) >= s.max_pending {
            return Err(StoreError::TooManyScheduled { max: s.max_pending });
        }
        let receipt = ScheduleReceipt {
            schedule_id: Uuid::now_v7(),
            deliver_at: s.deliver_at,
        };
        sqlx::query(
            "INSERT INTO scheduled (id, service, deliver_at, request, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(receipt.schedule_id)
        .bind(&s.service)
        .bind(s.deliver_at)
        .bind(&s.request)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(idem) = &s.idempotency {
            sqlx::query(
                "UPDATE idempotency_keys SET response = $1 WHERE service = $2 AND key = $3",
            )
            .bind(serde_json::to_string(&receipt).unwrap_or_default())
            .bind(&s.service)
            .bind(idem.key.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ScheduleOutcome {
            receipt,
            replayed: false,
        })
    }

    pub async fn list_scheduled(
        &self,
        service: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deliver_at, created_at, request FROM scheduled
             WHERE service = $1 AND delivered_at IS NULL AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(service)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read_pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduledItem {
                    schedule_id: r.try_get(0)?,
                    deliver_at: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    request: decode_request(r.try_get(3)?),
                })
            })
            .collect()
    }

    pub async fn cancel_scheduled(&self, service: &str, id: Uuid) -> Result<Cancel, StoreError> {
        // A delivery in flight holds the row locked: this waits for it, then sees it delivered.
        let deleted = sqlx::query(
            "DELETE FROM scheduled WHERE id = $1 AND service = $2
               AND delivered_at IS NULL AND topic_after IS NULL",
        )
        .bind(id)
        .bind(service)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if deleted == 1 {
            return Ok(Cancel::Cancelled);
        }
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM scheduled WHERE id = $1 AND service = $2")
                .bind(id)
                .bind(service)
                .fetch_optional(&self.pool)
                .await?;
        Ok(if found.is_some() {
            Cancel::Delivered
        } else {
            Cancel::Unknown
        })
    }

    /// Leases up to `limit` due rows for `lease` to replica `me` (rows it leased before
    /// included: after an error it takes them again at once rather than after the lease),
    /// except those in `skip`.
    pub async fn lease_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        me: Uuid,
        limit: u32,
        skip: &[Uuid],
    ) -> Result<Vec<DueSchedule>, StoreError> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let rows = sqlx::query(
            "UPDATE scheduled SET leased_until = $2, leased_by = $3
             WHERE id IN (
               SELECT id FROM scheduled
               WHERE delivered_at IS NULL AND deliver_at <= $1
                 AND (leased_until IS NULL OR leased_until <= $1 OR leased_by = $3)
                 AND NOT (id = ANY($5))
               ORDER BY deliver_at LIMIT $4
               FOR UPDATE SKIP LOCKED)
             RETURNING id, service, deliver_at, request, topic_after",
        )
        .bind(now)
        .bind(until)
        .bind(me)
        .bind(i64::from(limit))
        .bind(skip)
        .fetch_all(&self.pool)
        .await?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok(DueSchedule {
                    id: r.try_get(0)?,
                    service: r.try_get(1)?,
                    deliver_at: r.try_get(2)?,
                    request: r.try_get(3)?,
                    topic_after: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        due.sort_by_key(|d| (d.deliver_at, d.id));
        Ok(due)
    }

    /// The earliest time a pending row this replica may take is due.
    pub async fn next_due(
        &self,
        now: DateTime<Utc>,
        me: Uuid,
        skip: &[Uuid],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(deliver_at) FROM scheduled WHERE delivered_at IS NULL
               AND (leased_until IS NULL OR leased_until <= $1 OR leased_by = $2)
               AND NOT (id = ANY($3))",
        )
        .bind(now)
        .bind(me)
        .bind(skip)
        .fetch_one(&self.read_pool)
        .await?)
    }

    pub async fn release_schedule(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE scheduled SET leased_until = NULL, leased_by = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A claim on its own (a topic whose last page was empty).
    pub async fn claim_schedule(&self, claim: &ScheduleClaim) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        pg_claim(&mut tx, claim).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn purge_scheduled(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM scheduled WHERE id IN (
                   SELECT id FROM scheduled WHERE delivered_at < $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

/// The claim, as the first statement of a publish's transaction (see [`ScheduleClaim`]).
pub(super) async fn pg_claim(
    conn: &mut sqlx::PgConnection,
    claim: &ScheduleClaim,
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "UPDATE scheduled SET topic_after = $2,
           delivered_at = CASE WHEN $3 THEN $4 ELSE NULL END
         WHERE id = $1 AND delivered_at IS NULL AND topic_after IS NOT DISTINCT FROM $5",
    )
    .bind(claim.id)
    .bind(&claim.next)
    .bind(claim.done)
    .bind(crate::domain::now_micros())
    .bind(&claim.after)
    .execute(conn)
    .await?
    .rows_affected();
    gone_unless_one(rows)
}

/// The claim in SQLite's one writer transaction.
pub(super) async fn sqlite_claim(
    conn: &mut sqlx::SqliteConnection,
    claim: &ScheduleClaim,
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "UPDATE scheduled SET topic_after = ?2,
           delivered_at = CASE WHEN ?3 THEN ?4 ELSE NULL END
         WHERE id = ?1 AND delivered_at IS NULL AND topic_after IS ?5",
    )
    .bind(claim.id.to_string())
    .bind(&claim.next)
    .bind(claim.done)
    .bind(format_time(&crate::domain::now_micros()))
    .bind(&claim.after)
    .execute(conn)
    .await?
    .rows_affected();
    gone_unless_one(rows)
}

fn sqlite_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

/// Ids as a JSON array of strings, for `json_each`.
fn skip_json(skip: &[Uuid]) -> String {
    serde_json::to_string(&skip.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

fn sqlite_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

impl SqliteStore {
    pub async fn schedule(&self, s: &NewSchedule) -> Result<ScheduleOutcome, StoreError> {
        let now = crate::domain::now_micros();
        let mut tx = self.writer.begin().await?;
        if let Some(idem) = &s.idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (service, key, fingerprint, response, created_at)
                 VALUES (?1, ?2, ?3, NULL, ?4)
                 ON CONFLICT (service, key) DO UPDATE
                   SET fingerprint = excluded.fingerprint, response = NULL, created_at = excluded.created_at
                   WHERE idempotency_keys.created_at < ?5",
            )
            .bind(&s.service)
            .bind(idem.key.as_str())
            .bind(&idem.fingerprint)
            .bind(format_time(&now))
            .bind(format_time(&super::idempotency_cutoff()))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                let (fingerprint, response): (String, Option<String>) = sqlx::query_as(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE service = ?1 AND key = ?2",
                )
                .bind(&s.service)
                .bind(idem.key.as_str())
                .fetch_one(&mut *tx)
                .await?;
                return replayed_or_mismatch(idem, fingerprint, response);
            }
        }
        // The one writer orders this count with every other insert.
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM scheduled
               WHERE service = ?1 AND delivered_at IS NULL LIMIT ?2)",
        )
        .bind(&s.service)
        .bind(i64::try_from(s.max_pending).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
        if u64::try_from(pending).unwrap_or(u64::MAX) >= s.max_pending {
            return Err(StoreError::TooManyScheduled { max: s.max_pending });
        }
        let receipt = ScheduleReceipt {
            schedule_id: Uuid::now_v7(),
            deliver_at: s.deliver_at,
        };
        sqlx::query(
            "INSERT INTO scheduled (id, service, deliver_at, request, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(receipt.schedule_id.to_string())
        .bind(&s.service)
        .bind(format_time(&s.deliver_at))
        .bind(&s.request)
        .bind(format_time(&now))
        .execute(&mut *tx)
        .await?;
        if let Some(idem) = &s.idempotency {
            sqlx::query(
                "UPDATE idempotency_keys SET response = ?1 WHERE service = ?2 AND key = ?3",
            )
            .bind(serde_json::to_string(&receipt).unwrap_or_default())
            .bind(&s.service)
            .bind(idem.key.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ScheduleOutcome {
            receipt,
            replayed: false,
        })
    }

    pub async fn list_scheduled(
        &self,
        service: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deliver_at, created_at, request FROM scheduled
             WHERE service = ?1 AND delivered_at IS NULL AND (?2 IS NULL OR id > ?2)
             ORDER BY id LIMIT ?3",
        )
        .bind(service)
        .bind(after.map(|a| a.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduledItem {
                    schedule_id: sqlite_uuid(r.try_get(0)?)?,
                    deliver_at: sqlite_time(r.try_get(1)?)?,
                    created_at: sqlite_time(r.try_get(2)?)?,
                    request: decode_request(r.try_get(3)?),
                })
            })
            .collect()
    }

    pub async fn cancel_scheduled(&self, service: &str, id: Uuid) -> Result<Cancel, StoreError> {
        let id = id.to_string();
        let deleted = sqlx::query(
            "DELETE FROM scheduled WHERE id = ?1 AND service = ?2
               AND delivered_at IS NULL AND topic_after IS NULL",
        )
        .bind(&id)
        .bind(service)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if deleted == 1 {
            return Ok(Cancel::Cancelled);
        }
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM scheduled WHERE id = ?1 AND service = ?2")
                .bind(&id)
                .bind(service)
                .fetch_optional(&self.writer)
                .await?;
        Ok(if found.is_some() {
            Cancel::Delivered
        } else {
            Cancel::Unknown
        })
    }

    /// Due rows, oldest first. No lease: one process, whose scheduler finishes a batch before
    /// it takes the next.
    pub async fn lease_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        skip: &[Uuid],
    ) -> Result<Vec<DueSchedule>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, service, deliver_at, request, topic_after FROM scheduled
             WHERE delivered_at IS NULL AND deliver_at <= ?1
               AND id NOT IN (SELECT value FROM json_each(?3))
             ORDER BY deliver_at, id LIMIT ?2",
        )
        .bind(format_time(&now))
        .bind(i64::from(limit))
        .bind(skip_json(skip))
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueSchedule {
                    id: sqlite_uuid(r.try_get(0)?)?,
                    service: r.try_get(1)?,
                    deliver_at: sqlite_time(r.try_get(2)?)?,
                    request: r.try_get(3)?,
                    topic_after: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn next_due(&self, skip: &[Uuid]) -> Result<Option<DateTime<Utc>>, StoreError> {
        let min: Option<String> = sqlx::query_scalar(
            "SELECT min(deliver_at) FROM scheduled WHERE delivered_at IS NULL
               AND id NOT IN (SELECT value FROM json_each(?1))",
        )
        .bind(skip_json(skip))
        .fetch_one(&self.reader)
        .await?;
        min.as_deref().map(sqlite_time).transpose()
    }

    /// No lease to give back: nothing to do.
    pub async fn release_schedule(&self, _id: Uuid) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn claim_schedule(&self, claim: &ScheduleClaim) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlite_claim(&mut tx, claim).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn purge_scheduled(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM scheduled WHERE id IN (
                   SELECT id FROM scheduled WHERE delivered_at < ?1 LIMIT ?2)",
            )
            .bind(format_time(&cutoff))
            .bind(PURGE_BATCH)
            .execute(&self.writer)
            .await?
            .rows_affected();
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
