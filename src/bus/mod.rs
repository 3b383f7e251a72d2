//! The event bus: how a committed change reaches the replica that holds the user's
//! connections.
//!
//! Chosen by configuration behind one enum: with no Redis URL, an in-process bus serves one
//! replica; with one, Redis pub/sub carries events between replicas. Either way events for
//! this replica's own users are handed to its hub directly, so a replica whose Redis is down
//! still delivers to its own clients. The bus is never the source of truth: it only says
//! "this committed"; anyone who missed it catches up from the database by seq.

pub mod envelope;
mod redis;

use crate::domain::Event;
use crate::hub::Hub;
use std::sync::Arc;

pub use self::redis::RedisBus;

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
