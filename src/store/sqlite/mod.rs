//! The embedded backend: one SQLite file, for a single replica with no set-up.
//!
//! SQLite allows one writer at a time. Rather than let connections race for the write lock
//! (and fail with SQLITE_BUSY when a read transaction tries to upgrade), all writes go
//! through a pool of exactly one connection, so they queue in-process; reads use a separate
//! pool and, in WAL mode, never wait for the writer.

mod changes;
pub(super) mod lifecycle;

use super::outbox::{unread_payload, OutboxChannel};
use super::{
    replay, stored_id, Counts, IdLookup, ListQuery, MarkRead, Outbox, OutboxKind, OutboxRow, Page,
    PreparedPublish, PublishCommand, PublishOutcome, ReadOutcome, StoreError,
};
use crate::domain::{format_time, now_micros, IdKey, Notification, Seq, TopicName, UserId};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
    pub(super) outbox: Outbox,
    /// Encrypts the notification ids handed out.
    pub(super) ids: IdKey,
}

/// A notification as the inbox shows it: the recipient's row joined to its message.
pub(super) const COLUMNS: &str =
    "i.seq, i.message_id, i.ordinal, i.legacy_id, i.read_at, i.archived_at,
     m.type, m.title, m.body, m.data, m.link, m.created_at, m.topic, x.expires_at";
