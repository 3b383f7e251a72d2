use serde::{Deserialize, Serialize};
use std::fmt;

/// A user id as it appears in a token's `sub` and in a publish's `recipients`.
///
/// 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`. The alphabet keeps ids safe to use as
/// Redis channel names, log fields and URL path segments without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl TryFrom<String> for UserId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        UserId::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if let Some(c) = s.chars().find(|c| !is_user_id_char(*c)) {
            return Err(format!(
                "contains {c:?}; only A-Z a-z 0-9 . _ : @ - are allowed"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_user_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic name: 1 to 128 characters of the user id alphabet, `A-Z a-z 0-9 . _ : @ -`,
/// so it is safe in a URL path and in a STOMP destination (`/topic/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(s: &str) -> Result<Self, String> {
        UserId::parse(s).map(|u| Self(u.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A publishing service's name: the `sub` of a service token, and half of the key its
/// `Idempotency-Key`s are stored under.
///
/// The same 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -` as a user id. The one rule serves
/// both `tidings token --service` and the verification of every service token, so a token
/// from another issuer cannot carry a name the CLI would refuse: an empty one, control
/// characters (a NUL is a 500 on Postgres), or kilobytes that overflow the B-tree index on
/// `(service, key)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub const MAX_LEN: usize = UserId::MAX_LEN;

    pub fn parse(s: &str) -> Result<Self, String> {
        UserId::parse(s).map(|u| Self(u.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        assert!(UserId::parse("Alice.Smith_01:team@example-co").is_ok());
    }

    #[test]
    fn rejects_empty_too_long_and_foreign_characters() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        for bad in ["a b", "a/b", "ä", "a\nb", "a*", "a#b", "a\0b"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be rejected");
            assert!(TopicName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn service_names_follow_the_user_id_rule() {
        assert!(ServiceName::parse("billing").is_ok());
        assert!(ServiceName::parse(&"s".repeat(128)).is_ok());
        for bad in ["", "a\0b", "a\u{1}b", "bill ing"] {
            assert!(
                ServiceName::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(ServiceName::parse(&"s".repeat(129)).is_err());
    }
}
