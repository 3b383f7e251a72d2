//! Whether a row is pushed to a user at all, decided by the sender: a seam for what can only
//! be known at send time. Per-user preferences (issue 25: a type muted for `push`, quiet
//! hours) are not decided here but at commit, in `PreparedPublish::outbox_rows`: a muted or
//! held recipient's notification gets no Web Push row at all, so nothing is queued for it.

use crate::store::OutboxKind;

/// `true`: send. `false`: the row is done without a push (counted as neither sent nor
/// failed). Called once per row and subscription, just before it is encrypted.
pub fn wants_push(_user: &str, _kind: OutboxKind, _payload: &str) -> bool {
    true
}
