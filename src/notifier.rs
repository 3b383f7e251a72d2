//! The notifier: the one path by which a change to an inbox is made and then announced.
//!
//! It commits to the store first and only then tells the bus, so no client can be told of
//! a notification that a crash could still undo.

use crate::bus::{Bus, BusState, Event};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::store::{MarkRead, PublishCommand, PublishOutcome, ReadOutcome, Store, StoreError};

#[derive(Debug, Clone)]
pub struct Notifier {
    store: Store,
    bus: Bus,
    metrics: Metrics,
}

impl Notifier {
    pub fn new(store: Store, bus: Bus, metrics: Metrics) -> Self {
        Self {
            store,
            bus,
            metrics,
        }
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        let mut outcome = self.store.publish(cmd).await?;
        if !outcome.replayed {
            let committed_at_us = chrono::Utc::now().timestamp_micros();
            let deliveries = std::mem::take(&mut outcome.deliveries);
            self.metrics.published.inc_by(deliveries.len() as u64);
            self.bus.publish(
                deliveries
                    .into_iter()
                    .map(|d| Event::from_delivery(d, committed_at_us))
                    .collect(),
            );
        }
        Ok(outcome)
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

    pub fn bus_state(&self) -> BusState {
        self.bus.state()
    }
}
