//! Preferences in the store: one document per user with a version (its ETag), the
//! conditional write, the per-replica cache the Postgres commit path guesses from, and the
//! types a user has received.
//!
//! ## Why a publish sees the rules in force at its commit
//! A `PUT` locks the user's cursor row (the row every publish to the user locks) and writes
//! the new version both to `preferences` and to that row's `prefs_version`, in one
//! transaction. So a publish and a `PUT` to the same user are ordered by that lock: the
//! publish sees the `PUT` that committed before it took the lock, and a `PUT` waiting for the
//! lock commits after the publish. SQLite has one writer, so there the order is the queue.
//! How each commit path reads the rules under the lock is described where it does.

use super::{PgStore, SqliteStore, Store, StoreError};
use crate::domain::{Preferences, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A user's preferences and their version; version 0 and no rules when never written.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPreferences {
    pub version: i64,
    pub preferences: Preferences,
}

/// One type the user has received, and how many of those notifications are in their inbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationTypeCount {
    #[serde(rename = "type")]
    #[schema(example = "order.shipped")]
    pub kind: String,
    pub count: i64,
}

/// At most this many types are listed (a type is at most 64 characters; a user rarely sees
/// more than a few dozen).
pub const MAX_TYPES: i64 = 500;

/// Decodes a stored document. It was validated when written, so a failure is a bug (or a
/// hand edit), reported as a database error rather than silently treated as "no rules".
pub(crate) fn decode(user: &str, document: &str) -> Result<Preferences, StoreError> {
    serde_json::from_str(document)
        .ok()
        .and_then(|v| Preferences::parse(&v).ok())
        .ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol(format!(
                "the stored preferences of {user} do not parse"
            )))
        })
}

pub(crate) fn encode(p: &Preferences) -> String {
    p.to_json().to_string()
}

/// The last preferences this replica saw for users who have any, with their version.
///
/// Only a guess: the Postgres commit statement checks each recipient's `prefs_version` on
/// the cursor row it locks against the version guessed here, and fails when one differs,
/// after which the batch's preferences are read again and the batch retried. So a stale or
/// evicted entry costs a retry, never a wrong delivery, and a replica learns of a `PUT` on
/// another replica at its next publish to that user. Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct PrefsCache {
    entries: Mutex<HashMap<String, (i64, Arc<Preferences>)>>,
}

const CACHE_ENTRIES: usize = 65_536;

impl PrefsCache {
    /// One lock for a whole batch: the entries of the users named (users without
    /// preferences have none).
    pub fn snapshot<'u>(
        &self,
        users: impl Iterator<Item = &'u str>,
    ) -> HashMap<String, (i64, Arc<Preferences>)> {
        let Ok(entries) = self.entries.lock() else {
            return HashMap::new();
        };
        if entries.is_empty() {
            return HashMap::new();
        }
        users
            .filter_map(|u| entries.get(u).map(|e| (u.to_owned(), e.clone())))
            .collect()
    }

    /// Records a `PUT` this replica just committed, so that its next publish to the user
    /// plans with the new rules instead of failing its check and reading them again (the
    /// first publish after a settings page saved cost a wasted statement and a read: 98 ms
    /// instead of 37 for 1,000 recipients in `bench/run.sh prefs`). Never replaces a newer
    /// version: two `PUT`s racing on this replica may finish in either order.
    pub fn remember(&self, user: &str, version: i64, preferences: Arc<Preferences>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.get(user).is_some_and(|(v, _)| *v >= version) {
            return;
        }
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(user.to_owned(), (version, preferences));
    }

    /// Records what was read for `users`: an entry for each user in `found`, none for the
    /// others (they have no preferences).
    pub fn update<'u>(
        &self,
        users: impl Iterator<Item = &'u str>,
        found: HashMap<String, (i64, Arc<Preferences>)>,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        for u in users {
            if !found.contains_key(u) {
                entries.remove(u);
            }
        }
        if entries.len() + found.len() > CACHE_ENTRIES {
            entries.clear();
        }
        entries.extend(found);
    }
}

impl Store {
    /// The user's preferences (version 0 and no rules if never written).
    pub async fn preferences(&self, user: &UserId) -> Result<StoredPreferences, StoreError> {
        match self {
            Store::Sqlite(s) => s.preferences(user).await,
            Store::Postgres(s) => s.preferences(user).await,
        }
    }

