//! The scheduler: publishes scheduled notifications (`deliver_at`) when they fall due.
//!
//! It sits beside the notifier, below every face, like retention: each delivery is an ordinary
//! publish through [`Notifier::publish`], so the seq is assigned at that commit (cursors stay
//! in commit order), preferences apply as they are then, outboxes fill and the bus announces.
//! The publish carries a [`ScheduleClaim`] that marks the schedule row in the same transaction
//! (see `store/scheduled.rs`): a replica killed, or a database lost, between the lease and the
//! commit leaves the row pending, never half-delivered, and it is never delivered twice.
//!
//! A topic's audience is read at delivery time, page by page: each page of subscribers is one
//! publish whose claim moves the row's fan-out cursor, so a fan-out cut short goes on where it
//! stopped, never from the start.
//!
//! Timing: after each round the task sleeps until the next due time, at most [`POLL`] (new
//! schedules stored by other replicas are seen that late at worst; this replica's own wake it
//! at once). Due rows are taken in batches of [`BATCH`], [`IN_FLIGHT`] publishes at a time.

use crate::domain::{NewNotification, UserId};
use crate::notifier::{Notifier, TOPIC_BATCH};
use crate::shutdown::Shutdown;
use crate::store::{DueSchedule, PublishCommand, ScheduleClaim, Store, StoreError};
use crate::telemetry::Chain;
use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The longest sleep between two looks at the table.
pub const POLL: Duration = Duration::from_millis(500);
/// The wait after a failed round (the database down): the rows stay leased to this replica,
/// which takes them again on its next round.
const RETRY: Duration = Duration::from_millis(500);
/// How long a lease keeps other replicas off a row: how late a row is when its replica dies
/// mid-batch. Far longer than a batch takes; a batch that took longer is still delivered
/// once (the claim), only maybe attempted twice.
pub const LEASE: Duration = Duration::from_secs(5);
/// Due rows per round.
const BATCH: u32 = 256;
/// Publishes in flight at once.
const IN_FLIGHT: usize = 4;
/// Schedules this replica cannot read that it remembers to leave alone, at most.
const SKIP_CAP: usize = 1000;

/// Starts the scheduler under `shutdown`.
pub fn spawn(store: Store, notifier: Notifier, shutdown: &Shutdown) {
    let task = Scheduler {
        wake: notifier.scheduler_wake(),
        store,
        notifier,
        me: Uuid::new_v4(),
        skip: Mutex::new(Vec::new()),
        shutdown: shutdown.clone(),
    };
    shutdown.spawn(task.run());
}

struct Scheduler {
    store: Store,
    notifier: Notifier,
    /// This replica, as the lease names it.
    me: Uuid,
    wake: Arc<Notify>,
    /// Schedules whose stored request this replica cannot read (stored by a later release,
    /// during a rolling upgrade or after a rollback): left pending, lease given back, for a
    /// replica that can; not taken again by this one, so they neither block the rows behind
    /// them nor keep it busy.
    skip: Mutex<Vec<Uuid>>,
    shutdown: Shutdown,
}

