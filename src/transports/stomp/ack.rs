//! Acknowledgement bookkeeping for one subscription (STOMP 1.2, "SUBSCRIBE ack Header",
//! "ACK", "NACK").
//!
//! What an acknowledgement means here. Tidings is not a broker queue: a notification is
//! durable in the recipient's inbox from the moment it commits, and the way to resume after
//! a disconnect is the cursor (`x-tidings-after`), not redelivery of unacknowledged
//! messages. So ACK does not change the inbox (marking read is an explicit `SEND` to
//! `/app/read`); it is flow control and an honest answer to clients written for brokers:
//!
//! * `auto`: nothing is tracked.
//! * `client`: ACK or NACK of a message applies to it and to every message delivered on
//!   the same subscription before it (cumulative, as the spec says for both).
//! * `client-individual`: ACK or NACK applies to that message only.
//!
//! NACK redelivers: the message is sent again once, with a new `message-id` and a
//! `redelivered: true` header (as RabbitMQ and ActiveMQ mark it). A NACK of a
//! redelivered message drops it: the notification stays in the inbox, and a consumer
//! that keeps rejecting it would otherwise loop forever.
//!
//! Bounded memory: at most `limit` messages await acknowledgement per subscription. A
//! client that lets more pile up is not acknowledging at all, and the session ends it
//! with an ERROR rather than holding an ever-growing set.

use std::collections::BTreeMap;

