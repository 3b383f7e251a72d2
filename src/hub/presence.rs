//! Who is told when a user comes online on this replica, and when they go.
//!
//! The bus subscribes to a user's events only while the user holds a connection here, so
//! a replica's bus traffic follows the users it holds rather than the size of the cluster.
//! The bus sits upstream of the hub, so the hub names what it needs as this trait and the
//! wiring (`startup`) hands it the bus, as it hands it the store through
//! [`History`](super::History).

use crate::domain::UserId;

pub trait Presence: std::fmt::Debug + Send + Sync + 'static {
    /// The user's first connection on this replica arrived. Called under the hub's registry
    /// lock, so it must not block: record the wish and return.
    fn joined(&self, user: &UserId);

    /// The user's last connection on this replica left. Same rule as [`Presence::joined`].
    fn left(&self, user: &UserId);
}
