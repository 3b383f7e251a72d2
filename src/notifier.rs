//! The notifier: the one path by which a change to an inbox is made and then announced.
//!
//! It commits to the store first and only then tells the bus, so no client can be told of
//! a notification that a crash could still undo.

use crate::bus::{Bus, BusState};
use crate::domain::{ChangeKind, Counts, Event, MarkRead, Preferences, UserId};
use crate::metrics::Metrics;
use crate::store::{
    ChangeOutcome, Delivery, PublishCommand, PublishOutcome, ReadOutcome, Retracted, Store,
    StoreError,
};
use crate::store::{CountCursor, Pruned};
use crate::store::{NewSchedule, ScheduleOutcome};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// Recipients per transaction in a topic fan-out.
pub const TOPIC_BATCH: u32 = 1000;

/// A topic fan-out's batches in flight at once. Their recipients are disjoint (pages of
/// the subscriber list), so they never wait for each other's locks, and on Postgres the
/// group committer may join them into one commit; the bound keeps one huge topic from
/// taking every committer from other publishers.
const TOPIC_IN_FLIGHT: usize = 4;

/// How many subscribers a topic publish reached, and how many of them muted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicReach {
    /// Subscribers it was stored for.
    pub recipients: u64,
    /// Subscribers whose preferences muted it.
    pub muted: u64,
}

impl TopicReach {
    fn add(&mut self, done: &PublishOutcome) {
        let muted = done.muted();
        self.muted += muted;
        self.recipients += done.receipts.len() as u64 - muted;
    }
}

/// A service's pending scheduled notifications, unless configured otherwise.
pub const DEFAULT_MAX_PENDING_SCHEDULES: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct Notifier {
    store: Store,
    bus: Bus,
    metrics: Metrics,
    /// The cap on one service's pending schedules (`TIDINGS__SCHEDULE__MAX_PENDING_PER_SERVICE`).
    max_pending_schedules: u64,
    /// Wakes this replica's scheduler when a schedule is stored, so one due sooner than its
    /// next look is not late.
    scheduler_wake: Arc<Notify>,
}

impl Notifier {
    pub fn new(store: Store, bus: Bus, metrics: Metrics) -> Self {
        Self {
            store,
            bus,
            metrics,
            max_pending_schedules: DEFAULT_MAX_PENDING_SCHEDULES,
            scheduler_wake: Arc::new(Notify::new()),
        }
    }

    pub fn with_max_pending_schedules(mut self, max: u64) -> Self {
        self.max_pending_schedules = max;
        self
    }

    pub(crate) fn scheduler_wake(&self) -> Arc<Notify> {
        self.scheduler_wake.clone()
    }

    /// Stores a publish for later (see `scheduler.rs`): nothing is visible, counted or
    /// delivered before `deliver_at`. `request` is the body without `deliver_at`.
    pub async fn schedule(
        &self,
        cmd: &PublishCommand,
        deliver_at: chrono::DateTime<chrono::Utc>,
        request: &serde_json::Value,
    ) -> Result<ScheduleOutcome, StoreError> {
        let outcome = self
            .store
            .schedule(&NewSchedule {
                service: cmd.service.clone(),
                deliver_at,
                request: request.to_string(),
                idempotency: cmd.idempotency.clone(),
                max_pending: self.max_pending_schedules,
            })
            .await?;
        if !outcome.replayed {
            self.scheduler_wake.notify_one();
        }
        Ok(outcome)
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        let mut outcome = self.store.publish(cmd).await?;
        if !outcome.replayed {
            let committed_at_us = chrono::Utc::now().timestamp_micros();
            let deliveries = std::mem::take(&mut outcome.deliveries);
            self.metrics.published.inc_by(deliveries.len() as u64);
            let mut events = Vec::with_capacity(deliveries.len());
            for mut d in deliveries {
                // A collapse: the replaced notification is announced as deleted first, so a
                // client that follows `changed` never shows both (see `replaced_counts`).
                if let Some(change) = d.replaced.take() {
                    events.push(Event::Changed {
                        user: d.recipient.clone(),
                        change,
                        counts: replaced_counts(&d.counts),
                    });
                }
                events.push(committed(d, committed_at_us));
            }
            self.bus.publish(events);
        }
        Ok(outcome)
    }

