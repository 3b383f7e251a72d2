//! Domain types: values that cannot be invalid once constructed.
//!
//! Every input from the network goes through one of these `parse` constructors before the
//! store sees it, so the store and the bus never have to re-check a user id or a title.

mod notification;
mod text;
mod user_id;

pub use notification::{format_time, now_micros, serialize_time, Cursor, Notification, Seq};
pub use text::{Body, IdempotencyKey, Link, NotificationData, NotificationType, Title};
pub use user_id::{ServiceName, TopicName, UserId};
