//! Whether a row is pushed to a user at all: the one seam for per-user preferences
//! (channels a user turned off, quiet hours). Today every user who subscribed gets every
//! push; preferences (issue 26) decide here, so the sender, the outbox and the tests of
//! delivery need not change when they do.

use crate::store::OutboxKind;

/// `true`: send. `false`: the row is done without a push (counted as neither sent nor
/// failed). Called once per row and subscription, just before it is encrypted.
pub fn wants_push(_user: &str, _kind: OutboxKind, _payload: &str) -> bool {
    true
}
