//! Store: the inbox, the per-user cursor and unread counter, and idempotency keys.
//!
//! The database is the source of truth. Each backend is one struct; [`Store`] picks one by
//! the URL's scheme, so the rest of the service never knows which it talks to.
//!
//! ## Why `seq` is exact
//! Each user has one row in `user_cursors` (`last_seq`, `unread`). A publish bumps that row
//! inside its transaction and holds its lock until commit, so two publishes to the same user
//! commit in the order of the seqs they took. A reader that has seen seq N and asks for
//! "after N" therefore never misses one that commits later. Recipients are locked in sorted
//! order so that two multi-recipient publishes cannot deadlock each other.

mod changes;
mod group_commit;
mod lifecycle;
mod outbox;
mod pg_rows;
mod postgres;
mod preferences;
mod push;
mod retention;
mod scheduled;
mod sqlite;

/// The MQTT outbox is counted up to this many rows: a bounded query however large the
/// backlog (beyond it, the depth reads "at least").
pub const OUTBOX_DEPTH_CAP: i64 = 1_000_000;

/// Reads the id key the migration made (see `migrations/*/20261207000001_id_keys.sql`).
async fn load_id_key<'e, E, DB>(executor: E) -> Result<IdKey, StoreError>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'r> Vec<u8>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> (Vec<u8>, i64): sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let (key, since): (Vec<u8>, i64) =
        sqlx::query_as("SELECT key, since_message FROM id_keys WHERE id = 1")
            .fetch_one(executor)
            .await?;
    Ok(IdKey::new(&key, since))
}

use crate::domain::{
    Counts, Decision, IdKey, IdempotencyKey, MarkRead, NewNotification, Notification,
    NotificationId, Page, Seq, TopicName, UserId,
};
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

pub use changes::{ChangeOutcome, Retracted};
pub use lifecycle::{Expired, EXPIRY_BATCH};
pub use outbox::{expires_at_of, Outbox, OutboxChannel, OutboxKind, OutboxRow};
pub use postgres::PgStore;
pub(crate) use preferences::PrefsCache;
pub use preferences::{NotificationTypeCount, StoredPreferences};
pub use push::{PushLease, PushResult, PushRow, PushSubscription, PushTarget, SubscribeOutcome};
pub use retention::{CountCursor, Pruned, RetentionLease};
pub use scheduled::{
    Cancel, DueSchedule, NewSchedule, ScheduleClaim, ScheduleOutcome, ScheduleReceipt,
    ScheduledItem, DELIVERED_KEPT,
};
pub use sqlite::SqliteStore;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// At most this many notifications per page.
pub const MAX_PAGE: u32 = 200;

/// A page's size when the client names none (REST and gRPC alike).
pub const DEFAULT_PAGE: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is overloaded: a 503, never the caller's fault.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The same idempotency key was used before with a different body.
    #[error("the idempotency key was already used with a different request body")]
    IdempotencyMismatch,
    #[error("unsupported database URL {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A recipient's preferences changed between planning a commit batch and locking its
    /// cursor row: the batch is planned again (see `group_commit.rs`); never reaches a client.
    #[error("the recipients' preferences changed during the commit")]
    StalePreferences,
    /// A conditional write (`If-Match`) found a newer version: a 412.
    #[error("the preferences changed since version {current} was read")]
    PreconditionFailed { current: i64 },
    /// A scheduled publish found its schedule delivered, moved on or cancelled meanwhile (by
    /// another replica, or a cancel): nothing was written; never reaches a client.
    #[error("the scheduled notification was delivered or cancelled meanwhile")]
    ScheduleGone,
    /// The service holds its maximum of pending scheduled notifications: a 429.
    #[error("the service already has {max} scheduled notifications pending")]
    TooManyScheduled { max: u64 },
    /// Anything else the database said: a bug on our side, not a client error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// Errors that mean "the database is not there right now", as opposed to a bad query.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Postgres: 08 connection exception, 53 insufficient resources, 57P0x shutdown.
            // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 13 SQLITE_FULL, 10 SQLITE_IOERR.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "5" | "6" | "10" | "13" | "261" | "517")
        }
        _ => false,
    }
}

