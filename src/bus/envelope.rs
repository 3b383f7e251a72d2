//! What travels on a bus channel, and how a replica reads what another version wrote.
//!
//! During a rolling upgrade, replicas of two releases share one Redis: each must read the
//! other's events, or at least know what to do with one it cannot read. So an envelope has a
//! *header*, the same in every version from 2 on, and the event itself:
//!
//! ```json
//! {"v":2,"origin":"<replica>","user":"alice","fallback":"catch_up","event":{"kind":"notification",…}}
//! ```
//!
//! * `v`: the envelope's version, [`VERSION`]. Release 0.1.0 wrote no `v` (its envelope was
//!   `{"origin","event"}`): that is version 1, still read. A change to an existing event's
//!   shape that older readers would misread takes a new version; adding an event kind or an
//!   optional field does not (readers skip kinds they do not know and ignore unknown fields).
//! * `user`: whose inbox the event is about, readable whatever the event's kind or version
//!   (a user's channel names the user too, but the shared channel does not).
//! * `fallback`: what a replica that cannot read the event does instead: `catch_up` re-reads
//!   the user's inbox from the database (every user's when the envelope names none), so the
//!   user is never left wrong; `skip` ignores it (an event that changes nothing an older
//!   release shows, such as one about a feature it does not have).
//!
//! An event that is skipped is counted (`tidings_bus_events_skipped_total{reason}`) and never
//! stops the subscriber. Release 0.1.0 reads this envelope as its own (it ignores the header's
//! extra fields), and logs and ignores an event kind it does not know.

use crate::domain::{Event, UserId};
use serde::{Deserialize, Serialize};

/// The envelope version this release writes. Readers accept every version up to it.
pub const VERSION: u32 = 2;

/// What a replica that cannot read an event does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Re-read the user's inbox (every user's, when the envelope names none).
    CatchUp,
    /// Ignore it: it changes nothing an older release shows.
    Skip,
}

/// The fallback of an event this release writes. Every kind so far changes what a user
/// sees, so all of them ask for a catch-up; a kind about a feature that older releases do
/// not have (they show nothing of it) may say [`Fallback::Skip`].
pub fn fallback_of(event: &Event) -> Fallback {
    match event {
        Event::Notification { .. }
        | Event::Counts { .. }
        | Event::Changed { .. }
        | Event::CatchUp => Fallback::CatchUp,
        // 0.1.0 has no preferences: it shows nothing an older replica could get wrong.
        Event::Preferences { .. } => Fallback::Skip,
    }
}

/// An envelope as written, from borrowed parts: the event the local hub also holds is
/// serialized in place rather than copied.
#[derive(Serialize)]
struct Out<'a> {
    v: u32,
    origin: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a UserId>,
    fallback: Fallback,
    event: &'a Event,
}

/// Encodes `event` from replica `origin` in the current version.
pub fn encode(origin: &str, event: &Event) -> serde_json::Result<String> {
    serde_json::to_string(&Out {
        v: VERSION,
        origin,
        user: event.user(),
        fallback: fallback_of(event),
        event,
    })
}

/// An envelope of any version from 1 on, read in one pass: the common case (a version and
/// kind this release knows) costs no more than before versions existed.
#[derive(Deserialize)]
struct In {
    #[serde(default)]
    v: Option<u32>,
    origin: String,
    event: Event,
}

/// The header alone, for an envelope whose event could not be read.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    v: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    fallback: Option<Fallback>,
}

/// Why an event was not delivered as such: the `reason` label of the skipped counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A newer envelope version than this release reads.
    Version,
    /// A version it reads, but an event kind (or shape) it does not know.
    Kind,
    /// Not an envelope at all.
    Malformed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Version => "version",
            SkipReason::Kind => "kind",
            SkipReason::Malformed => "malformed",
        }
    }
}

/// Whose inbox to re-read instead of an event that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing: the sender said the event changes nothing this release shows.
    Nobody,
    User(UserId),
    /// The envelope named no user (a broadcast, or one unreadable on the shared channel).
    Everyone,
}

/// A received message, read.
#[derive(Debug)]
pub enum Received {
    Event {
        origin: String,
        event: Event,
    },
    Skipped {
        reason: SkipReason,
        catch_up: CatchUp,
    },
}