    /// Replaces the user's preferences, if `if_match` (when given) is the current version;
    /// otherwise [`StoreError::PreconditionFailed`]. Returns the new version.
    pub async fn put_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
        if_match: Option<i64>,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.put_preferences(user, preferences, if_match).await,
            Store::Postgres(s) => s.put_preferences(user, preferences, if_match).await,
        }
    }

    /// The types of the notifications in the user's inbox, most frequent first.
    pub async fn notification_types(
        &self,
        user: &UserId,
    ) -> Result<Vec<NotificationTypeCount>, StoreError> {
        match self {
            Store::Sqlite(s) => s.notification_types(user).await,
            Store::Postgres(s) => s.notification_types(user).await,
        }
    }
}

// The SQL of each backend, beside the other backend's, so the two stay alike.

impl SqliteStore {
    pub async fn preferences(&self, user: &UserId) -> Result<StoredPreferences, StoreError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT version, document FROM preferences WHERE user_id = ?1")
                .bind(user.as_str())
                .fetch_optional(&self.reader)
                .await?;
        stored(user, row)
    }

    /// In the writer's transaction, like every publish: they are ordered by the one writer.
    pub async fn put_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
        if_match: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let current: Option<i64> = sqlx::query_scalar(
            "INSERT INTO user_cursors (user_id, last_seq, unread, version) VALUES (?1, 0, 0, 0)
             ON CONFLICT (user_id) DO UPDATE SET last_seq = last_seq
             RETURNING prefs_version",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let version = next_version(current, if_match)?;
        sqlx::query(
            "INSERT INTO preferences (user_id, version, document, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id) DO UPDATE
               SET version = excluded.version, document = excluded.document, updated_at = excluded.updated_at",
        )
        .bind(user.as_str())
        .bind(version)
        .bind(encode(preferences))
        .bind(crate::domain::format_time(&crate::domain::now_micros()))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE user_cursors SET prefs_version = ?2 WHERE user_id = ?1")
            .bind(user.as_str())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version)
    }

    pub async fn notification_types(
        &self,
        user: &UserId,
    ) -> Result<Vec<NotificationTypeCount>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT m.type, count(*) AS n FROM inbox i JOIN messages m ON m.id = i.message_id
             WHERE i.user_id = ?1 GROUP BY m.type ORDER BY n DESC, m.type LIMIT ?2",
        )
        .bind(user.as_str())
        .bind(MAX_TYPES)
        .fetch_all(&self.reader)
        .await?;
        Ok(types(rows))
    }

    /// The preferences of these users, read inside the publish's write transaction.
    pub(super) async fn preferences_in(
        conn: &mut sqlx::SqliteConnection,
        users: &[&str],
    ) -> Result<HashMap<String, Arc<Preferences>>, StoreError> {
        let list = serde_json::to_string(users).unwrap_or_default();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT user_id, document FROM preferences
             WHERE user_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(list)
        .fetch_all(conn)
        .await?;
        rows.into_iter()
            .map(|(u, d)| {
                let p = decode(&u, &d)?;
                Ok((u, Arc::new(p)))
            })
            .collect()
    }
}

impl PgStore {
    pub async fn preferences(&self, user: &UserId) -> Result<StoredPreferences, StoreError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT version, document FROM preferences WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(&self.read_pool)
                .await?;
        stored(user, row)
    }

    /// Locks the cursor row first (creating it if needed, with nothing counted), so that
    /// the write is ordered with every publish to the user, and two writes with the same
    /// `If-Match` are ordered too: the second sees the first's version and gets a 412.
    pub async fn put_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
        if_match: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = sqlx::query_scalar(
            "INSERT INTO user_cursors (user_id, last_seq, unread, version) VALUES ($1, 0, 0, 0)
             ON CONFLICT (user_id) DO UPDATE SET last_seq = user_cursors.last_seq
             RETURNING prefs_version",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let version = next_version(current, if_match)?;
        sqlx::query(
            "INSERT INTO preferences (user_id, version, document, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (user_id) DO UPDATE
               SET version = EXCLUDED.version, document = EXCLUDED.document, updated_at = EXCLUDED.updated_at",
        )
        .bind(user.as_str())
        .bind(version)
        .bind(encode(preferences))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE user_cursors SET prefs_version = $2 WHERE user_id = $1")
            .bind(user.as_str())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.group
            .prefs()
            .remember(user.as_str(), version, Arc::new(preferences.clone()));
        Ok(version)
    }

    pub async fn notification_types(
        &self,
        user: &UserId,
    ) -> Result<Vec<NotificationTypeCount>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT m.type, count(*) AS n FROM inbox i JOIN messages m ON m.id = i.message_id
             WHERE i.user_id = $1 GROUP BY m.type ORDER BY n DESC, m.type LIMIT $2",
        )
        .bind(user.as_str())
        .bind(MAX_TYPES)
        .fetch_all(&self.read_pool)
        .await?;
        Ok(types(rows))
    }
}

