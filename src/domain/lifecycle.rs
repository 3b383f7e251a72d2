//! How long a notification lives and what it replaces: `expires_at` / `ttl_seconds` and
//! `collapse_key` (issue 26). Dependency-free parsing, so every face refuses the same input.

use chrono::{DateTime, Duration, Utc};

/// The furthest ahead a notification may expire: a year and a day covers "this offer ends
/// next year" while keeping the clean-up's index of due rows from holding decades of them.
pub const MAX_LIFETIME_DAYS: i64 = 366;

/// The longest collapse key, in characters.
pub const MAX_COLLAPSE_KEY: usize = 64;

/// A key under which a service's newer notification replaces the user's older unread one
/// ("5 new messages in #general" replaces "4 new messages"). 1 to 64 characters, no control
/// characters. Scoped to the publishing service: two services using the same word never
/// replace each other's notifications.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollapseKey(String);

impl CollapseKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.chars().count();
        if n == 0 || n > MAX_COLLAPSE_KEY {
            return Err(format!("must be 1 to {MAX_COLLAPSE_KEY} characters"));
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When a notification stops existing, from `expires_at` (an RFC 3339 time) or `ttl_seconds`
/// (whole seconds from `now`). It must be in the future and at most [`MAX_LIFETIME_DAYS`]
/// ahead. Returns the field to blame with the message.
pub fn parse_expiry(
    expires_at: Option<&str>,
    ttl_seconds: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, (&'static str, String)> {
    let max = Duration::days(MAX_LIFETIME_DAYS);
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err((
            "ttl_seconds",
            "give either `expires_at` or `ttl_seconds`, not both".to_owned(),
        )),
        (None, None) => Ok(None),
        (None, Some(ttl)) => {
            if ttl < 1 || ttl > max.num_seconds() {
                return Err((
                    "ttl_seconds",
                    format!(
                        "must be a whole number of seconds from 1 to {}",
                        max.num_seconds()
                    ),
                ));
            }
            Ok(Some(now + Duration::seconds(ttl)))
        }
        (Some(s), None) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| ("expires_at", "must be an RFC 3339 time".to_owned()))?
                .with_timezone(&Utc);
            // Both databases keep microseconds: the time read back is the time given.
            let t = DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t);
            if t <= now {
                return Err(("expires_at", "must be in the future".to_owned()));
            }
            if t - now > max {
                return Err((
                    "expires_at",
                    format!("must be at most {MAX_LIFETIME_DAYS} days ahead"),
                ));
            }
            Ok(Some(t))
        }
    }
}

/// Whole seconds left until `expires_at` (0 once it has passed): the `TTL` a push service or
/// broker is given, so it drops the message when the inbox does.
pub fn remaining_seconds(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let ms = (expires_at - now).num_milliseconds().max(0);
    // Rounded down: a push service must never keep it longer than the inbox does.
    u64::try_from(ms / 1000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_key_bounds() {
        assert!(CollapseKey::parse("").is_err());
        assert!(CollapseKey::parse(&"k".repeat(64)).is_ok());
        assert!(CollapseKey::parse(&"k".repeat(65)).is_err());
        // Characters, not bytes.
        assert!(CollapseKey::parse(&"é".repeat(64)).is_ok());
        assert!(CollapseKey::parse("a\nb").is_err());
    }

    #[test]
    fn expiry_rules() {
        let now = DateTime::parse_from_rfc3339("2026-12-08T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_expiry(None, None, now), Ok(None));
        assert_eq!(
            parse_expiry(None, Some(2), now),
            Ok(Some(now + Duration::seconds(2)))
        );
        assert_eq!(
            parse_expiry(None, Some(0), now).unwrap_err().0,
            "ttl_seconds"
        );
        assert_eq!(
            parse_expiry(None, Some(367 * 86400), now).unwrap_err().0,
            "ttl_seconds"
        );
        assert_eq!(
            parse_expiry(Some("2026-12-08T11:00:00+01:00"), None, now).unwrap_err(),
            ("expires_at", "must be in the future".to_owned())
        );
        assert_eq!(
            parse_expiry(Some("tomorrow"), None, now).unwrap_err().0,
            "expires_at"
        );
        assert_eq!(
            parse_expiry(Some("2028-12-08T10:00:00Z"), None, now)
                .unwrap_err()
                .0,
            "expires_at"
        );
        assert_eq!(
            parse_expiry(Some("2026-12-08T10:00:01Z"), Some(1), now)
                .unwrap_err()
                .0,
            "ttl_seconds"
        );
        assert!(parse_expiry(Some("2026-12-09T10:00:00Z"), None, now)
            .unwrap()
            .is_some());
    }

    #[test]
    fn remaining_rounds_down() {
        let now = Utc::now();
        assert_eq!(
            remaining_seconds(now + Duration::milliseconds(2999), now),
            2
        );
        assert_eq!(remaining_seconds(now - Duration::seconds(5), now), 0);
    }
}
