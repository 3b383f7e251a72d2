//! The expiry task: deletes notifications whose `expires_at` has passed (issue 26).
//!
//! Reads never return an expired notification whatever this task's pace (the store filters
//! them), so the task is what moves the rest: it deletes the copies, takes them off the
//! unread counters and tells each user's connections with a `changed` event, as a service's
//! retraction does. It looks every [`TICK`] (the index of due rows answers "nothing" in
//! microseconds), and while rows are due it takes them in batches of [`EXPIRY_BATCH`], each
//! its own short transaction, yielding between them so publishes interleave. It runs on
//! every replica: on Postgres each batch takes its rows `FOR UPDATE SKIP LOCKED`.

use crate::notifier::Notifier;
use crate::shutdown::Shutdown;
use crate::store::EXPIRY_BATCH;
use crate::telemetry::Chain;
use std::time::Duration;

/// How often the task looks for due rows: well inside the 1 s the `changed` event promises.
pub const TICK: Duration = Duration::from_millis(250);

/// Batches per tick at most: past it the task sleeps a tick, so even a million rows due at
/// once never keep the writer busy without a pause.
const MAX_BATCHES_PER_TICK: usize = 20;

pub fn spawn(notifier: Notifier, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            for _ in 0..MAX_BATCHES_PER_TICK {
                match notifier.expire_due(EXPIRY_BATCH).await {
                    Ok(due) => {
                        failing = false;
                        if due < u64::from(EXPIRY_BATCH) {
                            break;
                        }
                    }
                    Err(e) => {
                        // Once per outage, not every tick: it goes on at the next tick.
                        if !failing {
                            tracing::warn!(error = %Chain(&e), "expiring notifications failed; retrying");
                        }
                        failing = true;
                        break;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    });
}
