//! The transactional outbox for the bridges: rows written in the same transaction as the
//! change they announce, read back in order by a bridge, deleted once delivered.
//!
//! One row shape, two channels, each in its own table so neither bridge ever reads (or
//! holds up) the other's rows: [`OutboxChannel::Mqtt`] (`mqtt_outbox`, one queue per user) and
//! [`OutboxChannel::WebPush`] (`webpush_outbox`, one queue per push subscription: the rows are
//! fanned out to the user's subscriptions in the same statement that writes them, and only
//! users with a subscription get rows at all).
//!
//! The store knows nothing of MQTT or Web Push: a row is a user, a kind and the JSON
//! payload, computed here at commit time so a bridge delivers exactly what committed.

use crate::domain::{Counts, Notification};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;

/// What a row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A new notification, as the REST API shows it (with its `seq`).
    Notification,
    /// The user's unread count after a change: `{"unread", "seq", "version"}`.
    Unread,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Notification => "notification",
            OutboxKind::Unread => "unread",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "notification" => Some(OutboxKind::Notification),
            "unread" => Some(OutboxKind::Unread),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub user: String,
    pub kind: OutboxKind,
    pub payload: String,
}

/// Which bridge a row is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxChannel {
    Mqtt,
    WebPush,
}

impl OutboxChannel {
    pub(crate) fn table(self) -> &'static str {
        match self {
            OutboxChannel::Mqtt => "mqtt_outbox",
            OutboxChannel::WebPush => "webpush_outbox",
        }
    }

    /// The table of this channel's quiet-hours holds (issue 25): one row per user whose
    /// deliveries on this channel wait for the end of their quiet hours.
    pub(crate) fn quiet_table(self) -> &'static str {
        match self {
            OutboxChannel::Mqtt => "mqtt_quiet",
            OutboxChannel::WebPush => "push_quiet",
        }
    }

    /// For log lines.
    pub fn name(self) -> &'static str {
        match self {
            OutboxChannel::Mqtt => "MQTT",
            OutboxChannel::WebPush => "Web Push",
        }
    }
}

/// Whether the store writes outbox rows (per channel), and whom it wakes when it did. A
/// channel is off unless its bridge is configured: without a reader its table would only
/// grow.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    mqtt: Option<Arc<Notify>>,
    webpush: Option<Arc<Notify>>,
}

impl Outbox {
    pub fn off() -> Self {
        Self::default()
    }

    /// The MQTT channel on (the bridge's outbox as it always was).
    pub fn on() -> Self {
        Self::with(true, false)
    }

    pub fn with(mqtt: bool, webpush: bool) -> Self {
        Self {
            mqtt: mqtt.then(|| Arc::new(Notify::new())),
            webpush: webpush.then(|| Arc::new(Notify::new())),
        }
    }

    /// Whether any channel is on: the writers' cue to compute rows at all.
    pub fn is_on(&self) -> bool {
        self.mqtt.is_some() || self.webpush.is_some()
    }

    pub fn has(&self, channel: OutboxChannel) -> bool {
        self.notify(channel).is_some()
    }

    /// The channels that are on, in a fixed order.
    pub fn channels(&self) -> impl Iterator<Item = OutboxChannel> + '_ {
        [OutboxChannel::Mqtt, OutboxChannel::WebPush]
            .into_iter()
            .filter(|c| self.has(*c))
    }

    fn notify(&self, channel: OutboxChannel) -> Option<&Arc<Notify>> {
        match channel {
            OutboxChannel::Mqtt => self.mqtt.as_ref(),
            OutboxChannel::WebPush => self.webpush.as_ref(),
        }
    }

    /// Called after a commit that wrote rows: a waiting bridge worker on this replica looks
    /// at once instead of at its next poll.
    pub(crate) fn poke(&self) {
        for n in [&self.mqtt, &self.webpush].into_iter().flatten() {
            n.notify_one();
        }
    }

    /// Resolves after the next [`Outbox::poke`] (or at once if one happened since the last
    /// wait); never when the channel is off.
    pub async fn written_to(&self, channel: OutboxChannel) {
        match self.notify(channel) {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    /// [`Outbox::written_to`] the MQTT channel.
    pub async fn written(&self) {
        self.written_to(OutboxChannel::Mqtt).await
    }
}

/// The rows a committed notification writes on a channel. MQTT: the notification, then
/// the unread count (its retained topic). Web Push: one row, the notification with the
/// unread count after it, because one push carries both (the badge and the banner).
pub(crate) fn rows_for(
    n: &Notification,
    counts: &Counts,
    channel: OutboxChannel,
    collapse_key: Option<&str>,
) -> Vec<(OutboxKind, String)> {
    match channel {
        OutboxChannel::Mqtt => vec![
            (
                OutboxKind::Notification,
                serde_json::to_string(n).unwrap_or_default(),
            ),
            (OutboxKind::Unread, unread_payload(counts)),
        ],
        OutboxChannel::WebPush => {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("unread".into(), json!(counts.unread));
                // The push's `Topic` (a newer push with it replaces one still undelivered).
                if let Some(k) = collapse_key {
                    o.insert("collapse_key".into(), json!(k));
                }
            }
            vec![(OutboxKind::Notification, v.to_string())]
        }
    }
}

/// The `expires_at` a notification row carries (issue 26), if any: a bridge drops a row
/// past it, and tells a push service how long the rest may wait.
pub fn expires_at_of(payload: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Expiring {
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    serde_json::from_str::<Expiring>(payload)
        .ok()
        .and_then(|e| e.expires_at)
}

/// `version` grows with every change to the counters (publish and read alike), so a
/// consumer that sees two unread messages keeps the one with the higher version.
pub(crate) fn unread_payload(counts: &Counts) -> String {
    json!({
        "unread": counts.unread,
        "seq": counts.seq,
        "version": counts.version,
    })
    .to_string()
}
