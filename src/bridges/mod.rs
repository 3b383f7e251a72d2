//! Bridges: faces that push what committed to another system instead of serving clients.
//! They stand on the store alone (its transactional outbox), never on the HTTP faces.

pub mod mqtt;
pub mod webpush;

use crate::shutdown::Shutdown;
use crate::store::{OutboxChannel, Store};
use crate::telemetry::Chain;
use chrono::Utc;
use std::time::Duration;

/// Ended quiet-hours holds released per step.
const QUIET_RELEASE_BATCH: u32 = 500;
/// After a failed release (the database away), wait at least this.
const QUIET_RELEASE_RETRY: Duration = Duration::from_secs(1);

/// Ends the holds on `channel` of users whose quiet hours are over (issue 25), every `every`:
/// the store writes the newest unread notification and the unread count each to the
/// channel's outbox, which its bridge sends like any other rows. Each bridge runs it for its
/// own channel, on every replica; a hold is released once (the store deletes it in the same
/// transaction).
pub(crate) async fn release_quiet_hours(
    store: Store,
    channel: OutboxChannel,
    every: Duration,
    shutdown: Shutdown,
) {
    loop {
        let wait = match store
            .release_quiet(channel, Utc::now(), QUIET_RELEASE_BATCH)
            .await
        {
            // A full batch: more may be due at once.
            Ok(n) if n == u64::from(QUIET_RELEASE_BATCH) => Duration::ZERO,
            Ok(_) => every,
            Err(e) => {
                tracing::warn!(
                    error = %Chain(&e),
                    channel = channel.name(),
                    "could not release ended quiet hours"
                );
                every.max(QUIET_RELEASE_RETRY)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
