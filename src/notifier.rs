//! The notifier: the one path by which a change to an inbox is made and then announced.
//!
//! It commits to the store first and only then tells the bus, so no client can be told of
//! a notification that a crash could still undo.

use crate::domain::UserId;
use crate::store::{MarkRead, PublishCommand, PublishOutcome, ReadOutcome, Store, StoreError};

#[derive(Debug, Clone)]
pub struct Notifier {
    store: Store,
}

impl Notifier {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        self.store.publish(cmd).await
    }

    pub async fn mark_read(
        &self,
        user: &UserId,
        what: &MarkRead,
    ) -> Result<ReadOutcome, StoreError> {
        self.store.mark_read(user, what).await
    }

    /// `in-process`, `up` or `down`, for readiness.
    pub fn bus_state(&self) -> &'static str {
        "in-process"
    }
}
