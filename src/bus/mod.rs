//! The event bus: how a committed change reaches the replica that holds the user's
//! connections.
//!
//! Chosen by configuration behind one enum: with no Redis URL, an in-process bus serves one
//! replica; with one, Redis pub/sub carries events between replicas. Either way events for
//! this replica's own users are handed to its hub directly, so a replica whose Redis is down
//! still delivers to its own clients. The bus is never the source of truth: it only says
//! "this committed"; anyone who missed it catches up from the database by seq.

mod redis;

use crate::domain::{Notification, UserId};
use crate::hub::Hub;
use crate::store::{Counts, Delivery};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use self::redis::RedisBus;

/// A change that committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A notification committed for `user`: everything needed to deliver it without a
    /// database read per recipient.
    Notification {
        user: UserId,
        /// Boxed: it is most of the event's size, and the other variants are small.
        notification: Box<Notification>,
        counts: Counts,
        /// When it committed, for the publish-to-delivery latency histogram.
        committed_at_us: i64,
    },
    /// The user's unread count changed (a read, from any tab on any replica).
    Counts { user: UserId, counts: Counts },
    /// Events may have been lost on the way: every session re-reads the database.
    CatchUp,
}

impl Event {
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Event::Notification { user, .. } | Event::Counts { user, .. } => Some(user),
            Event::CatchUp => None,
        }
    }

    pub fn from_delivery(d: Delivery, committed_at_us: i64) -> Self {
        Event::Notification {
            user: d.recipient,
            notification: Box::new(d.notification),
            counts: d.counts,
            committed_at_us,
        }
    }
}

/// The bus's health, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusState {
    InProcess,
    Up,
    Down,
}

impl BusState {
    pub fn as_str(self) -> &'static str {
        match self {
            BusState::InProcess => "in-process",
            BusState::Up => "up",
            BusState::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Bus {
    InProcess(Hub),
    Redis(RedisBus),
}

impl Bus {
    /// Announces committed changes. Never waits on the network and never fails: local
    /// delivery happens now, remote delivery is queued (bounded) for the Redis publisher.
    pub fn publish(&self, events: Vec<Event>) {
        match self {
            Bus::InProcess(hub) => {
                for e in events {
                    hub.dispatch(Arc::new(e));
                }
            }
            Bus::Redis(bus) => bus.publish(events),
        }
    }

    pub fn state(&self) -> BusState {
        match self {
            Bus::InProcess(_) => BusState::InProcess,
            Bus::Redis(bus) => bus.state(),
        }
    }
}