/// With the copy's expiry, if it has one (a primary-key lookup).
pub(super) const FROM: &str = "inbox i JOIN messages m ON m.id = i.message_id
     LEFT JOIN inbox_expiry x ON x.user_id = i.user_id AND x.seq = i.seq";

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        outbox: Outbox,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a notification acknowledged with 201 survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        // A later release's migrations, already applied by one of its replicas during a
        // rolling upgrade (or before a rollback), are not an error: every migration is
        // additive for the release before it (docs/upgrading.md), so this one still works.
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&writer).await?;
        let ids = super::load_id_key(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            reader,
            outbox,
            ids,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        let mut prep = PreparedPublish::new(cmd, &self.ids);
        let mut tx = self.writer.begin().await?;
        if let Some(claim) = &cmd.schedule {
            super::scheduled::sqlite_claim(&mut tx, claim).await?;
        }

        if let Some(idem) = &cmd.idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (service, key, fingerprint, response, created_at)
                 VALUES (?1, ?2, ?3, NULL, ?4)
                 ON CONFLICT (service, key) DO UPDATE
                   SET fingerprint = excluded.fingerprint, response = NULL, created_at = excluded.created_at
                   WHERE idempotency_keys.created_at < ?5",
            )
            .bind(&cmd.service)
            .bind(idem.key.as_str())
            .bind(&idem.fingerprint)
            .bind(format_time(&prep.created_at))
            .bind(format_time(&super::idempotency_cutoff()))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !claimed {
                let row = sqlx::query(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE service = ?1 AND key = ?2",
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

        // Preferences, read in the write transaction (the one writer orders this publish
        // with every `PUT`): one query for all recipients, none per notification.
        if !cmd.notification.critical {
            let users: Vec<&str> = prep.rows.iter().map(|(u, _)| u.as_str()).collect();
            let prefs = Self::preferences_in(&mut tx, &users).await?;
            if !prefs.is_empty() {
                prep.mute(|u| prefs.get(u).cloned());
            }
        }
        if prep.rows.is_empty() {
            // Every recipient muted it: no message row is left behind without copies.
            let outcome = prep.outcome(0, &[])?;
            self.finish_idempotency(&mut tx, cmd, &outcome).await?;
            tx.commit().await?;
            return Ok(outcome);
        }

        let n = &cmd.notification;
        let created_at = format_time(&prep.created_at);
        let message: i64 = sqlx::query_scalar(
            "INSERT INTO messages (service, type, title, body, data, link, created_at, topic)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )
        .bind(&cmd.service)
        .bind(n.kind.as_str())
        .bind(n.title.as_str())
        .bind(n.body.as_ref().map(|b| b.as_str()))
        .bind(prep.data_json())
        .bind(n.link.as_ref().map(|l| l.as_str()))
        .bind(&created_at)
        .bind(n.topic.as_ref().map(|t| t.as_str()))
        .fetch_one(&mut *tx)
        .await?;
        let mut bumped = Vec::with_capacity(prep.rows.len());
        let mut replaced = super::lifecycle::Replaced::new();
        for (user, ordinal) in &prep.rows {
            let row = sqlx::query(
                "INSERT INTO user_cursors (user_id, last_seq, unread, version) VALUES (?1, 1, 1, 1)
                 ON CONFLICT (user_id) DO UPDATE
                   SET last_seq = last_seq + 1, unread = unread + 1, version = version + 1
                 RETURNING last_seq, unread, version",
            )
            .bind(user.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let counts = Counts {
                seq: row.try_get(0)?,
                unread: row.try_get(1)?,
                version: row.try_get(2)?,
            };
            sqlx::query(
                "INSERT INTO inbox (user_id, seq, message_id, ordinal) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(user.as_str())
            .bind(counts.seq)
            .bind(message)
            .bind(i64::from(*ordinal))
            .execute(&mut *tx)
            .await?;
            let mut counts = counts;
            if let Some(r) =
                lifecycle::apply(&mut tx, cmd, user.as_str(), counts.seq, &mut counts).await?
            {
                replaced.insert(user.as_str().to_owned(), r);
            }
            if self.outbox.is_on() {
                let id = PreparedPublish::id(&self.ids, message, *ordinal, counts.seq)?;
                for (channel, kind, payload) in
                    prep.outbox_rows(user.as_str(), &prep.notification(id, counts.seq), &counts)
                {
                    if self.outbox.has(channel) {
                        insert_row(&mut tx, channel, user, kind, &payload, &created_at).await?;
                    }
                }
            }
            bumped.push(counts);
        }

        for channel in self.outbox.channels() {
            let holds = super::preferences::holds(std::iter::once(&prep), channel);
            Self::record_holds(&mut tx, channel, &holds).await?;
        }
        let mut outcome = prep.outcome(message, &bumped)?;
        super::lifecycle::attach(&self.ids, &mut outcome, replaced)?;
        self.finish_idempotency(&mut tx, cmd, &outcome).await?;
        tx.commit().await?;
        self.outbox.poke();
        Ok(outcome)
    }

    /// Stores the response under the publish's idempotency key, if it has one.
    async fn finish_idempotency(
        &self,
        tx: &mut sqlx::SqliteConnection,
        cmd: &PublishCommand,
        outcome: &PublishOutcome,
    ) -> Result<(), StoreError> {
        if let Some(idem) = &cmd.idempotency {
            let response = serde_json::to_string(&outcome.receipts).unwrap_or_default();
            sqlx::query(
                "UPDATE idempotency_keys SET response = ?1 WHERE service = ?2 AND key = ?3",
            )
            .bind(response)
            .bind(&cmd.service)
            .bind(idem.key.as_str())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    pub async fn list(&self, user: &UserId, q: ListQuery) -> Result<Page, StoreError> {
        // One read transaction: in WAL mode it is a snapshot, so the page and the counts agree.
        let mut tx = self.reader.begin().await?;
        let (filter, order, bound, limit, unread_only) = match q {
            ListQuery::After {
                after,
                limit,
                unread_only,
            } => ("i.seq > ?2", "ASC", after, limit, unread_only),
            ListQuery::Before {
                before,
                limit,
                unread_only,
                archived,
            } => (
                if archived {
                    "i.seq < ?2 AND i.archived_at IS NOT NULL"
                } else {
                    "i.seq < ?2 AND i.archived_at IS NULL"
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
            "SELECT {COLUMNS} FROM {FROM} WHERE i.user_id = ?1 AND {filter} {unread_filter}
               AND (x.expires_at IS NULL OR x.expires_at > ?4)
             ORDER BY i.seq {order} LIMIT ?3"
        );
        // No read returns a copy past its time, even before the clean-up deletes it; the
        // counts below leave out the same copies (one `now` for both).
        let now = format_time(&now_micros());
        let rows = sqlx::query(&sql)
            .bind(user.as_str())
            .bind(bound)
            .bind(i64::from(limit))
            .bind(&now)
            .fetch_all(&mut *tx)
            .await?;
        let notifications = rows
            .iter()
            .map(|r| decode(r, &self.ids))
            .collect::<Result<Vec<_>, _>>()?;
        let counts = counts_at(&mut tx, user, &now).await?;
        tx.commit().await?;
        Ok(Page {
            notifications,
            counts,
            floor: Seq::ZERO,
        })
    }

    pub async fn counts(&self, user: &UserId) -> Result<Counts, StoreError> {
        let mut conn = self.reader.acquire().await?;
        counts(&mut conn, user).await
    }

    pub async fn mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        let now = format_time(&now_micros());
        let mut tx = self.writer.begin().await?;
        let changed = match what {
            MarkRead::Ids(ids) => sqlx::query(&format!(
                "UPDATE inbox SET read_at = ?1 WHERE user_id = ?2 AND read_at IS NULL AND {BY_IDS}"
            ))
            .bind(&now)
            .bind(user.as_str())
            .bind(id_lookup_json(&IdLookup::new(ids, &self.ids)))
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            MarkRead::UpTo(seq) => sqlx::query(
                "UPDATE inbox SET read_at = ?1 WHERE user_id = ?2 AND read_at IS NULL AND seq <= ?3",
            )
            .bind(&now)
            .bind(user.as_str())
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if changed > 0 {
            sqlx::query("UPDATE user_cursors SET unread = unread - ?1, version = version + 1 WHERE user_id = ?2")
                .bind(i64::try_from(changed).unwrap_or(i64::MAX))
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let counts = counts(&mut tx, user).await?;
        let announce = changed > 0 && self.outbox.is_on();
        if announce {
            let payload = unread_payload(&counts);
            insert_outbox(
                &mut tx,
                &self.outbox,
                user,
                OutboxKind::Unread,
                &payload,
                &now,
            )
            .await?;
        }
        tx.commit().await?;
        if announce {
            self.outbox.poke();
        }
        Ok(ReadOutcome { counts, changed })
    }

    pub async fn subscribe(&self, topic: &TopicName, users: &[UserId]) -> Result<u64, StoreError> {
        let now = format_time(&now_micros());
        let mut tx = self.writer.begin().await?;
        let mut added = 0;
        for user in users {
            added += sqlx::query(
                "INSERT INTO topic_subscribers (topic, user_id, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(topic.as_str())
            .bind(user.as_str())
            .bind(&now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    pub async fn unsubscribe(
        &self,
        topic: &TopicName,
        users: &[UserId],
    ) -> Result<u64, StoreError> {
        let users = serde_json::to_string(&users.iter().map(UserId::as_str).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        Ok(sqlx::query(
            "DELETE FROM topic_subscribers WHERE topic = ?1 AND user_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(topic.as_str())
        .bind(users)
        .execute(&self.writer)
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
            "SELECT user_id FROM topic_subscribers WHERE topic = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
        )
        .bind(topic.as_str())
        .bind(after.map_or("", UserId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().filter_map(|u| UserId::parse(u).ok()).collect())
    }

    pub async fn is_topic_subscriber(
        &self,
        topic: &TopicName,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM topic_subscribers WHERE topic = ?1 AND user_id = ?2")
                .bind(topic.as_str())
                .bind(user.as_str())
                .fetch_optional(&self.reader)
                .await?
                .is_some(),
        )
    }

    pub async fn topic_size(&self, topic: &TopicName) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM topic_subscribers WHERE topic = ?1")
                .bind(topic.as_str())
                .fetch_one(&self.reader)
                .await?,
        )
    }

    pub async fn purge_idempotency_keys(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
                .bind(format_time(&cutoff))
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Outbox rows for a lease: SQLite serves one replica, so no one else can take them and
/// the lease holds no lock.
#[derive(Debug)]
pub struct Lease {
    pub(super) rows: Vec<OutboxRow>,
    writer: SqlitePool,
}

impl Lease {
    pub async fn complete(self, done: &[i64]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(done).unwrap_or_else(|_| "[]".into());
        sqlx::query("DELETE FROM mqtt_outbox WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(ids)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

impl SqliteStore {
    pub async fn outbox_lease(&self, limit: u32) -> Result<Lease, StoreError> {
        let rows =
            sqlx::query("SELECT id, user_id, kind, payload FROM mqtt_outbox ORDER BY id LIMIT ?1")
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        Ok(Lease {
            rows: rows.iter().filter_map(outbox_row).collect(),
            writer: self.writer.clone(),
        })
    }

    pub async fn outbox_depth(&self, channel: OutboxChannel, cap: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM {} LIMIT ?1)",
            channel.table()
        ))
        .bind(cap)
        .fetch_one(&self.reader)
        .await?)
    }

    pub async fn outbox_drop_before(
        &self,
        channel: OutboxChannel,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "DELETE FROM {} WHERE created_at < ?1",
            channel.table()
        ))
        .bind(format_time(&cutoff))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }
}

/// A row with a kind this version does not know is skipped (left in place), not fatal.
fn outbox_row(r: &SqliteRow) -> Option<OutboxRow> {
    Some(OutboxRow {
        id: r.try_get(0).ok()?,
        user: r.try_get(1).ok()?,
        kind: OutboxKind::parse(r.try_get::<&str, _>(2).ok()?)?,
        payload: r.try_get(3).ok()?,
    })
}

pub(super) async fn insert_outbox(
    tx: &mut sqlx::SqliteConnection,
    outbox: &Outbox,
    user: &UserId,
    kind: OutboxKind,
    payload: &str,
    created_at: &str,
) -> Result<(), StoreError> {
    for channel in outbox.channels() {
        insert_row(tx, channel, user, kind, payload, created_at).await?;
    }
    Ok(())
}

/// One row on one channel; on Web Push, one per subscription of the user (none without).
pub(super) async fn insert_row(
    tx: &mut sqlx::SqliteConnection,
    channel: OutboxChannel,
    user: &UserId,
    kind: OutboxKind,
    payload: &str,
    created_at: &str,
) -> Result<(), StoreError> {
    let sql = match channel {
        OutboxChannel::Mqtt => {
            "INSERT INTO mqtt_outbox (user_id, kind, payload, created_at) VALUES (?1, ?2, ?3, ?4)"
        }
        OutboxChannel::WebPush => {
            "INSERT INTO webpush_outbox (subscription_id, user_id, kind, payload, created_at)
             SELECT id, ?1, ?2, ?3, ?4 FROM push_subscriptions WHERE user_id = ?1 ORDER BY id"
        }
    };
    sqlx::query(sql)
        .bind(user.as_str())
        .bind(kind.as_str())
        .bind(payload)
        .bind(created_at)
        .execute(tx)
        .await?;
    Ok(())
}

pub(super) async fn counts(
    conn: &mut sqlx::SqliteConnection,
    user: &UserId,
) -> Result<Counts, StoreError> {
    counts_at(conn, user, &format_time(&now_micros())).await
}

/// The user's counters as of `now` (an RFC 3339 time as stored).
async fn counts_at(
    conn: &mut sqlx::SqliteConnection,
    user: &UserId,
    now: &str,
) -> Result<Counts, StoreError> {
    // The stored counter, less the user's unread copies that expired but that the clean-up
    // has not deleted yet, so the count is exact at the second, like the list.
    let row = sqlx::query(
        "SELECT c.unread - (SELECT count(*) FROM inbox_expiry x JOIN inbox i
                              ON i.user_id = x.user_id AND i.seq = x.seq
                            WHERE x.user_id = ?1 AND x.expires_at <= ?2 AND i.read_at IS NULL),
                c.last_seq, c.version
         FROM user_cursors c WHERE c.user_id = ?1",
    )
    .bind(user.as_str())
    .bind(now)
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

pub(super) fn decode(row: &SqliteRow, key: &IdKey) -> Result<Notification, StoreError> {
    let bad =
        |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Database(sqlx::Error::Decode(e));
    let legacy: Option<String> = row.try_get("legacy_id")?;
    let data: Option<String> = row.try_get("data")?;
    let created_at: String = row.try_get("created_at")?;
    let read_at: Option<String> = row.try_get("read_at")?;
    let archived_at: Option<String> = row.try_get("archived_at")?;
    let seq: Seq = row.try_get("seq")?;
    let legacy = legacy
        .map(|l| l.parse::<uuid::Uuid>())
        .transpose()
        .map_err(|e| bad(Box::new(e)))?;
    Ok(Notification {
        id: stored_id(
            key,
            legacy,
            row.try_get("message_id")?,
            row.try_get("ordinal")?,
            seq,
        )?,
        seq,
        kind: row.try_get("type")?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        data: data
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| bad(Box::new(e)))?,
        link: row.try_get("link")?,
        created_at: parse_time(&created_at).map_err(|e| bad(Box::new(e)))?,
        read_at: read_at
            .map(|t| parse_time(&t))
            .transpose()
            .map_err(|e| bad(Box::new(e)))?,
        topic: row.try_get("topic")?,
        expires_at: row
            .try_get::<Option<String>, _>("expires_at")?
            .map(|t| parse_time(&t))
            .transpose()
            .map_err(|e| bad(Box::new(e)))?,
        archived_at: archived_at
            .map(|t| parse_time(&t))
            .transpose()
            .map_err(|e| bad(Box::new(e)))?,
    })
}

/// The rows of one user (`user_id = ?2` in the caller's statement) named by an
/// [`IdLookup`], bound as ?3 with [`id_lookup_json`]: derived ids by the primary key
/// (user, seq) checked against their message and ordinal; older ids by `legacy_id`.
pub(super) const BY_IDS: &str = "(
    (seq, message_id, ordinal) IN (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
        FROM json_each(?3, '$.derived'))
    OR legacy_id IN (SELECT value FROM json_each(?3, '$.legacy')))";

/// An [`IdLookup`] as the one JSON parameter [`BY_IDS`] reads.
pub(super) fn id_lookup_json(l: &IdLookup) -> String {
    let derived: Vec<(i64, i64, i32)> = l
        .seqs
        .iter()
        .zip(&l.messages)
        .zip(&l.ordinals)
        .map(|((s, m), o)| (*s, *m, *o))
        .collect();
    let legacy: Vec<String> = l.legacy.iter().map(|u| u.to_string()).collect();
    serde_json::json!({ "derived": derived, "legacy": legacy }).to_string()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}
