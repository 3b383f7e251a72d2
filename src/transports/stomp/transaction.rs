//! STOMP transactions (`BEGIN`, `COMMIT`, `ABORT`): frames sent with a `transaction`
//! header are held and take effect only when that transaction commits.
//!
//! The session validates each frame when it arrives (a bad `SEND` body or an unknown ack
//! id is reported at once, not at COMMIT) and holds what is left to do, of type `T`.
//! COMMIT hands the held actions back in arrival order; ABORT, DISCONNECT and the end of
//! the connection drop them.
//!
//! Everything is bounded because it all lives in server memory on a client's say-so: the
//! number of open transactions, the actions per transaction, and the weight (bytes of
//! bodies) held across all of them.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLimits {
    /// Open transactions per session.
    pub max_open: usize,
    /// Actions held in one transaction.
    pub max_actions: usize,
    /// Total weight held across the session's transactions.
    pub max_weight: usize,
}

impl Default for TxLimits {
    /// 10 open transactions of up to 100 actions each, and 1 MiB of bodies in all (one
    /// `SEND` of 1,000 ids is about 40 KiB).
    fn default() -> Self {
        TxLimits {
            max_open: 10,
            max_actions: 100,
            max_weight: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transaction '{0}' is already open")]
    Duplicate(String),
    #[error("no open transaction '{0}'")]
    Unknown(String),
    #[error("more than {0} open transactions")]
    TooManyOpen(usize),
    #[error("transaction '{0}' holds more than {1} frames")]
    TooManyActions(String, usize),
    #[error("open transactions hold more than {0} bytes")]
    TooHeavy(usize),
}

#[derive(Debug)]
struct Held<T> {
    actions: Vec<T>,
    weight: usize,
}

/// The open transactions of one session.
#[derive(Debug)]
pub struct Transactions<T> {
    limits: TxLimits,
    open: HashMap<String, Held<T>>,
    weight: usize,
}

impl<T> Transactions<T> {
    pub fn new(limits: TxLimits) -> Self {
        Transactions {
            limits,
            open: HashMap::new(),
            weight: 0,
        }
    }

    /// Open transactions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn is_open(&self, id: &str) -> bool {
        self.open.contains_key(id)
    }

    pub fn begin(&mut self, id: &str) -> Result<(), TxError> {
        if self.open.contains_key(id) {
            return Err(TxError::Duplicate(shown(id)));
        }
        if self.open.len() >= self.limits.max_open {
            return Err(TxError::TooManyOpen(self.limits.max_open));
        }
        self.open.insert(
            id.to_owned(),
            Held {
                actions: Vec::new(),
                weight: 0,
            },
        );
        Ok(())
    }

    /// Holds `action` (of `weight` bytes) until `id` commits.
    pub fn hold(&mut self, id: &str, action: T, weight: usize) -> Result<(), TxError> {
        let Some(held) = self.open.get_mut(id) else {
            return Err(TxError::Unknown(shown(id)));
        };
        if held.actions.len() >= self.limits.max_actions {
            return Err(TxError::TooManyActions(shown(id), self.limits.max_actions));
        }
        let total = self.weight.saturating_add(weight);
        if total > self.limits.max_weight {
            return Err(TxError::TooHeavy(self.limits.max_weight));
        }
        held.actions.push(action);
        held.weight += weight;
        self.weight = total;
        Ok(())
    }

    /// Closes `id` and returns its actions, oldest first, for the caller to apply.
    pub fn commit(&mut self, id: &str) -> Result<Vec<T>, TxError> {
        let held = self
            .open
            .remove(id)
            .ok_or_else(|| TxError::Unknown(shown(id)))?;
        self.weight -= held.weight;
        Ok(held.actions)
    }

    /// Closes `id`, dropping its actions.
    pub fn abort(&mut self, id: &str) -> Result<(), TxError> {
        self.commit(id).map(drop)
    }
}

/// A transaction id as echoed in an error message: client input, so cut short.
fn shown(id: &str) -> String {
    super::ack::truncate(id, 64).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Transactions<&'static str> {
        Transactions::new(TxLimits {
            max_open: 2,
            max_actions: 3,
            max_weight: 100,
        })
    }

    #[test]
    fn commit_returns_held_actions_in_order_and_abort_drops_them() {
        let mut t = small();
        t.begin("a").unwrap();
        t.begin("b").unwrap();
        t.hold("a", "a1", 1).unwrap();
        t.hold("b", "b1", 1).unwrap();
        t.hold("a", "a2", 1).unwrap();
        assert_eq!(t.commit("a").unwrap(), vec!["a1", "a2"]);
        assert!(!t.is_open("a"));
        t.abort("b").unwrap();
        assert!(t.is_empty());
        // Both are closed now.
        assert_eq!(t.commit("a"), Err(TxError::Unknown("a".into())));
        assert_eq!(t.abort("b"), Err(TxError::Unknown("b".into())));
    }

    #[test]
    fn unknown_and_duplicate_ids_are_errors() {
        let mut t = small();
        assert_eq!(t.hold("x", "x1", 1), Err(TxError::Unknown("x".into())));
        assert_eq!(t.commit("x"), Err(TxError::Unknown("x".into())));
        t.begin("x").unwrap();
        assert_eq!(t.begin("x"), Err(TxError::Duplicate("x".into())));
        // An id can be reused once it is closed.
        t.commit("x").unwrap();
        t.begin("x").unwrap();
    }

    #[test]
    fn open_transactions_are_bounded() {
        let mut t = small();
        t.begin("1").unwrap();
        t.begin("2").unwrap();
        assert_eq!(t.begin("3"), Err(TxError::TooManyOpen(2)));
        t.abort("1").unwrap();
        t.begin("3").unwrap();
    }

    #[test]
    fn actions_per_transaction_are_bounded() {
        let mut t = small();
        t.begin("a").unwrap();
        for _ in 0..3 {
            t.hold("a", "x", 0).unwrap();
        }
        assert_eq!(
            t.hold("a", "x", 0),
            Err(TxError::TooManyActions("a".into(), 3))
        );
        assert_eq!(t.commit("a").unwrap().len(), 3);
    }

    #[test]
    fn weight_is_bounded_across_transactions_and_released_on_close() {
        let mut t = small();
        t.begin("a").unwrap();
        t.begin("b").unwrap();
        t.hold("a", "x", 60).unwrap();
        assert_eq!(t.hold("b", "y", 41), Err(TxError::TooHeavy(100)));
        t.hold("b", "y", 40).unwrap();
        t.abort("a").unwrap();
        t.hold("b", "z", 60).unwrap();
        assert_eq!(t.commit("b").unwrap(), vec!["y", "z"]);
        t.begin("c").unwrap();
        t.hold("c", "w", 100).unwrap();
    }

    #[test]
    fn long_ids_are_cut_in_messages() {
        let mut t = small();
        let id = "t".repeat(5000);
        let e = t.commit(&id).unwrap_err().to_string();
        assert!(e.len() < 120, "{e}");
    }
}