/// Reads the preferences of `users` for the commit path, with the version each cursor row
/// holds (the one the commit statement checks), and records them in `cache`.
pub(crate) async fn pg_refresh(
    pool: &sqlx::PgPool,
    cache: &PrefsCache,
    users: &[&str],
) -> Result<(), StoreError> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT c.user_id, c.prefs_version, p.document
         FROM user_cursors c JOIN preferences p ON p.user_id = c.user_id
         WHERE c.user_id = ANY($1) AND c.prefs_version IS NOT NULL",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for (u, v, d) in rows {
        let p = decode(&u, &d)?;
        found.insert(u, (v, Arc::new(p)));
    }
    cache.update(users.iter().copied(), found);
    Ok(())
}

fn stored(user: &UserId, row: Option<(i64, String)>) -> Result<StoredPreferences, StoreError> {
    match row {
        None => Ok(StoredPreferences {
            version: 0,
            preferences: Preferences::default(),
        }),
        Some((version, document)) => Ok(StoredPreferences {
            version,
            preferences: decode(user.as_str(), &document)?,
        }),
    }
}

/// The version a write makes from the cursor row's `current` one (`None`: never written),
/// if `if_match` (when given) names it; the same rule on both backends.
fn next_version(current: Option<i64>, if_match: Option<i64>) -> Result<i64, StoreError> {
    let current = current.unwrap_or(0);
    if if_match.is_some_and(|v| v != current) {
        return Err(StoreError::PreconditionFailed { current });
    }
    Ok(current + 1)
}

fn types(rows: Vec<(String, i64)>) -> Vec<NotificationTypeCount> {
    rows.into_iter()
        .map(|(kind, count)| NotificationTypeCount { kind, count })
        .collect()
}

// ---- Quiet hours on the bridges ----
//
// A commit that a recipient's quiet hours hold back on a bridge channel (MQTT, Web Push)
// writes no outbox rows on it for them but a row in the channel's hold table
// (`OutboxChannel::quiet_table`: `mqtt_quiet`, `push_quiet`) with the end of the hold;
// `Store::release_quiet` later writes, for every hold on that channel that has ended, the
// newest unread notification and the unread count then (see [`release_rows`]), holding the
// user's cursor row lock like every other outbox writer, so per user the outbox stays in
// commit order. A notification that commits after a hold ended but before its release runs
// may be delivered before that newest one: consumers keep the highest seq, as with any
// at-least-once repeat. Each bridge releases its own channel's holds, so a hold is recorded
// only for a channel that is on.

/// The holds of a commit on `channel`, one per user (the latest end), in user order.
pub(crate) fn holds<'a, 'b: 'a>(
    batch: impl Iterator<Item = &'a super::PreparedPublish<'b>>,
    channel: super::OutboxChannel,
) -> std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>> {
    let mut out = std::collections::BTreeMap::new();
    for prep in batch {
        for (user, until) in prep.held(channel) {
            let e = out.entry(user.as_str().to_owned()).or_insert(*until);
            *e = (*e).max(*until);
        }
    }
    out
}

/// What the end of a hold sends on `channel`: the newest unread notification with the
/// unread count now (as a commit writes them: on MQTT the notification and the count, on
/// Web Push one push that carries both, the banner and the badge), or the count alone when
/// nothing is unread any more. Everything older stays in the inbox, unsent: one update, not
/// a burst of interruptions at the end of the night.
pub(crate) fn release_rows(
    newest: Option<&crate::domain::Notification>,
    counts: &crate::domain::Counts,
    channel: super::OutboxChannel,
) -> Vec<(super::OutboxKind, String)> {
    match newest {
        Some(n) => super::outbox::rows_for(n, counts, channel, None),
        None => vec![(
            super::OutboxKind::Unread,
            super::outbox::unread_payload(counts),
        )],
    }
}