    /// Publishes to every subscriber of the command's topic, in batches of [`TOPIC_BATCH`]
    /// recipients, each its own transaction: a topic of 100,000 users neither holds one giant
    /// transaction nor keeps its subscribers' cursor rows locked against other publishers for
    /// the whole fan-out. Each subscriber still gets a seq and an unread count as usual.
    /// Subscribers are read in user id order with keyset paging, so the list is never held
    /// whole; while a page commits the next one is read, with at most [`TOPIC_IN_FLIGHT`]
    /// batches committing at once. Returns how many recipients it reached. Not atomic across
    /// batches: if the database fails midway, the batches that committed were delivered.
    pub async fn publish_topic(&self, cmd: &PublishCommand) -> Result<TopicReach, StoreError> {
        let Some(topic) = &cmd.notification.topic else {
            return Ok(TopicReach::default());
        };
        let mut reached = TopicReach::default();
        let mut after: Option<UserId> = None;
        let mut in_flight = FuturesUnordered::new();
        let mut failed = None;
        loop {
            let batch = match self
                .store
                .topic_subscribers(topic, after.as_ref(), TOPIC_BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let Some(last) = batch.last().cloned() else {
                break;
            };
            let full = batch.len() == TOPIC_BATCH as usize;
            let mut part = cmd.clone();
            part.idempotency = None;
            part.notification.recipients = batch;
            in_flight.push(async move { self.publish(&part).await });
            if in_flight.len() >= TOPIC_IN_FLIGHT {
                match in_flight.next().await {
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Some(Ok(done)) => reached.add(&done),
                    None => {}
                }
            }
            if !full {
                break;
            }
            after = Some(last);
        }
        // Every batch already handed to the store runs to its end, even after a failure: a
        // batch that commits must also be announced.
        while let Some(done) = in_flight.next().await {
            match done {
                Ok(done) => reached.add(&done),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(reached),
        }
    }

    pub async fn mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        let outcome = self.store.mark_read(user, what).await?;
        if outcome.changed > 0 {
            self.bus.publish(vec![Event::Counts {
                user: user.clone(),
                counts: outcome.counts,
            }]);
        }
        Ok(outcome)
    }

    /// One retention step by age (see `Store::prune_older_than`), announced: every touched
    /// user's tabs take the new counters, as after a read.
    pub async fn prune_older_than(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        let pruned = self.store.prune_older_than(cutoff, batch).await?;
        self.announce_pruned(&pruned);
        Ok(pruned)
    }

    /// One retention step by count (see `Store::prune_beyond`), announced.
    pub async fn prune_beyond(
        &self,
        keep: u64,
        batch: u32,
        cursor: CountCursor,
    ) -> Result<(Pruned, Option<CountCursor>), StoreError> {
        let (pruned, next) = self.store.prune_beyond(keep, batch, cursor).await?;
        self.announce_pruned(&pruned);
        Ok((pruned, next))
    }

    fn announce_pruned(&self, pruned: &Pruned) {
        if pruned.changed.is_empty() {
            return;
        }
        self.bus.publish(
            pruned
                .changed
                .iter()
                .map(|(user, counts)| Event::Counts {
                    user: user.clone(),
                    counts: *counts,
                })
                .collect(),
        );
    }

    /// Archives, unarchives or deletes the user's notifications, then tells every
    /// connection of the user, on every replica, which ones changed and the new counters.
    pub async fn change(
        &self,
        user: &UserId,
        kind: ChangeKind,
        what: &MarkRead,
    ) -> Result<ChangeOutcome, StoreError> {
        let outcome = self.store.change(user, kind, what).await?;
        if !outcome.change.ids.is_empty() {
            self.bus.publish(vec![Event::Changed {
                user: user.clone(),
                change: Box::new(outcome.change.clone()),
                counts: outcome.counts,
            }]);
        }
        Ok(outcome)
    }

    /// Deletes, for every recipient, the message behind notification `id` if `service`
    /// published it, and tells each recipient's connections. `None`: not this service's
    /// (or no longer there).
    pub async fn retract(&self, service: &str, id: Uuid) -> Result<Option<u64>, StoreError> {
        let Some(retracted) = self.store.retract(service, id).await? else {
            return Ok(None);
        };
        let reached = retracted.len() as u64;
        self.announce_deleted(retracted);
        Ok(Some(reached))
    }

    /// Tells each user's connections which of their notifications were deleted (a
    /// retraction or an expiry step): one `changed` event per user who lost any.
    fn announce_deleted(&self, retracted: Vec<Retracted>) {
        self.bus.publish(
            retracted
                .into_iter()
                .filter(|r| !r.outcome.change.ids.is_empty())
                .map(|Retracted { user, outcome }| Event::Changed {
                    user,
                    change: Box::new(outcome.change),
                    counts: outcome.counts,
                })
                .collect(),
        );
    }

    /// One expiry step (see `Store::expire_due`), announced like a retraction: each user's
    /// connections get a `changed` event with the deleted ids and seqs. Returns how many due
    /// rows it took (fewer than `batch`: nothing more is due).
    pub async fn expire_due(&self, batch: u32) -> Result<u64, StoreError> {
        let expired = self.store.expire_due(batch).await?;
        if !expired.retracted.is_empty() {
            self.metrics.expired.inc_by(
                expired
                    .retracted
                    .iter()
                    .map(|r| r.outcome.change.ids.len() as u64)
                    .sum(),
            );
            self.announce_deleted(expired.retracted);
        }
        Ok(expired.due)
    }

    /// Replaces a user's preferences (see `Store::put_preferences`) and tells every
    /// connection of the user, on every replica, so each open settings page follows.
    pub async fn put_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
        if_match: Option<i64>,
    ) -> Result<i64, StoreError> {
        let version = self
            .store
            .put_preferences(user, preferences, if_match)
            .await?;
        self.bus.publish(vec![Event::Preferences {
            user: user.clone(),
            version,
            document: Box::new(preferences.to_json()),
        }]);
        Ok(version)
    }

    pub fn bus_state(&self) -> BusState {
        self.bus.state()
    }
}

/// The counters between a collapse's deletion and its new notification: the commit took the
/// replaced one off (`unread - 1`, `version + 1`) and then added the new one (`unread + 1`,
/// `version + 1`, `seq + 1`), so one step back from the counters after it.
fn replaced_counts(after: &Counts) -> Counts {
    Counts {
        unread: after.unread - 1,
        seq: after.seq.plus(-1),
        version: after.version - 1,
    }
}

/// The event that announces one committed notification: everything a replica needs to
/// deliver it without a database read per recipient.
fn committed(d: Delivery, committed_at_us: i64) -> Event {
    Event::Notification {
        user: d.recipient,
        notification: Box::new(d.notification),
        counts: d.counts,
        committed_at_us,
    }
}
