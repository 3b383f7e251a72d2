//! Whether a row is pushed to a user at all, decided by the sender: a seam for what can only
//! be known at send time. Per-user preferences (issue 25) are not decided here but at commit,
//! in `PreparedPublish::mute`: a recipient who muted a notification for `push` gets no Web
//! Push row for it; one inside their quiet hours gets none either but a hold (`push_quiet`),
//! and when the hold ends the newest unread notification is pushed with the unread count
//! then (`Store::release_quiet`, run by this bridge).

use crate::store::OutboxKind;

/// `true`: send. `false`: the row is done without a push (counted as neither sent nor
/// failed). Called once per row and subscription, just before it is encrypted.
pub fn wants_push(_user: &str, _kind: OutboxKind, _payload: &str) -> bool {
    true
}