/// A publish as the store takes it: validated content, who sent it, and its idempotency key.
#[derive(Debug, Clone)]
pub struct PublishCommand {
    pub service: String,
    pub idempotency: Option<Idempotency>,
    pub notification: NewNotification,
    /// Set when the scheduler publishes a scheduled notification: the publish's transaction
    /// marks the schedule row (see [`ScheduleClaim`]), so it commits exactly once.
    pub schedule: Option<ScheduleClaim>,
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    /// A digest of the request body, so a reused key with another body is refused.
    pub fingerprint: String,
}

/// What the publisher is told about one recipient's copy: its id and seq, or `muted` when
/// the recipient's preferences muted it at commit (then it was not stored: no id, no seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<Uuid>,
    #[schema(value_type = String)]
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub seq: Option<Seq>,
    #[serde(with = "rfc3339_serde")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// `true` when the recipient's preferences muted this notification.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

impl PublishOutcome {
    /// How many recipients' preferences muted the notification.
    pub fn muted(&self) -> u64 {
        self.receipts.iter().filter(|r| r.muted).count() as u64
    }
}

mod rfc3339_serde {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        crate::domain::serialize_time(t, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// What a bus needs to announce one committed notification to its recipient, without a
/// database read per recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub recipient: UserId,
    pub notification: Notification,
    /// The recipient's counters right after this notification committed.
    pub counts: Counts,
    /// The recipient's unread notification with the same `collapse_key` that this one
    /// replaced (deleted in the same transaction), announced as `changed` before it.
    pub replaced: Option<Box<crate::domain::InboxChange>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PublishOutcome {
    pub receipts: Vec<Receipt>,
    /// Empty when the request was an idempotent replay: nothing new to announce.
    pub deliveries: Vec<Delivery>,
    pub replayed: bool,
    /// An idempotent replay of a request that was scheduled (202) when first sent.
    pub scheduled: Option<ScheduleReceipt>,
}

/// Which slice of the inbox to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListQuery {
    /// seq > after, oldest first: the catch-up view.
    After {
        after: Seq,
        limit: u32,
        unread_only: bool,
    },
    /// seq < before (or from the newest), newest first: the inbox view. Archived
    /// notifications are left out, or with `archived` they are the only ones shown.
    Before {
        before: Option<Seq>,
        limit: u32,
        unread_only: bool,
        archived: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    pub counts: Counts,
    /// How many notifications went from unread to read; 0 means nothing to announce.
    pub changed: u64,
}

/// The backend, chosen by the database URL.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Dispatches one call to whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Connects, creating an SQLite file if needed, and runs the embedded migrations.
    /// Background tasks (Postgres's group committers) run under `shutdown`. With the
    /// outbox on (the MQTT bridge is configured), every publish and every change of an
    /// unread count also writes its outbox rows in the same transaction.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        outbox: Outbox,
        shutdown: &Shutdown,
    ) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(
                SqliteStore::connect(url, max_connections, outbox).await?,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(
                PgStore::connect(url, max_connections, outbox, shutdown).await?,
            ))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// A trivial query, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// Writes one notification for every recipient in one transaction, or none.
    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        dispatch!(self, s => s.publish(cmd).await)
    }

    /// A page of the inbox. One read from a cursor (`After`) also carries the history floor,
    /// read after the page (see [`Page::floor`]).
    pub async fn list(&self, user: &UserId, q: ListQuery) -> Result<Page, StoreError> {
        let mut page = dispatch!(self, s => s.list(user, q).await)?;
        if let ListQuery::After { .. } = q {
            page.floor = self.history_floor(user).await?;
        }
        Ok(page)
    }

    pub async fn counts(&self, user: &UserId) -> Result<Counts, StoreError> {
        dispatch!(self, s => s.counts(user).await)
    }

    pub async fn mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        dispatch!(self, s => s.mark_read(user, what).await)
    }

    /// Adds users to a topic; returns how many were not subscribed yet.
    pub async fn subscribe(&self, topic: &TopicName, users: &[UserId]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.subscribe(topic, users).await)
    }

    /// Removes users from a topic; returns how many were subscribed.
    pub async fn unsubscribe(
        &self,
        topic: &TopicName,
        users: &[UserId],
    ) -> Result<u64, StoreError> {
        dispatch!(self, s => s.unsubscribe(topic, users).await)
    }

    /// One page of a topic's subscribers in user id order, after `after` (keyset paging, so
    /// a fan-out over 100,000 users never holds a giant result or transaction).
    pub async fn topic_subscribers(
        &self,
        topic: &TopicName,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        dispatch!(self, s => s.topic_subscribers(topic, after, limit).await)
    }

    pub async fn is_topic_subscriber(
        &self,
        topic: &TopicName,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.is_topic_subscriber(topic, user).await)
    }

    pub async fn topic_size(&self, topic: &TopicName) -> Result<i64, StoreError> {
        dispatch!(self, s => s.topic_size(topic).await)
    }

    /// Forgets idempotency keys older than [`IDEMPOTENCY_TTL`]; returns how many.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => s.purge_idempotency_keys(idempotency_cutoff()).await)
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// Stores a scheduled publish (see `scheduled.rs`), under its idempotency key if any.
    pub async fn schedule(&self, s: &NewSchedule) -> Result<ScheduleOutcome, StoreError> {
        dispatch!(self, st => st.schedule(s).await)
    }

    /// A page of `service`'s pending schedules in creation order, after schedule `after`.
    pub async fn list_scheduled(
        &self,
        service: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        dispatch!(self, s => s.list_scheduled(service, after, limit).await)
    }

    pub async fn cancel_scheduled(&self, service: &str, id: Uuid) -> Result<Cancel, StoreError> {
        dispatch!(self, s => s.cancel_scheduled(service, id).await)
    }

    /// Up to `limit` due schedules for replica `me`, oldest first, except those in `skip`.
    /// Postgres leases them for `lease` (`FOR UPDATE SKIP LOCKED`: other replicas take
    /// others); SQLite has one process.
    pub async fn lease_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        me: Uuid,
        limit: u32,
        skip: &[Uuid],
    ) -> Result<Vec<DueSchedule>, StoreError> {
        match self {
            Store::Sqlite(s) => s.lease_due(now, limit, skip).await,
            Store::Postgres(s) => s.lease_due(now, lease, me, limit, skip).await,
        }
    }

    /// When the next pending schedule that replica `me` may take is due (`skip` aside).
    pub async fn next_due(
        &self,
        now: DateTime<Utc>,
        me: Uuid,
        skip: &[Uuid],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.next_due(skip).await,
            Store::Postgres(s) => s.next_due(now, me, skip).await,
        }
    }

    /// Gives a leased row back at once (this replica cannot read its request).
    pub async fn release_schedule(&self, id: Uuid) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_schedule(id).await)
    }

    /// Applies a schedule claim without a publish (a topic fan-out's empty last page).
    pub async fn claim_schedule(&self, claim: &ScheduleClaim) -> Result<(), StoreError> {
        dispatch!(self, s => s.claim_schedule(claim).await)
    }

    /// Forgets schedules delivered longer than [`DELIVERED_KEPT`] ago; returns how many.
    pub async fn purge_scheduled(&self) -> Result<u64, StoreError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(DELIVERED_KEPT).unwrap_or_default();
        dispatch!(self, s => s.purge_scheduled(cutoff).await)
    }

    /// Whether outbox rows are written, and the signal that some were.
    pub fn outbox(&self) -> &Outbox {
        dispatch!(self, s => s.outbox())
    }

    /// Takes the oldest outbox rows, in id order, for at most `users` users and at most
    /// `per_user` rows each. On Postgres the lease is a transaction that holds each of those
    /// users' oldest row locked (`FOR UPDATE SKIP LOCKED`): another replica skips those users
    /// until the lease ends, so one user's rows are published by one worker at a time, in
    /// order, while other users' rows go to other workers. A replica that dies mid-lease
    /// drops its connection; Postgres rolls the lease back and the rows go to the others.
    pub async fn outbox_lease(&self, users: u32, per_user: u32) -> Result<OutboxLease, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(OutboxLease::Sqlite(
                s.outbox_lease(users.saturating_mul(per_user)).await?,
            )),
            Store::Postgres(s) => Ok(OutboxLease::Postgres(
                s.outbox_lease(users, per_user).await?,
            )),
        }
    }

    /// Rows waiting, counted up to `cap` (a full count of a huge backlog would itself be slow).
    /// The deployment's id key, read from the database at start.
    pub(crate) fn id_key(&self) -> &IdKey {
        match self {
            Store::Sqlite(s) => &s.ids,
            Store::Postgres(s) => &s.ids,
        }
    }

    pub async fn outbox_depth(&self, cap: i64) -> Result<i64, StoreError> {
        self.outbox_depth_of(OutboxChannel::Mqtt, cap).await
    }

    /// Rows waiting on `channel`, counted up to `cap`.
    pub async fn outbox_depth_of(
        &self,
        channel: OutboxChannel,
        cap: i64,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.outbox_depth(channel, cap).await)
    }

    /// Drops rows written before `cutoff`; returns how many.
    pub async fn outbox_drop_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        self.outbox_drop_before_of(OutboxChannel::Mqtt, cutoff)
            .await
    }

    /// Drops `channel`'s rows written before `cutoff` (rows under a live lease excepted).
    pub async fn outbox_drop_before_of(
        &self,
        channel: OutboxChannel,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, s => s.outbox_drop_before(channel, cutoff).await)
    }
}

