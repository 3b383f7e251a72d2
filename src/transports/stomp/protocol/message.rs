//! From hub frames to MESSAGE frames: which events a subscription gets out of one hub
//! frame (a topic only the notifications published to it), and how each event is framed
//! (headers, ack id, JSON body).

use super::destination::Destination;
use crate::domain::{Seq, TopicName};
use crate::hub::{Frame as HubFrame, Update as HubUpdate};
use crate::transports::stomp::ack::AckMode;
use crate::transports::stomp::frame::{Command, Frame};
use std::sync::Arc;

/// Whether a notification's JSON says it was published to `topic`. Parses only the
/// `topic` field's value; anything unparsable is not on the topic.
pub fn is_on_topic(json: &str, topic: &TopicName) -> bool {
    #[derive(serde::Deserialize)]
    struct TopicOnly<'a> {
        #[serde(borrow, default)]
        topic: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<TopicOnly>(json)
        .ok()
        .and_then(|t| t.topic)
        .is_some_and(|t| t == topic.as_str())
}

/// One thing a subscription delivers, kept for a NACK's redelivery.
#[derive(Debug, Clone)]
pub enum Event {
    Notification {
        seq: Seq,
        json: Arc<str>,
    },
    Unread {
        unread: i64,
        seq: Seq,
    },
    Resync {
        seq: Seq,
    },
    /// Retention pruned the feed's seqs up to `floor` before the client saw them.
    Truncated {
        floor: Seq,
    },
    /// The subscription's cursor was above the user's latest seq, `seq`; it goes on from it.
    Ahead {
        seq: Seq,
    },
    /// Notifications archived, unarchived or deleted: the shared `changed` JSON.
    Changed {
        json: Arc<str>,
    },
    /// The user's preferences changed: `{"version":N,"preferences":{...}}`, shared.
    Preferences {
        json: Arc<str>,
    },
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Notification { .. } => "notification",
            Event::Unread { .. } => "unread",
            Event::Resync { .. } => "resync",
            Event::Truncated { .. } => "truncated",
            Event::Ahead { .. } => "ahead",
            Event::Changed { .. } => "changed",
            Event::Preferences { .. } => "preferences",
        }
    }
}

/// Turns one hub frame into the events of a subscription: the feed gets every
/// notification and the unread count; a topic gets its own notifications only (the
/// count is the whole inbox's, which the feed carries). Both get `resync`.
pub fn events(destination: &Destination, frame: HubFrame) -> Vec<Event> {
    match frame {
        HubFrame::Update(u) => {
            let HubUpdate {
                notifications,
                counts,
                ..
            } = *u;
            let mut out = Vec::with_capacity(notifications.len() + 1);
            for (seq, json) in notifications {
                let keep = match destination {
                    Destination::Feed => true,
                    Destination::Topic(t) => is_on_topic(&json, t),
                };
                if keep {
                    out.push(Event::Notification { seq, json });
                }
            }
            if *destination == Destination::Feed {
                out.push(Event::Unread {
                    unread: counts.unread,
                    seq: counts.seq,
                });
            }
            out
        }
        // The feed only, like the count: a topic subscription is told of new notifications.
        HubFrame::Changed(c) if *destination == Destination::Feed => vec![
            Event::Changed {
                json: c.json.clone(),
            },
            Event::Unread {
                unread: c.counts.unread,
                seq: c.counts.seq,
            },
        ],
        HubFrame::Changed(_) => Vec::new(),
        // The feed only, like the count: it is about the user, not about a topic.
        HubFrame::Preferences(json) if *destination == Destination::Feed => {
            vec![Event::Preferences { json }]
        }
        HubFrame::Preferences(_) => Vec::new(),
        HubFrame::Resync { seq } => vec![Event::Resync { seq }],
        // A topic is a filter over the feed, whose history it shares: it lost the same.
        HubFrame::Truncated { floor } => vec![Event::Truncated { floor }],
        HubFrame::Ahead { seq } => vec![Event::Ahead { seq }],
        // The hub retries the read; the subscription carries on when it succeeds.
        HubFrame::Shutdown | HubFrame::Unavailable => Vec::new(),
    }
}

