//! A publish that passed validation, and the per-field report of one that did not.

use super::{
    Body, CollapseKey, Link, NotificationData, NotificationType, Title, TopicName, UserId,
};
use serde::Serialize;

/// One problem with one field of the input, as reported in a problem's `errors` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated publish: every field has passed its rule, recipients are distinct.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Distinct, in the order the sender first named them. Empty for a topic publish until
    /// the notifier fills it with one batch of the topic's subscribers at a time.
    pub recipients: Vec<UserId>,
    /// A publish to a topic's subscribers instead of named recipients.
    pub topic: Option<TopicName>,
    pub kind: NotificationType,
    pub title: Title,
    pub body: Option<Body>,
    pub data: Option<NotificationData>,
    pub link: Option<Link>,
    /// Passes every mute and quiet hours of the recipients' preferences (security, billing).
    /// Only services publish, so only a service token can set it.
    pub critical: bool,
    /// When it leaves every recipient's inbox, unread count and replay (issue 26).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Replaces the recipient's unread notification from the same service with this key.
    pub collapse_key: Option<CollapseKey>,
}

impl NewNotification {
    /// Whether its commit does more than the plain publish: expiry rows, or a replacement.
    pub fn has_lifecycle(&self) -> bool {
        self.expires_at.is_some() || self.collapse_key.is_some()
    }
}