/// Outbox rows taken by one bridge worker, released by [`OutboxLease::complete`] (or, on
/// Postgres, rolled back when dropped).
#[derive(Debug)]
pub enum OutboxLease {
    Sqlite(sqlite::Lease),
    Postgres(postgres::Lease),
}

impl OutboxLease {
    /// In id order: per user, commit order.
    pub fn rows(&self) -> &[OutboxRow] {
        match self {
            OutboxLease::Sqlite(l) => &l.rows,
            OutboxLease::Postgres(l) => &l.rows,
        }
    }

    /// Deletes the rows whose publishes the broker acknowledged (and any made redundant),
    /// and ends the lease.
    pub async fn complete(self, done: &[i64]) -> Result<(), StoreError> {
        match self {
            OutboxLease::Sqlite(l) => l.complete(done).await,
            OutboxLease::Postgres(l) => l.complete(done).await,
        }
    }
}

fn idempotency_cutoff() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(IDEMPOTENCY_TTL).unwrap_or_default()
}

/// The rows one publish writes, computed before any SQL runs so both backends write the
/// same thing: one timestamp for all, and each recipient's ordinal (its position among the
/// recipients as named), which with the message id and its seq makes its notification id.
pub(crate) struct PreparedPublish<'a> {
    pub cmd: &'a PublishCommand,
    /// Encrypts the ids handed out (see [`IdKey`]).
    pub key: &'a IdKey,
    pub created_at: DateTime<Utc>,
    /// Sorted by user id: the lock order. The `u32` is the recipient's ordinal.
    pub rows: Vec<(UserId, u32)>,
    /// Recipients whose preferences muted it (see [`PreparedPublish::mute`]): no row, no
    /// seq, only a receipt that says so. Sorted by user id.
    pub muted: Vec<(UserId, u32)>,
    /// Stored recipients who muted this notification on the `mqtt` channel only: their
    /// outbox gets the badge update but not the notification. Sorted by user id.
    pub mqtt_muted: Vec<UserId>,
    /// Stored recipients whose quiet hours hold back `mqtt` now, with when they end: no
    /// outbox rows for them; the commit records the hold in `mqtt_quiet` instead, and the
    /// bridge sends one update when it ends. Sorted by user id.
    pub mqtt_held: Vec<(UserId, DateTime<Utc>)>,
    /// Stored recipients who muted this notification on the `push` channel: no Web Push
    /// for it. Sorted by user id.
    pub push_muted: Vec<UserId>,
    /// Stored recipients whose quiet hours hold back `push` now, with when they end: no Web
    /// Push rows; the commit records the hold in `push_quiet`, and when it ends the newest
    /// unread notification is pushed, carrying the unread count then. Sorted by user id.
    pub push_held: Vec<(UserId, DateTime<Utc>)>,
}