/// A MESSAGE frame for `event` on a subscription.
pub fn message_frame(
    subscription: &str,
    destination: &str,
    mode: AckMode,
    message_id: u64,
    event: &Event,
    redelivered: bool,
) -> Frame {
    let id = message_id.to_string();
    let mut f = Frame::new(Command::Message)
        .with_header("subscription", subscription)
        .with_header("message-id", id.clone())
        .with_header("destination", destination)
        .with_header("content-type", "application/json")
        .with_header("x-tidings-event", event.name());
    if mode.needs_ack() {
        // The ack id is the message id: unique per session, so one number finds the
        // message whatever the protocol version (1.2 ACKs by `id`, 1.0/1.1 by `message-id`).
        f.push_header("ack", id);
    }
    if redelivered {
        f.push_header("redelivered", "true");
    }
    let body = match event {
        Event::Notification { seq, json } => {
            f.push_header("x-tidings-seq", seq.to_string());
            json.as_bytes().to_vec()
        }
        Event::Unread { unread, seq } => {
            format!("{{\"unread\":{unread},\"seq\":{seq}}}").into_bytes()
        }
        Event::Resync { seq } => format!("{{\"seq\":{seq}}}").into_bytes(),
        Event::Truncated { floor } => format!("{{\"floor\":{floor}}}").into_bytes(),
        Event::Ahead { seq } => {
            f.push_header("x-tidings-seq", seq.to_string());
            format!("{{\"seq\":{seq}}}").into_bytes()
        }
        Event::Changed { json } | Event::Preferences { json } => json.as_bytes().to_vec(),
    };
    f.with_body(body).with_content_length()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transports::stomp::protocol::destination::FEED;

    #[test]
    fn topic_filter_reads_only_the_topic_field() {
        let t = TopicName::parse("deploys").unwrap();
        assert!(is_on_topic(
            r#"{"seq":1,"topic":"deploys","title":"x"}"#,
            &t
        ));
        assert!(!is_on_topic(r#"{"seq":1,"topic":"other"}"#, &t));
        assert!(!is_on_topic(r#"{"seq":1,"title":"deploys"}"#, &t));
        assert!(!is_on_topic(r#"{"seq":1,"topic":null}"#, &t));
        assert!(!is_on_topic("not json", &t));
        assert!(is_on_topic(r#"{"topic":"dep\u006coys"}"#, &t));
    }

    fn update(notifications: &[(i64, &str)], unread: i64, seq: i64) -> HubFrame {
        let seq = Seq::new(seq);
        HubFrame::update(
            notifications
                .iter()
                .map(|(s, j)| (Seq::new(*s), Arc::from(*j)))
                .collect(),
            crate::domain::Counts {
                unread,
                seq,
                version: 1,
            },
            seq,
        )
    }

    #[test]
    fn the_feed_gets_everything_and_a_topic_only_its_own() {
        let frame = update(
            &[(1, r#"{"seq":1}"#), (2, r#"{"seq":2,"topic":"t"}"#)],
            2,
            2,
        );
        let feed: Vec<&str> = events(&Destination::Feed, frame.clone())
            .iter()
            .map(Event::name)
            .collect();
        assert_eq!(feed, ["notification", "notification", "unread"]);
        let topic = events(&Destination::Topic(TopicName::parse("t").unwrap()), frame);
        assert!(matches!(
            topic.as_slice(),
            [Event::Notification { seq, .. }] if *seq == Seq::new(2)
        ));
        let prefs = HubFrame::Preferences(Arc::from(r#"{"version":2,"preferences":{}}"#));
        let feed = events(&Destination::Feed, prefs.clone());
        assert!(matches!(
            feed.as_slice(),
            [Event::Preferences { json }] if json.contains(r#""version":2"#)
        ));
        assert_eq!(feed[0].name(), "preferences");
        let topic = TopicName::parse("t").unwrap();
        assert!(events(&Destination::Topic(topic), prefs).is_empty());
        let resync = events(&Destination::Feed, HubFrame::Resync { seq: Seq::new(9) });
        assert!(matches!(resync.as_slice(), [Event::Resync { seq }] if *seq == Seq::new(9)));
    }

    #[test]
    fn message_frames_carry_the_spec_headers() {
        let ev = Event::Notification {
            seq: Seq::new(7),
            json: Arc::from(r#"{"seq":7}"#),
        };
        let f = message_frame("sub-0", FEED, AckMode::Client, 12, &ev, false);
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.header("subscription"), Some("sub-0"));
        assert_eq!(f.header("message-id"), Some("12"));
        assert_eq!(f.header("ack"), Some("12"));
        assert_eq!(f.header("destination"), Some(FEED));
        assert_eq!(f.header("content-type"), Some("application/json"));
        assert_eq!(f.header("content-length"), Some("9"));
        assert_eq!(f.header("x-tidings-event"), Some("notification"));
        assert_eq!(f.header("x-tidings-seq"), Some("7"));
        assert_eq!(f.header("redelivered"), None);
        assert_eq!(f.body, br#"{"seq":7}"#);

        let f = message_frame(
            "s",
            FEED,
            AckMode::Auto,
            1,
            &Event::Unread {
                unread: 3,
                seq: Seq::new(9),
            },
            true,
        );
        assert_eq!(f.header("ack"), None);
        assert_eq!(f.header("redelivered"), Some("true"));
        assert_eq!(f.header("x-tidings-event"), Some("unread"));
        assert_eq!(f.body, br#"{"unread":3,"seq":9}"#);
        let f = message_frame(
            "s",
            FEED,
            AckMode::Auto,
            1,
            &Event::Resync { seq: Seq::new(4) },
            false,
        );
        assert_eq!(f.header("x-tidings-event"), Some("resync"));
        assert_eq!(f.body, br#"{"seq":4}"#);
    }
}
