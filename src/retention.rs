//! The retention task: prunes notifications past `TIDINGS__RETENTION__MAX_AGE` or beyond
//! each user's newest `TIDINGS__RETENTION__MAX_PER_USER`, every `INTERVAL_SECONDS`.
//!
//! It sits beside the notifier (each step commits through the store and is announced to the
//! user's tabs like a read), below every face. A run is a string of short transactions of
//! about `BATCH_SIZE` rows each, so a publish waits at most one batch behind it. On Postgres
//! one replica at a time runs it, holding an advisory lock for the run; the others skip that
//! run (counted in `tidings_retention_runs_skipped_total`) and try again at the next.

use crate::configuration::RetentionSettings;
use crate::metrics::RetentionMetrics;
use crate::notifier::Notifier;
use crate::shutdown::Shutdown;
use crate::store::{CountCursor, Pruned, Store, StoreError};
use crate::telemetry::Chain;
use std::time::{Duration, Instant};

/// The first run waits this long after start: the replica serves first, then tidies.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(1);

/// What a run reached before it ended, for the log line and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub by_age: u64,
    pub by_count: u64,
    pub messages: u64,
}

/// Starts the task under `shutdown`, when anything is to be pruned.
pub fn spawn(
    store: Store,
    notifier: Notifier,
    settings: RetentionSettings,
    metrics: RetentionMetrics,
    shutdown: &Shutdown,
) {
    if !settings.enabled() {
        return;
    }
    let task = Retention {
        store,
        notifier,
        settings,
        metrics,
        shutdown: shutdown.clone(),
    };
    shutdown.spawn(task.run());
}

struct Retention {
    store: Store,
    notifier: Notifier,
    settings: RetentionSettings,
    metrics: RetentionMetrics,
    shutdown: Shutdown,
}

impl Retention {
    async fn run(self) {
        let mut wait = FIRST_RUN_AFTER;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = Duration::from_secs(self.settings.interval_seconds);
            match self.store.retention_lease().await {
                Ok(Some(lease)) => {
                    let started = Instant::now();
                    let result = self.run_once().await;
                    lease.release().await;
                    self.metrics
                        .last_run_seconds
                        .set(started.elapsed().as_secs_f64());
                    match result {
                        Ok(r) if r.by_age + r.by_count > 0 => tracing::info!(
                            by_age = r.by_age,
                            by_count = r.by_count,
                            messages = r.messages,
                            "retention pruned old notifications"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            self.metrics.failures.inc();
                            tracing::warn!(error = %Chain(&e), "retention stopped early; it goes on at its next run");
                        }
                    }
                    self.metrics.runs.inc();
                }
                Ok(None) => {
                    self.metrics.skipped.inc();
                    tracing::debug!("another replica is pruning; skipping this run");
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::warn!(error = %Chain(&e), "could not take the retention lock");
                }
            }
        }
    }

    /// One run: by age, then by count, each step a short transaction, until nothing is left
    /// or the replica stops.
    async fn run_once(&self) -> Result<RunReport, StoreError> {
        let mut report = RunReport::default();
        let batch = self.settings.batch_size;
        if let Some(max_age) = self.settings.max_age {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
            while !self.shutdown.is_cancelled() {
                let pruned = self.notifier.prune_older_than(cutoff, batch).await?;
                self.count(&pruned, "age");
                report.by_age += pruned.rows;
                report.messages += pruned.messages;
                if pruned.rows == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if let Some(keep) = self.settings.max_per_user {
            let mut cursor = CountCursor::default();
            while !self.shutdown.is_cancelled() {
                let (pruned, next) = self.notifier.prune_beyond(keep, batch, cursor).await?;
                self.count(&pruned, "count");
                report.by_count += pruned.rows;
                report.messages += pruned.messages;
                match next {
                    Some(next) => cursor = next,
                    None => break,
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    fn count(&self, pruned: &Pruned, reason: &'static str) {
        self.metrics.pruned(reason).inc_by(pruned.rows);
        self.metrics.messages.inc_by(pruned.messages);
    }
}