impl<'a> PreparedPublish<'a> {
    pub fn new(cmd: &'a PublishCommand, key: &'a IdKey) -> Self {
        let mut rows: Vec<(UserId, u32)> = cmd
            .notification
            .recipients
            .iter()
            .zip(0u32..)
            .map(|(u, i)| (u.clone(), i))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            cmd,
            key,
            created_at: crate::domain::now_micros(),
            rows,
            muted: Vec::new(),
            mqtt_muted: Vec::new(),
            mqtt_held: Vec::new(),
            push_muted: Vec::new(),
            push_held: Vec::new(),
        }
    }

    /// Moves the recipients whose preferences do not store this notification from `rows` to
    /// `muted`. `lookup` answers from preferences read once for the whole commit batch; a
    /// recipient without any is never muted. A `critical` notification is never muted.
    pub fn mute(
        &mut self,
        lookup: impl Fn(&str) -> Option<std::sync::Arc<crate::domain::Preferences>>,
    ) {
        let n = &self.cmd.notification;
        if n.critical {
            return;
        }
        let (kind, topic) = (n.kind.as_str(), n.topic.as_ref().map(|t| t.as_str()));
        let mut kept = Vec::with_capacity(self.rows.len());
        for row in std::mem::take(&mut self.rows) {
            match lookup(row.0.as_str()) {
                Some(p) => {
                    let v = p.verdict(kind, topic, false, self.created_at);
                    if !v.stored {
                        self.muted.push(row);
                        continue;
                    }
                    match v.mqtt {
                        Decision::Mute => self.mqtt_muted.push(row.0.clone()),
                        Decision::Hold { until } => self.mqtt_held.push((row.0.clone(), until)),
                        Decision::Deliver => {}
                    }
                    match v.push {
                        Decision::Mute => self.push_muted.push(row.0.clone()),
                        Decision::Hold { until } => self.push_held.push((row.0.clone(), until)),
                        Decision::Deliver => {}
                    }
                    kept.push(row);
                }
                None => kept.push(row),
            }
        }
        self.rows = kept;
    }

    /// The outbox rows of one recipient's copy, per bridge channel, in the order they are
    /// written. MQTT: the notification and the badge update, only the badge when the
    /// recipient muted this notification on `mqtt`, none while their quiet hours hold `mqtt`
    /// back. Web Push: the notification (which carries the badge), none when `push` is muted
    /// or held. The writers keep the channels that are on.
    pub fn outbox_rows(
        &self,
        user: &str,
        n: &Notification,
        counts: &Counts,
    ) -> Vec<(OutboxChannel, OutboxKind, String)> {
        let muted = self
            .mqtt_muted
            .binary_search_by(|u| u.as_str().cmp(user))
            .is_ok();
        let held = self
            .mqtt_held
            .binary_search_by(|(u, _)| u.as_str().cmp(user))
            .is_ok();
        let push_skipped = self
            .push_muted
            .binary_search_by(|u| u.as_str().cmp(user))
            .is_ok()
            || self
                .push_held
                .binary_search_by(|(u, _)| u.as_str().cmp(user))
                .is_ok();
        let key = self
            .cmd
            .notification
            .collapse_key
            .as_ref()
            .map(|k| k.as_str());
        let mqtt = outbox::rows_for(n, counts, OutboxChannel::Mqtt, None)
            .into_iter()
            .filter(|(kind, _)| !(held || (muted && *kind == OutboxKind::Notification)))
            .map(|(kind, payload)| (OutboxChannel::Mqtt, kind, payload));
        let push = outbox::rows_for(n, counts, OutboxChannel::WebPush, key)
            .into_iter()
            .filter(|_| !push_skipped)
            .map(|(kind, payload)| (OutboxChannel::WebPush, kind, payload));
        mqtt.chain(push).collect()
    }

    /// The recipients whose quiet hours hold this notification back on `channel`, with when
    /// they end. Sorted by user id.
    pub fn held(&self, channel: OutboxChannel) -> &[(UserId, DateTime<Utc>)] {
        match channel {
            OutboxChannel::Mqtt => &self.mqtt_held,
            OutboxChannel::WebPush => &self.push_held,
        }
    }

    /// Every recipient, stored or muted: the rows whose cursor a commit locks.
    pub fn recipients(&self) -> impl Iterator<Item = &UserId> {
        self.rows.iter().chain(&self.muted).map(|(u, _)| u)
    }

    /// The id of one recipient's notification, or an error past the id's ranges (2^48
    /// messages, 2^42 notifications per user): refused, never a repeated id.
    pub fn id(key: &IdKey, message: i64, ordinal: u32, seq: Seq) -> Result<Uuid, StoreError> {
        NotificationId::new(message, ordinal, seq.get())
            .map(|n| n.render(key))
            .ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol(format!(
                    "notification id out of range: message {message}, seq {}",
                    seq.get()
                )))
            })
    }

    pub fn notification(&self, id: Uuid, seq: Seq) -> Notification {
        let n = &self.cmd.notification;
        Notification {
            id,
            seq,
            kind: n.kind.as_str().to_owned(),
            title: n.title.as_str().to_owned(),
            body: n.body.as_ref().map(|b| b.as_str().to_owned()),
            data: n.data.clone().map(|d| d.into_value()),
            link: n.link.as_ref().map(|l| l.as_str().to_owned()),
            created_at: self.created_at,
            read_at: None,
            archived_at: None,
            topic: n.topic.as_ref().map(|t| t.as_str().to_owned()),
            expires_at: n.expires_at,
        }
    }

    pub fn data_json(&self) -> Option<String> {
        self.cmd
            .notification
            .data
            .as_ref()
            .and_then(|d| serde_json::to_string(d.as_map()).ok())
    }

    /// Builds the outcome from the stored message's id and the counters the cursor update
    /// returned (in `rows` order), with receipts in the order the sender named the recipients.
    pub fn outcome(&self, message: i64, bumped: &[Counts]) -> Result<PublishOutcome, StoreError> {
        let mut deliveries = Vec::with_capacity(self.rows.len());
        for ((user, ordinal), counts) in self.rows.iter().zip(bumped) {
            deliveries.push(Delivery {
                recipient: user.clone(),
                notification: self.notification(
                    Self::id(self.key, message, *ordinal, counts.seq)?,
                    counts.seq,
                ),
                counts: *counts,
                replaced: None,
            });
        }
        let mut by_user: std::collections::HashMap<&UserId, Receipt> = deliveries
            .iter()
            .map(|d| {
                let r = Receipt {
                    id: Some(d.notification.id),
                    recipient: d.recipient.as_str().to_owned(),
                    seq: Some(d.notification.seq),
                    created_at: self.created_at,
                    muted: false,
                };
                (&d.recipient, r)
            })
            .collect();
        for (user, _) in &self.muted {
            let r = Receipt {
                id: None,
                recipient: user.as_str().to_owned(),
                seq: None,
                created_at: self.created_at,
                muted: true,
            };
            by_user.insert(user, r);
        }
        let receipts = self
            .cmd
            .notification
            .recipients
            .iter()
            .filter_map(|r| by_user.remove(r))
            .collect();
        Ok(PublishOutcome {
            receipts,
            deliveries,
            replayed: false,
            scheduled: None,
        })
    }
}