fn bad_hold(channel: super::OutboxChannel, m: impl std::fmt::Display) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "{}: {m}",
        channel.quiet_table()
    )))
}

impl SqliteStore {
    pub(super) async fn record_holds(
        conn: &mut sqlx::SqliteConnection,
        channel: super::OutboxChannel,
        holds: &std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {t} (user_id, until) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET until = max(until, excluded.until)",
            t = channel.quiet_table()
        );
        for (user, until) in holds {
            sqlx::query(&sql)
                .bind(user)
                .bind(crate::domain::format_time(until))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    pub async fn release_quiet(
        &self,
        channel: super::OutboxChannel,
        now: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let table = channel.quiet_table();
        let stamp = crate::domain::format_time(&now);
        // Checked on a reader first: the one writer is taken only when a hold has ended.
        let due: Option<i64> =
            sqlx::query_scalar(&format!("SELECT 1 FROM {table} WHERE until <= ?1 LIMIT 1"))
                .bind(&stamp)
                .fetch_optional(&self.reader)
                .await?;
        if due.is_none() {
            return Ok(0);
        }
        let mut tx = self.writer.begin().await?;
        let users: Vec<String> = sqlx::query_scalar(&format!(
            "DELETE FROM {table} WHERE user_id IN
               (SELECT user_id FROM {table} WHERE until <= ?1 ORDER BY until LIMIT ?2)
             RETURNING user_id"
        ))
        .bind(&stamp)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        for user in &users {
            let user = UserId::parse(user).map_err(|m| bad_hold(channel, m))?;
            let newest = sqlx::query(&format!(
                "SELECT {} FROM {} WHERE i.user_id = ?1 AND i.read_at IS NULL
                 ORDER BY i.seq DESC LIMIT 1",
                super::sqlite::COLUMNS,
                super::sqlite::FROM
            ))
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let newest = match newest {
                Some(row) => Some(super::sqlite::decode(&row, &self.ids)?),
                None => None,
            };
            let counts = super::sqlite::counts(&mut tx, &user).await?;
            for (kind, payload) in release_rows(newest.as_ref(), &counts, channel) {
                super::sqlite::insert_row(&mut tx, channel, &user, kind, &payload, &stamp).await?;
            }
        }
        tx.commit().await?;
        if !users.is_empty() {
            self.outbox.poke();
        }
        Ok(users.len() as u64)
    }
}

pub(crate) async fn pg_record_holds(
    conn: &mut sqlx::PgConnection,
    channel: super::OutboxChannel,
    holds: &std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
) -> Result<(), StoreError> {
    if holds.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = holds.keys().map(String::as_str).collect();
    let until: Vec<chrono::DateTime<chrono::Utc>> = holds.values().copied().collect();
    sqlx::query(&format!(
        "INSERT INTO {t} (user_id, until)
         SELECT * FROM unnest($1::text[], $2::timestamptz[])
         ON CONFLICT (user_id) DO UPDATE SET until = GREATEST({t}.until, EXCLUDED.until)",
        t = channel.quiet_table()
    ))
    .bind(&users)
    .bind(&until)
    .execute(conn)
    .await?;
    Ok(())
}

/// The holds of a commit batch on every channel that is on.
pub(crate) async fn pg_record_all_holds<'a, 'b: 'a>(
    conn: &mut sqlx::PgConnection,
    outbox: &super::Outbox,
    batch: impl Iterator<Item = &'a super::PreparedPublish<'b>> + Clone,
) -> Result<(), StoreError> {
    for channel in outbox.channels() {
        pg_record_holds(&mut *conn, channel, &holds(batch.clone(), channel)).await?;
    }
    Ok(())
}

