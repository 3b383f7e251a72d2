//! Domain types: values that cannot be invalid once constructed, and the types that several
//! layers share.
//!
//! Every input from the network goes through one of these `parse` constructors before the
//! store sees it, so the store and the bus never have to re-check a user id or a title.
//! Everything else in the crate may import this module; it imports nothing of the crate's.

mod event;
mod inbox;
mod lifecycle;
mod notification;
mod notification_id;
mod preferences;
mod publish;
mod push;
mod text;
mod user_id;

pub use event::Event;
pub use inbox::{ChangeKind, Counts, InboxChange, MarkRead, Page};
pub use lifecycle::{
    parse_expiry, remaining_seconds, CollapseKey, MAX_COLLAPSE_KEY, MAX_LIFETIME_DAYS,
};
pub use notification::{format_time, now_micros, serialize_time, Cursor, Notification, Seq};
pub use notification_id::{IdKey, NotificationId};
pub use preferences::{
    merge_patch, Action, Channel, Decision, Preferences, QuietHours, Rule, TypePattern,
    MAX_PATTERNS, MAX_RULES,
};
pub use publish::{FieldError, NewNotification};
pub use push::{is_public_ip, parse_subscription, NewPushSubscription, VapidKey, VapidKeyError};
pub use text::{json_depth, Body, IdempotencyKey, Link, NotificationData, NotificationType, Title};
pub use user_id::{ServiceName, TopicName, UserId};