/// Reads a message that arrived on a channel; `channel_user` is the user the channel
/// belongs to, if it is a user's channel (known even when the payload is unreadable).
pub fn decode(payload: &[u8], channel_user: Option<UserId>) -> Received {
    if let Ok(env) = serde_json::from_slice::<In>(payload) {
        if env.v.unwrap_or(1) <= VERSION {
            return Received::Event {
                origin: env.origin,
                event: env.event,
            };
        }
    }
    let Ok(header) = serde_json::from_slice::<Header>(payload) else {
        return Received::Skipped {
            reason: SkipReason::Malformed,
            catch_up: channel_user.map_or(CatchUp::Everyone, CatchUp::User),
        };
    };
    let reason = if header.v.unwrap_or(1) > VERSION {
        SkipReason::Version
    } else {
        SkipReason::Kind
    };
    let catch_up = match header.fallback {
        Some(Fallback::Skip) => CatchUp::Nobody,
        // Version 1 had no fallback: assume the event mattered.
        Some(Fallback::CatchUp) | None => {
            match header
                .user
                .and_then(|u| UserId::parse(&u).ok())
                .or(channel_user)
            {
                Some(user) => CatchUp::User(user),
                None => CatchUp::Everyone,
            }
        }
    };
    Received::Skipped { reason, catch_up }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Counts;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn counts_event() -> Event {
        Event::Counts {
            user: alice(),
            counts: Counts::default(),
        }
    }

    #[test]
    fn the_current_version_round_trips_with_its_header() {
        let json = encode("r1", &counts_event()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["v"], VERSION);
        assert_eq!(v["user"], "alice");
        assert_eq!(v["fallback"], "catch_up");
        match decode(json.as_bytes(), None) {
            Received::Event { origin, event } => {
                assert_eq!(origin, "r1");
                assert_eq!(event, counts_event());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn release_0_1_0s_envelope_is_read() {
        // Exactly what 0.1.0 wrote: no version, no header, the event under `event`.
        let event = serde_json::to_string(&counts_event()).unwrap();
        let old = format!(r#"{{"origin":"old","event":{event}}}"#);
        match decode(old.as_bytes(), Some(alice())) {
            Received::Event { origin, event } => {
                assert_eq!(origin, "old");
                assert_eq!(event, counts_event());
            }
            other => panic!("{other:?}"),
        }
    }

    /// What release 0.1.0 decodes (its `Received`): this release's envelope must still be
    /// one, or 0.1.0 replicas would drop every event of a newer one during an upgrade.
    #[test]
    fn release_0_1_0_reads_this_envelope() {
        #[derive(Deserialize)]
        struct OldReceived {
            origin: String,
            event: Event,
        }
        let json = encode("new", &counts_event()).unwrap();
        let old: OldReceived = serde_json::from_str(&json).unwrap();
        assert_eq!(old.origin, "new");
        assert_eq!(old.event, counts_event());
    }

    #[test]
    fn an_unknown_kind_is_skipped_and_catches_its_user_up() {
        let msg = br#"{"v":2,"origin":"new","user":"bob","fallback":"catch_up","event":{"kind":"from_the_future","user":"bob"}}"#;
        match decode(msg, None) {
            Received::Skipped { reason, catch_up } => {
                assert_eq!(reason, SkipReason::Kind);
                assert_eq!(catch_up, CatchUp::User(UserId::parse("bob").unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_newer_version_is_skipped_even_when_its_event_looks_known() {
        let event = serde_json::to_string(&counts_event()).unwrap();
        let msg = format!(
            r#"{{"v":{},"origin":"newer","user":"alice","fallback":"catch_up","event":{event},"extra":[1]}}"#,
            VERSION + 1
        );
        match decode(msg.as_bytes(), None) {
            Received::Skipped { reason, catch_up } => {
                assert_eq!(reason, SkipReason::Version);
                assert_eq!(catch_up, CatchUp::User(alice()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_skip_fallback_catches_nobody_up() {
        let msg = br#"{"v":9,"origin":"n","user":"alice","fallback":"skip","event":{"kind":"preferences"}}"#;
        match decode(msg, Some(alice())) {
            Received::Skipped { catch_up, .. } => assert_eq!(catch_up, CatchUp::Nobody),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_user_in_the_header_the_channel_names_it_or_everyone_catches_up() {
        let msg = br#"{"origin":"n","event":{"kind":"new_broadcast"}}"#;
        match decode(msg, Some(alice())) {
            Received::Skipped { catch_up, .. } => assert_eq!(catch_up, CatchUp::User(alice())),
            other => panic!("{other:?}"),
        }
        match decode(msg, None) {
            Received::Skipped { catch_up, .. } => assert_eq!(catch_up, CatchUp::Everyone),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_malformed() {
        match decode(b"\x00not json", Some(alice())) {
            Received::Skipped { reason, catch_up } => {
                assert_eq!(reason, SkipReason::Malformed);
                assert_eq!(catch_up, CatchUp::User(alice()));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Readers ignore fields they do not know, so a later release may add optional fields
    /// to an event without a new version.
    #[test]
    fn an_added_field_in_a_known_kind_is_read() {
        let msg = br#"{"v":2,"origin":"n","event":{"kind":"counts","user":"alice","counts":{"unread":0,"seq":0,"version":0},"new_field":true}}"#;
        assert!(
            matches!(decode(msg, None), Received::Event { .. }),
            "{:?}",
            decode(msg, None)
        );
    }
}