/// The `ack` header of `SUBSCRIBE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    /// An absent header means `auto`. Values are case-sensitive, like every STOMP header.
    pub fn parse(header: Option<&str>) -> Result<AckMode, String> {
        match header {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(format!(
                "unknown ack mode '{}'; use auto, client or client-individual",
                truncate(other, 64)
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }

    /// Whether messages of this mode carry an `ack` header and wait for an ACK or NACK.
    pub fn needs_ack(self) -> bool {
        self != AckMode::Auto
    }
}

/// More than the limit of messages await acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyUnacked {
    pub limit: usize,
}

#[derive(Debug)]
struct Pending<T> {
    item: T,
    redelivered: bool,
}

/// The messages of one subscription that wait for an ACK or NACK, by message id.
///
/// Message ids grow with every message the session sends, so the map's order is the
/// delivery order, which is what a cumulative acknowledgement covers.
#[derive(Debug)]
pub struct Unacked<T> {
    mode: AckMode,
    limit: usize,
    pending: BTreeMap<u64, Pending<T>>,
}

impl<T> Unacked<T> {
    pub fn new(mode: AckMode, limit: usize) -> Self {
        Unacked {
            mode,
            limit,
            pending: BTreeMap::new(),
        }
    }

    pub fn mode(&self) -> AckMode {
        self.mode
    }

    /// Messages awaiting acknowledgement.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `id` awaits acknowledgement here.
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// Notes that message `id` was sent (a no-op in `auto` mode). Refused past the limit:
    /// the caller ends the session.
    pub fn record(&mut self, id: u64, item: T, redelivered: bool) -> Result<(), TooManyUnacked> {
        if !self.mode.needs_ack() {
            return Ok(());
        }
        if self.pending.len() >= self.limit {
            return Err(TooManyUnacked { limit: self.limit });
        }
        self.pending.insert(id, Pending { item, redelivered });
        Ok(())
    }

    /// Whether a new message could be recorded now.
    pub fn has_room(&self) -> bool {
        !self.mode.needs_ack() || self.pending.len() < self.limit
    }

    /// Acknowledges `id` (and, in `client` mode, everything before it). Returns how many
    /// messages that settled; 0 if `id` was not pending (already settled: a repeated ACK
    /// is harmless).
    pub fn ack(&mut self, id: u64) -> usize {
        self.settle(id).len()
    }

    /// Rejects `id` (and, in `client` mode, everything before it). Returns the messages to
    /// send again, in delivery order: those not redelivered before.
    pub fn nack(&mut self, id: u64) -> Vec<T> {
        self.settle(id)
            .into_iter()
            .filter(|p| !p.redelivered)
            .map(|p| p.item)
            .collect()
    }

    fn settle(&mut self, id: u64) -> Vec<Pending<T>> {
        if !self.pending.contains_key(&id) {
            return Vec::new();
        }
        match self.mode {
            AckMode::Auto => Vec::new(),
            AckMode::ClientIndividual => self.pending.remove(&id).into_iter().collect(),
            AckMode::Client => {
                let later = self.pending.split_off(&(id.saturating_add(1)));
                let settled = std::mem::replace(&mut self.pending, later);
                settled.into_values().collect()
            }
        }
    }
}

/// At most `max` characters of `s`, for echoing client input in an error message.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(AckMode::parse(None), Ok(AckMode::Auto));
        assert_eq!(AckMode::parse(Some("auto")), Ok(AckMode::Auto));
        assert_eq!(AckMode::parse(Some("client")), Ok(AckMode::Client));
        assert_eq!(
            AckMode::parse(Some("client-individual")),
            Ok(AckMode::ClientIndividual)
        );
        let e = AckMode::parse(Some("CLIENT")).unwrap_err();
        assert!(e.contains("'CLIENT'"), "{e}");
        let long = "x".repeat(10_000);
        assert!(AckMode::parse(Some(&long)).unwrap_err().len() < 200);
        for m in [AckMode::Auto, AckMode::Client, AckMode::ClientIndividual] {
            assert_eq!(AckMode::parse(Some(m.as_str())), Ok(m));
        }
    }

    #[test]
    fn auto_tracks_nothing() {
        let mut u = Unacked::new(AckMode::Auto, 1);
        for id in 0..10 {
            u.record(id, id, false).unwrap();
        }
        assert!(u.is_empty());
        assert!(u.has_room());
        assert_eq!(u.ack(3), 0);
        assert!(u.nack(3).is_empty());
    }

    #[test]
    fn client_mode_is_cumulative() {
        let mut u = Unacked::new(AckMode::Client, 100);
        for id in [1, 2, 5, 7, 9] {
            u.record(id, id * 10, false).unwrap();
        }
        assert_eq!(u.ack(5), 3);
        assert!(!u.is_pending(1) && !u.is_pending(2) && !u.is_pending(5));
        assert!(u.is_pending(7) && u.is_pending(9));
        // Already settled: nothing happens.
        assert_eq!(u.ack(2), 0);
        assert_eq!(u.ack(5), 0);
        // An id never sent on this subscription settles nothing, even if later ones wait.
        assert_eq!(u.ack(8), 0);
        assert_eq!(u.len(), 2);
        assert_eq!(u.ack(9), 2);
        assert!(u.is_empty());
    }

    #[test]
    fn client_individual_settles_one() {
        let mut u = Unacked::new(AckMode::ClientIndividual, 100);
        for id in 1..=4 {
            u.record(id, id, false).unwrap();
        }
        assert_eq!(u.ack(3), 1);
        assert!(u.is_pending(1) && u.is_pending(2) && u.is_pending(4));
        assert_eq!(u.nack(2), vec![2]);
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn nack_redelivers_once() {
        let mut u = Unacked::new(AckMode::ClientIndividual, 100);
        u.record(1, "a", false).unwrap();
        assert_eq!(u.nack(1), vec!["a"]);
        // The session sends it again under a new id, marked redelivered.
        u.record(2, "a", true).unwrap();
        assert!(u.nack(2).is_empty(), "a second NACK drops it");
        assert!(u.is_empty());
    }

    #[test]
    fn cumulative_nack_redelivers_in_order_and_skips_redelivered() {
        let mut u = Unacked::new(AckMode::Client, 100);
        u.record(1, "a", false).unwrap();
        u.record(2, "b", true).unwrap();
        u.record(3, "c", false).unwrap();
        u.record(4, "d", false).unwrap();
        assert_eq!(u.nack(3), vec!["a", "c"]);
        assert!(u.is_pending(4));
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn the_set_is_bounded() {
        let mut u = Unacked::new(AckMode::ClientIndividual, 3);
        for id in 1..=3 {
            u.record(id, (), false).unwrap();
        }
        assert!(!u.has_room());
        assert_eq!(u.record(4, (), false), Err(TooManyUnacked { limit: 3 }));
        assert_eq!(u.len(), 3);
        u.ack(2);
        assert!(u.has_room());
        u.record(4, (), false).unwrap();
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
        assert_eq!(truncate("", 0), "");
    }
}
