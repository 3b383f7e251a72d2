//! What a push carries and the headers it goes with (RFC 8030 §5).
//!
//! Push services take at most 4,096 bytes of encrypted body. The `aes128gcm` record adds a
//! 86-byte header (salt, record size, the sender's 65-byte key), a padding delimiter and a
//! 16-byte tag, so the JSON itself may have [`MAX_PLAINTEXT`] bytes. A longer body is cut,
//! with an ellipsis and `"truncated": true`, and the worker fetches the whole notification
//! over the API if it wants it.

use serde_json::{json, Map, Value};

/// The largest encrypted body a push service must accept (RFC 8291 §4).
pub const MAX_ENCRYPTED: usize = 4096;
/// 21-byte header + 65-byte key id, one delimiter byte, the 16-byte tag.
pub const MAX_PLAINTEXT: usize = MAX_ENCRYPTED - 86 - 1 - 16;

/// A push's `Urgency` (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    /// From a notification's `data.priority`, when it has one Tidings understands.
    fn from_priority(p: &str) -> Option<Self> {
        match p.to_ascii_lowercase().as_str() {
            "very-low" | "very_low" | "min" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" | "default" => Some(Urgency::Normal),
            "high" | "urgent" | "max" => Some(Urgency::High),
            _ => None,
        }
    }
}

/// One push, ready to encrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub body: Vec<u8>,
    pub urgency: Urgency,
    /// Replaces an undelivered push with the same topic at the push service: at most 32
    /// characters of the base64url alphabet.
    pub topic: String,
    /// When the notification expires (issue 26): the push's `TTL` is the time left.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The push for a notification row (the notification's JSON with `unread` in it).
pub fn notification(row: &str) -> Option<Push> {
    let n: Value = serde_json::from_str(row).ok()?;
    let id = n.get("id")?.as_str()?.to_owned();
    let urgency = n
        .get("data")
        .and_then(|d| d.get("priority"))
        .and_then(Value::as_str)
        .and_then(Urgency::from_priority)
        .unwrap_or(Urgency::Normal);
    let mut p = Map::new();
    p.insert("kind".into(), json!("notification"));
    p.insert("id".into(), json!(id));
    for key in [
        "seq",
        "title",
        "body",
        "link",
        "type",
        "created_at",
        "unread",
    ] {
        if let Some(v) = n.get(key).filter(|v| !v.is_null()) {
            p.insert(key.into(), v.clone());
        }
    }
    let topic = match n.get("collapse_key").and_then(Value::as_str) {
        Some(key) => collapse_topic(key),
        None => topic_of(&id),
    };
    let body = fit(p)?;
    Some(Push {
        body,
        urgency,
        topic,
        expires_at: crate::store::expires_at_of(row),
    })
}

/// The silent badge update for an unread row: `{"kind":"badge","unread","seq"}`. One
/// topic per user, so only the newest undelivered count is kept at the push service.
pub fn badge(row: &str) -> Option<Push> {
    let u: Value = serde_json::from_str(row).ok()?;
    let body = json!({
        "kind": "badge",
        "unread": u.get("unread")?,
        "seq": u.get("seq")?,
    });
    Some(Push {
        body: body.to_string().into_bytes(),
        urgency: Urgency::Normal,
        topic: "unread".into(),
        expires_at: None,
    })
}

/// A `collapse_key` as a Topic: any key of 1 to 64 characters maps to 32 characters of the
/// base64url alphabet (the first 24 bytes of its SHA-256), the most RFC 8030 allows.
pub fn collapse_topic(key: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..24])
}

/// The notification id without its dashes: 32 hex digits, within the Topic alphabet.
pub fn topic_of(id: &str) -> String {
    id.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect()
}

/// Serialises `p`, cutting the body (then the title) until it fits: the longest prefix
/// that fits, found by bisection, since JSON escaping makes a character cost 1 to 6 bytes.
fn fit(mut p: Map<String, Value>) -> Option<Vec<u8>> {
    let mut out = serde_json::to_vec(&p).ok()?;
    for field in ["body", "title"] {
        if out.len() <= MAX_PLAINTEXT {
            break;
        }
        let Some(text) = p.get(field).and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        p.insert("truncated".into(), json!(true));
        let with = |p: &mut Map<String, Value>, keep: usize| {
            p.insert(field.into(), json!(format!("{}…", &text[..keep])));
            serde_json::to_vec(p).ok()
        };
        // Invariant: a prefix of `lo` bytes fits (0 may not: then the next field is cut).
        let (mut lo, mut hi) = (0usize, text.len());
        while lo < hi {
            let mut mid = lo + (hi - lo).div_ceil(2);
            while !text.is_char_boundary(mid) {
                mid -= 1;
            }
            if mid <= lo {
                break;
            }
            if with(&mut p, mid)?.len() <= MAX_PLAINTEXT {
                lo = mid;
            } else {
                hi = mid - 1;
                while !text.is_char_boundary(hi) {
                    hi -= 1;
                }
            }
        }
        out = with(&mut p, lo)?;
    }
    (out.len() <= MAX_PLAINTEXT).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(body: &str) -> String {
        json!({"id": "0190a0b2-7c3e-7f00-8000-000000000001", "seq": 7, "type": "t",
               "title": "Hello", "body": body, "link": "/x", "data": {"priority": "high"},
               "unread": 3})
        .to_string()
    }

    #[test]
    fn a_collapse_key_becomes_a_topic_within_the_grammar() {
        for key in ["a", "chat:#general", &"é".repeat(64)] {
            let t = collapse_topic(key);
            assert_eq!(t.len(), 32);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        assert_eq!(collapse_topic("x"), collapse_topic("x"));
        assert_ne!(collapse_topic("x"), collapse_topic("y"));
        let row = r#"{"id":"0190a0b2-7c3e-7f00-8000-000000000001","seq":1,"title":"t","collapse_key":"k","expires_at":"2030-01-01T00:00:00Z"}"#;
        let p = notification(row).unwrap();
        assert_eq!(p.topic, collapse_topic("k"));
        assert!(p.expires_at.is_some());
    }

    #[test]
    fn a_notification_carries_what_the_worker_needs() {
        let p = notification(&row("hi")).unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["title"], "Hello");
        assert_eq!(v["body"], "hi");
        assert_eq!(v["link"], "/x");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["unread"], 3);
        assert_eq!(v["kind"], "notification");
        assert_eq!(p.urgency, Urgency::High);
        assert_eq!(p.topic, "0190a0b27c3e7f008000000000000001");
        assert!(p.topic.len() <= 32);
    }

    #[test]
    fn a_long_body_is_cut_with_an_ellipsis_to_fit() {
        for body in [
            "x".repeat(10_000),
            "é\"".repeat(5_000),
            "\u{1}".repeat(5_000),
        ] {
            let p = notification(&row(&body)).unwrap();
            assert!(p.body.len() <= MAX_PLAINTEXT, "{}", p.body.len());
            let v: Value = serde_json::from_slice(&p.body).unwrap();
            assert!(v["body"].as_str().unwrap().ends_with('…'));
            assert_eq!(v["truncated"], true);
            assert!(
                p.body.len() > MAX_PLAINTEXT - 64,
                "cut too much: {}",
                p.body.len()
            );
        }
    }

    #[test]
    fn a_badge_update_is_silent_and_replaces_older_ones() {
        let p = badge(r#"{"unread":2,"seq":9,"version":4}"#).unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v, json!({"kind": "badge", "unread": 2, "seq": 9}));
        assert_eq!(p.topic, "unread");
    }
}