impl PgStore {
    pub async fn release_quiet(
        &self,
        channel: super::OutboxChannel,
        now: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let table = channel.quiet_table();
        // Checked on the read pool first: a write transaction only when a hold has ended.
        let due: Option<i32> =
            sqlx::query_scalar(&format!("SELECT 1 FROM {table} WHERE until <= $1 LIMIT 1"))
                .bind(now)
                .fetch_optional(&self.read_pool)
                .await?;
        if due.is_none() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut users: Vec<String> = sqlx::query_scalar(&format!(
            "DELETE FROM {table} WHERE user_id IN
               (SELECT user_id FROM {table} WHERE until <= $1 ORDER BY until LIMIT $2
                FOR UPDATE SKIP LOCKED)
             RETURNING user_id"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        // The cursor rows in sorted order, like every writer, so no deadlock.
        users.sort_unstable();
        let mut rows = super::pg_rows::OutboxColumns::default();
        for user in &users {
            let uid = UserId::parse(user).map_err(|m| bad_hold(channel, m))?;
            sqlx::query("SELECT 1 FROM user_cursors WHERE user_id = $1 FOR UPDATE")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
            let newest = sqlx::query(&format!(
                "SELECT {} FROM {} WHERE i.user_id = $1 AND i.read_at IS NULL
                 ORDER BY i.seq DESC LIMIT 1",
                super::postgres::COLUMNS,
                super::postgres::FROM
            ))
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            let newest = match newest {
                Some(row) => Some(super::postgres::decode(&row, &self.ids)?),
                None => None,
            };
            let counts = super::postgres::counts(&mut tx, &uid).await?;
            // On this channel only: each bridge ends its own holds.
            for (kind, payload) in release_rows(newest.as_ref(), &counts, channel) {
                rows.push_on(channel, user, kind, payload);
            }
        }
        rows.insert(&mut tx, &self.outbox).await?;
        tx.commit().await?;
        if !users.is_empty() {
            self.outbox.poke();
        }
        Ok(users.len() as u64)
    }
}

impl Store {
    /// Ends the holds on `channel` of quiet hours that are over by `now` (at most `limit`
    /// users): the newest unread notification and the unread count each (see
    /// [`release_rows`]). Returns how many.
    pub async fn release_quiet(
        &self,
        channel: super::OutboxChannel,
        now: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.release_quiet(channel, now, limit).await,
            Store::Postgres(s) => s.release_quiet(channel, now, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_is_remembered_unless_a_newer_version_is() {
        let cache = PrefsCache::default();
        let rules = |n: usize| {
            Arc::new(Preferences {
                rules: Vec::with_capacity(n),
                quiet_hours: None,
            })
        };
        cache.remember("alice", 2, rules(0));
        let version = |c: &PrefsCache| c.snapshot(["alice"].into_iter()).get("alice").map(|e| e.0);
        assert_eq!(version(&cache), Some(2));
        // A slower PUT with an older version finishes last: the newer one stays.
        cache.remember("alice", 1, rules(0));
        assert_eq!(version(&cache), Some(2));
        cache.remember("alice", 3, rules(0));
        assert_eq!(version(&cache), Some(3));
        assert!(cache.snapshot(["bob"].into_iter()).is_empty());
    }

    #[test]
    fn next_version_checks_if_match_against_the_current_version() {
        assert_eq!(next_version(None, None).ok(), Some(1));
        assert_eq!(next_version(None, Some(0)).ok(), Some(1));
        assert_eq!(next_version(Some(3), Some(3)).ok(), Some(4));
        assert!(matches!(
            next_version(Some(3), Some(2)),
            Err(StoreError::PreconditionFailed { current: 3 })
        ));
        assert!(matches!(
            next_version(None, Some(1)),
            Err(StoreError::PreconditionFailed { current: 0 })
        ));
    }

    #[test]
    fn a_release_with_nothing_unread_sends_the_count_alone_on_its_channel() {
        use super::super::{OutboxChannel, OutboxKind};
        let counts = crate::domain::Counts {
            unread: 0,
            seq: crate::domain::Seq::new(7),
            version: 9,
        };
        for channel in [OutboxChannel::Mqtt, OutboxChannel::WebPush] {
            let rows = release_rows(None, &counts, channel);
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].0, OutboxKind::Unread);
            let v: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap_or_default();
            assert_eq!(v, serde_json::json!({"unread": 0, "seq": 7, "version": 9}));
        }
        assert_ne!(
            OutboxChannel::Mqtt.quiet_table(),
            OutboxChannel::WebPush.quiet_table()
        );
    }
}
