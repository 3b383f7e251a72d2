//! Where the hub reads what a connection missed.
//!
//! The database is the source of truth, and the store sits upstream of the hub on the data's
//! path. So the hub names what it needs as this trait and the wiring (`startup`) hands it the
//! store: the hub never imports the store, and a test or a future source (a read replica, a
//! cache) plugs in without touching it.

use crate::domain::{Page, Seq, UserId};
use std::future::Future;
use std::pin::Pin;

/// Why a read failed. The hub only logs it and retries, so it needs no more than the cause.
pub type HistoryError = Box<dyn std::error::Error + Send + Sync>;

/// One read in flight. Boxed: a connection storm holds one per new connection, and the
/// small counters read should not take the size of the replay read's state machine.
pub type HistoryRead = Pin<Box<dyn Future<Output = Result<Page, HistoryError>> + Send>>;

pub trait History: std::fmt::Debug + Send + Sync + 'static {
    /// At most `limit` of `user`'s notifications with seq > `after`, oldest first, the
    /// user's counters from the same snapshot, and the history floor (see [`Page::floor`]).
    fn after(&self, user: UserId, after: Seq, limit: u32) -> HistoryRead;

    /// Only the user's counters (a page with no notifications): where "from now on" starts.
    fn latest(&self, user: UserId) -> HistoryRead;
}