impl Scheduler {
    async fn run(self) {
        loop {
            let pause = match self.round().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => self.until_next_due().await,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "scheduled notifications wait; retrying");
                    RETRY
                }
            };
            if pause.is_zero() {
                if self.shutdown.is_cancelled() {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn until_next_due(&self) -> Duration {
        let now = Utc::now();
        match self.store.next_due(now, self.me, &self.skipped()).await {
            Ok(Some(at)) => (at - now).to_std().unwrap_or(Duration::ZERO).min(POLL),
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "could not read the next scheduled time");
                RETRY
            }
        }
    }

    /// Delivers one batch of due schedules; `true` when the batch was full (more may be due).
    async fn round(&self) -> Result<bool, StoreError> {
        let due = self
            .store
            .lease_due(Utc::now(), LEASE, self.me, BATCH, &self.skipped())
            .await?;
        let full = due.len() == BATCH as usize;
        let results: Vec<Result<(), StoreError>> = stream::iter(due)
            .map(|d| self.deliver(d))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(full)
    }

    fn skipped(&self) -> Vec<Uuid> {
        self.skip.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Leaves a schedule this replica cannot read to the others.
    async fn set_aside(&self, id: Uuid) -> Result<(), StoreError> {
        tracing::warn!(schedule = %id, "a scheduled request this release cannot read; left to another replica");
        if let Ok(mut skip) = self.skip.lock() {
            if skip.len() >= SKIP_CAP {
                skip.remove(0);
            }
            skip.push(id);
        }
        self.store.release_schedule(id).await?;
        Ok(())
    }

    async fn deliver(&self, due: DueSchedule) -> Result<(), StoreError> {
        let body: Option<serde_json::Value> = serde_json::from_str(&due.request).ok();
        let notification = match body.as_ref().map(NewNotification::parse) {
            Some(Ok(n)) => n,
            // Its `expires_at` passed while it waited (an outage, a backlog): it would be gone
            // at once, so it is done without being published, never retried for ever.
            Some(Err(errors)) if expired_while_waiting(body.as_ref(), &errors) => {
                tracing::info!(schedule = %due.id, "a scheduled notification expired before it could be delivered; dropped");
                return self
                    .store
                    .claim_schedule(&ScheduleClaim {
                        id: due.id,
                        after: due.topic_after.clone(),
                        next: due.topic_after,
                        done: true,
                    })
                    .await
                    .or_else(|e| match e {
                        StoreError::ScheduleGone => Ok(()),
                        e => Err(e),
                    });
            }
            _ => return self.set_aside(due.id).await,
        };
        let result = match &notification.topic {
            None => {
                let cmd = PublishCommand {
                    service: due.service,
                    idempotency: None,
                    notification,
                    schedule: Some(ScheduleClaim {
                        id: due.id,
                        after: None,
                        next: None,
                        done: true,
                    }),
                };
                self.notifier.publish(&cmd).await.map(|_| ())
            }
            Some(_) => self.fan_out(due, notification).await,
        };
        match result {
            // Cancelled, or delivered by another replica whose lease ran out under it.
            Err(StoreError::ScheduleGone) => Ok(()),
            other => other,
        }
    }

    /// A topic's schedule: one publish per page of the subscribers as they are now, each
    /// moving the row's cursor in its transaction.
    async fn fan_out(
        &self,
        due: DueSchedule,
        notification: NewNotification,
    ) -> Result<(), StoreError> {
        let Some(topic) = notification.topic.clone() else {
            return Ok(());
        };
        let mut cursor = due.topic_after.clone();
        loop {
            let after = cursor.as_deref().and_then(|u| UserId::parse(u).ok());
            let page = self
                .store
                .topic_subscribers(&topic, after.as_ref(), TOPIC_BATCH)
                .await?;
            let Some(last) = page.last().map(|u| u.as_str().to_owned()) else {
                return self
                    .store
                    .claim_schedule(&ScheduleClaim {
                        id: due.id,
                        after: cursor.clone(),
                        next: cursor,
                        done: true,
                    })
                    .await;
            };
            let full = page.len() == TOPIC_BATCH as usize;
            let mut n = notification.clone();
            n.recipients = page;
            let cmd = PublishCommand {
                service: due.service.clone(),
                idempotency: None,
                notification: n,
                schedule: Some(ScheduleClaim {
                    id: due.id,
                    after: cursor,
                    next: Some(last.clone()),
                    done: !full,
                }),
            };
            self.notifier.publish(&cmd).await?;
            if !full {
                return Ok(());
            }
            cursor = Some(last);
        }
    }
}

/// `true` when the only thing wrong with a stored request is that its `expires_at` has passed.
fn expired_while_waiting(
    body: Option<&serde_json::Value>,
    errors: &[crate::domain::FieldError],
) -> bool {
    let passed = body
        .and_then(|b| b.get("expires_at"))
        .and_then(|v| v.as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t <= Utc::now());
    passed && !errors.is_empty() && errors.iter().all(|e| e.field == "expires_at")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_passed_expiry_is_dropped() {
        let past = json!({"recipients": ["a"], "type": "a", "title": "t", "expires_at": "2001-01-01T00:00:00Z"});
        let errors = NewNotification::parse(&past).unwrap_err();
        assert!(expired_while_waiting(Some(&past), &errors));
        let broken = json!({"recipients": ["a"], "type": "a", "title": "", "expires_at": "2001-01-01T00:00:00Z"});
        let errors = NewNotification::parse(&broken).unwrap_err();
        assert!(!expired_while_waiting(Some(&broken), &errors));
    }
}
