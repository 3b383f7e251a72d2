//! The ordering rule of one live connection, with no I/O in it.
//!
//! A connection must see its user's notifications in seq order, each once, with no gap,
//! although they reach this replica from two sources that race: the database (the replay
//! on connect, or a catch-up) and the bus (live events, which from several replicas can even
//! arrive out of order). The rule:
//!
//! * A live event with the next seq is delivered; an older one is dropped as a duplicate.
//! * A live event past the next seq means some were missed: they are in the database
//!   (they committed before it), so the connection starts a catch-up read after its last
//!   delivered seq.
//! * While a read is in flight, live events are held (up to a bound) and merged in after it.
//!   Held events beyond the bound are dropped and another read follows: the database has them.

use crate::domain::Seq;
use std::collections::BTreeMap;

/// How many live events one connection holds while its catch-up read is in flight.
pub const MAX_HELD: usize = 1024;

#[derive(Debug)]
pub struct Sequencer<T> {
    /// The highest seq delivered (or skipped past by a resync or a live start).
    delivered: Seq,
    /// `Some` while a catch-up read is in flight.
    held: Option<BTreeMap<Seq, T>>,
    /// Events were dropped from `held`; read again when this read completes.
    overflowed: bool,
}

/// What to do with one live event.
#[derive(Debug, PartialEq, Eq)]
pub enum Live<T> {
    Deliver(T),
    /// Already delivered, or will come from the read in flight.
    Drop,
    /// A gap: read from the database after this seq, then call [`Sequencer::finish_read`].
    CatchUp {
        after: Seq,
    },
}

/// The result of merging a database read.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged<T> {
    /// In seq order, contiguous from the previous delivered seq.
    pub deliver: Vec<T>,
    /// `Some(after)`: another read is needed from there.
    pub again: Option<Seq>,
}

impl<T> Sequencer<T> {
    /// A connection whose first read (after `cursor`) is about to start.
    pub fn reading_from(cursor: Seq) -> Self {
        Self {
            delivered: cursor,
            held: Some(BTreeMap::new()),
            overflowed: false,
        }
    }

    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    pub fn is_reading(&self) -> bool {
        self.held.is_some()
    }

    pub fn on_live(&mut self, seq: Seq, item: T) -> Live<T> {
        if seq <= self.delivered {
            return Live::Drop;
        }
        if let Some(held) = &mut self.held {
            if held.len() < MAX_HELD {
                held.insert(seq, item);
            } else {
                self.overflowed = true;
            }
            return Live::Drop;
        }
        if seq == self.delivered.plus(1) {
            self.delivered = seq;
            return Live::Deliver(item);
        }
        let mut held = BTreeMap::new();
        held.insert(seq, item);
        self.held = Some(held);
        Live::CatchUp {
            after: self.delivered,
        }
    }

    /// Moves the cursor down to `to`, for a connection whose cursor was ahead of the user's
    /// latest seq. Live events at or below the old cursor were dropped meanwhile (they
    /// looked delivered), so the read in flight is marked to be followed by another from
    /// `to`, which finds them.
    pub fn rewind(&mut self, to: Seq) {
        if to < self.delivered {
            self.delivered = to;
            self.overflowed = true;
        }
    }

    /// Starts a catch-up read (after a bus outage, say) unless one is in flight already.
    /// Returns where to read from.
    pub fn start_read(&mut self) -> Option<Seq> {
        if self.held.is_some() {
            self.overflowed = true;
            return None;
        }
        self.held = Some(BTreeMap::new());
        Some(self.delivered)
    }

    /// Merges a completed read. `rows` are what the database holds after the read's cursor,
    /// in seq order: a seq missing between two of them was deleted (seqs commit in order per
    /// user, so a read that sees one sees every one before it that still exists). `through`
    /// says the read covered every seq up to it, returned or not: the cursor moves there
    /// after the rows. It is the counters' seq for a complete read (so deleted seqs at the
    /// end are passed too), and the jump of a resync or of a connection that starts live at
    /// the latest seq.
    pub fn finish_read(&mut self, rows: Vec<(Seq, T)>, through: Option<Seq>) -> Merged<T> {
        let mut deliver = Vec::with_capacity(rows.len());
        for (seq, item) in rows {
            if seq > self.delivered {
                self.delivered = seq;
                deliver.push(item);
            }
        }
        if let Some(to) = through {
            self.delivered = self.delivered.max(to);
        }
        let mut held = self.held.take().unwrap_or_default();
        let mut gap = false;
        while let Some((seq, item)) = held.pop_first() {
            if seq <= self.delivered {
                continue;
            }
            if seq == self.delivered.plus(1) {
                self.delivered = seq;
                deliver.push(item);
            } else {
                held.insert(seq, item);
                gap = true;
                break;
            }
        }
        let again = if gap || std::mem::take(&mut self.overflowed) {
            self.held = Some(held);
            Some(self.delivered)
        } else {
            None
        };
        Merged { deliver, again }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items are their own seq as a plain number, so the expectations read as numbers.
    fn live(s: &mut Sequencer<i64>, seq: i64) -> Live<i64> {
        s.on_live(Seq::new(seq), seq)
    }

    #[test]
    fn replay_then_live_without_gap_or_duplicate() {
        let mut s = Sequencer::reading_from(Seq::new(3));
        // Live events race the replay read.
        assert_eq!(live(&mut s, 6), Live::Drop);
        assert_eq!(live(&mut s, 7), Live::Drop);
        let m = s.finish_read(
            vec![(Seq::new(4), 4), (Seq::new(5), 5), (Seq::new(6), 6)],
            None,
        );
        assert_eq!(m.deliver, [4, 5, 6, 7]);
        assert_eq!(m.again, None);
        assert_eq!(live(&mut s, 7), Live::Drop, "duplicate");
        assert_eq!(live(&mut s, 8), Live::Deliver(8));
    }

    #[test]
    fn a_gap_in_live_events_triggers_a_read() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        s.finish_read(vec![], None);
        assert_eq!(live(&mut s, 1), Live::Deliver(1));
        // 2 was published on another replica and is late; 3 arrives first.
        assert_eq!(live(&mut s, 3), Live::CatchUp { after: Seq::new(1) });
        assert_eq!(live(&mut s, 2), Live::Drop);
        let m = s.finish_read(vec![(Seq::new(2), 2), (Seq::new(3), 3)], None);
        assert_eq!(m.deliver, [2, 3]);
        assert_eq!(live(&mut s, 2), Live::Drop);
        assert_eq!(s.delivered(), Seq::new(3));
    }

