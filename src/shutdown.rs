//! The replica's one shutdown signal, passed in as a value (as mini-redis does), never read
//! from a global.
//!
//! A [`Shutdown`] is a cancellation token and the tracker of every task spawned under it.
//! Startup holds the root; each part gets a child: cancelling a parent cancels its
//! children, and every task any of them spawns is tracked by the one tracker, so startup can
//! wait for all of them, bounded by the grace period, before it closes the store.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A part of this one: cancelled when this is (or on its own), its tasks tracked here.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a task that the root waits for before the store closes. The task itself
    /// watches [`Shutdown::cancelled`] to know when to end.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits until every tracked task has ended, for at most `bound`; returns how many
    /// were still running then. Call after cancelling: no new task may be spawned after.
    pub async fn wait_for_tasks(&self, bound: Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(bound, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_the_root_ends_every_childs_tasks() {
        let root = Shutdown::new();
        let part = root.child();
        let watcher = part.clone();
        part.spawn(async move { watcher.cancelled().await });
        assert!(!part.is_cancelled());
        root.cancel();
        assert!(part.is_cancelled());
        assert_eq!(root.wait_for_tasks(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn a_child_stops_without_its_parent() {
        let root = Shutdown::new();
        let part = root.child();
        part.cancel();
        assert!(!root.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_reported_after_the_bound() {
        let root = Shutdown::new();
        root.spawn(std::future::pending::<()>());
        root.cancel();
        assert_eq!(root.wait_for_tasks(Duration::from_millis(10)).await, 1);
    }
}