/// Notification ids as the store looks them up in one user's inbox: derived ids by their
/// (seq, message, ordinal), which the primary key (user, seq) finds; ids from before the
/// storage layout by `legacy_id`. Ids that are neither find nothing, as unknown ids should.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct IdLookup {
    pub seqs: Vec<i64>,
    pub messages: Vec<i64>,
    pub ordinals: Vec<i32>,
    pub legacy: Vec<Uuid>,
}

impl IdLookup {
    pub fn new(ids: &[Uuid], key: &IdKey) -> Self {
        let mut l = Self::default();
        for id in ids {
            match NotificationId::decode(id, key) {
                // An ordinal past i32 was never stored (the column is a 32-bit integer).
                Some(n) => {
                    if let Ok(o) = i32::try_from(n.ordinal) {
                        l.seqs.push(n.seq);
                        l.messages.push(n.message);
                        l.ordinals.push(o);
                    }
                }
                None => l.legacy.push(*id),
            }
        }
        l
    }
}

/// A stored row's id: its legacy id if it has one, else the derived one.
pub(crate) fn stored_id(
    key: &IdKey,
    legacy: Option<Uuid>,
    message: i64,
    ordinal: i32,
    seq: Seq,
) -> Result<Uuid, StoreError> {
    match legacy {
        Some(id) => Ok(id),
        None => PreparedPublish::id(key, message, u32::try_from(ordinal).unwrap_or(0), seq),
    }
}

/// Decodes a stored idempotent response back into receipts.
pub(crate) fn replay(response: &str) -> Result<PublishOutcome, StoreError> {
    // The same key and body, sent first with a `deliver_at` then to come, now past: the
    // first answer was the schedule's, and it is the one to give again.
    if let Some(receipt) = scheduled::receipt_of(response) {
        return Ok(PublishOutcome {
            receipts: Vec::new(),
            deliveries: Vec::new(),
            replayed: true,
            scheduled: Some(receipt),
        });
    }
    let receipts: Vec<Receipt> = serde_json::from_str(response)
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
    Ok(PublishOutcome {
        receipts,
        deliveries: Vec::new(),
        replayed: true,
        scheduled: None,
    })
}