    #[test]
    fn a_live_start_skips_to_the_latest_seq() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        assert_eq!(live(&mut s, 10), Live::Drop);
        assert_eq!(live(&mut s, 11), Live::Drop);
        let m = s.finish_read(vec![], Some(Seq::new(10)));
        assert_eq!(
            m.deliver,
            [11],
            "10 committed before the start; 11 after it"
        );
    }

    #[test]
    fn a_cursor_ahead_rewinds_and_reads_again_for_what_it_dropped() {
        // The client says 10; the user's latest is 2.
        let mut s = Sequencer::reading_from(Seq::new(10));
        // 3 commits after the read's snapshot: it looks delivered to a cursor of 10.
        assert_eq!(live(&mut s, 3), Live::Drop);
        s.rewind(Seq::new(2));
        let m = s.finish_read(vec![], Some(Seq::new(2)));
        assert_eq!(m.deliver, Vec::<i64>::new());
        assert_eq!(m.again, Some(Seq::new(2)), "3 must be read again");
        let m = s.finish_read(vec![(Seq::new(3), 3)], Some(Seq::new(3)));
        assert_eq!(m.deliver, [3]);
        assert_eq!(m.again, None);
        assert_eq!(live(&mut s, 4), Live::Deliver(4));
    }

    #[test]
    fn a_resync_jumps_and_keeps_what_follows() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        assert_eq!(live(&mut s, 901), Live::Drop);
        let m = s.finish_read(vec![], Some(Seq::new(900)));
        assert_eq!(m.deliver, [901]);
        assert_eq!(m.again, None);
    }

    #[test]
    fn held_events_past_a_hole_read_again() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        assert_eq!(live(&mut s, 5), Live::Drop);
        // The read saw 1..=3 only (4 committed after the read's snapshot, 5 after that).
        let m = s.finish_read(
            vec![(Seq::new(1), 1), (Seq::new(2), 2), (Seq::new(3), 3)],
            None,
        );
        assert_eq!(m.deliver, [1, 2, 3]);
        assert_eq!(m.again, Some(Seq::new(3)));
        let m = s.finish_read(vec![(Seq::new(4), 4), (Seq::new(5), 5)], None);
        assert_eq!(m.deliver, [4, 5]);
        assert_eq!(m.again, None);
    }

    #[test]
    fn deleted_seqs_in_a_read_are_passed_over_not_waited_for() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        // 2 and 5 were deleted; the read covers up to 5, the counters' seq.
        let m = s.finish_read(
            vec![(Seq::new(1), 1), (Seq::new(3), 3), (Seq::new(4), 4)],
            Some(Seq::new(5)),
        );
        assert_eq!(m.deliver, [1, 3, 4]);
        assert_eq!(m.again, None);
        assert_eq!(s.delivered(), Seq::new(5));
        assert_eq!(live(&mut s, 6), Live::Deliver(6));
        // A live event past a deleted seq reads once, and the read passes the hole.
        assert_eq!(live(&mut s, 8), Live::CatchUp { after: Seq::new(6) });
        let m = s.finish_read(vec![(Seq::new(8), 8)], Some(Seq::new(8)));
        assert_eq!(m.deliver, [8]);
        assert_eq!(m.again, None);
        assert_eq!(live(&mut s, 9), Live::Deliver(9));
    }

    #[test]
    fn held_events_past_a_deleted_seq_need_no_second_read() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        assert_eq!(live(&mut s, 3), Live::Drop);
        // 2 was deleted before the read; 3 committed after its snapshot.
        let m = s.finish_read(vec![(Seq::new(1), 1)], Some(Seq::new(2)));
        assert_eq!(m.deliver, [1, 3]);
        assert_eq!(m.again, None);
    }

    #[test]
    fn overflowing_the_hold_reads_again() {
        let mut s = Sequencer::reading_from(Seq::new(0));
        for seq in 1..=(MAX_HELD as i64 + 10) {
            assert_eq!(live(&mut s, seq), Live::Drop);
        }
        let m = s.finish_read(vec![], None);
        assert_eq!(m.deliver.len(), MAX_HELD);
        assert_eq!(m.again, Some(Seq::new(MAX_HELD as i64)));
    }

    #[test]
    fn a_requested_read_during_a_read_runs_after_it() {
        let mut s: Sequencer<i64> = Sequencer::reading_from(Seq::new(0));
        assert_eq!(s.start_read(), None);
        let m = s.finish_read(vec![(Seq::new(1), 1)], None);
        assert_eq!(m.again, Some(Seq::new(1)));
        let m = s.finish_read(vec![], None);
        assert_eq!(m.again, None);
        assert_eq!(s.start_read(), Some(Seq::new(1)));
    }
}
