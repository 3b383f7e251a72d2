use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user's own cursor: 1, 2, 3, … per user, with no holes, in commit order.
///
/// A newtype, not an alias of `i64`: a seq, an unread count and a counters version are all
/// integers, and swapping two of them compiles silently but loses notifications. 0 means
/// "before the first notification".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct Seq(i64);

impl Seq {
    /// Before the first notification: `after=0` replays from the oldest.
    pub const ZERO: Seq = Seq(0);

    /// Past every seq: the upper bound of "newest first" reads.
    pub const MAX: Seq = Seq(i64::MAX);

    pub const fn new(n: i64) -> Self {
        Seq(n)
    }

    /// A seq as a client sends it (a query parameter, a header): digits only, 0 or more.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.parse::<i64>() {
            Ok(n) if n >= 0 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Seq(n)),
            _ => Err("must be a seq: a whole number, 0 or more".to_owned()),
        }
    }

    /// A seq from a JSON number or an integer parameter: refuses a negative one.
    pub fn try_new(n: i64) -> Option<Self> {
        (n >= 0).then_some(Seq(n))
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    /// The seq `n` notifications later (saturating: a seq never wraps).
    pub const fn plus(self, n: i64) -> Self {
        Seq(self.0.saturating_add(n))
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a client wants to start reading from.
///
/// `After(0)` means "from the oldest retained notification"; `Live` means "only what commits
/// from now on", which a transport turns into `After(latest seq)` once it has registered for
/// live events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    After(Seq),
    Live,
}

/// A notification as its recipient sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The recipient's own cursor value for this notification.
    #[schema(value_type = i64)]
    pub seq: Seq,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "order.shipped")]
    pub kind: String,
    pub title: String,
    pub body: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    pub link: Option<String>,
    #[serde(serialize_with = "serialize_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<DateTime<Utc>>,
    /// When it was archived; `null` when it is in the inbox view. Archived notifications
    /// still appear in the `after=` replay, so a client's cursor never skips one.
    #[serde(default, serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub archived_at: Option<DateTime<Utc>>,
    /// The topic it was published to; absent for a publish to named recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// When it leaves the inbox (its publisher set `expires_at` or `ttl_seconds`); absent
    /// when it does not expire. No read returns it after this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_opt"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// One timestamp format everywhere, with microseconds: both databases keep exactly that
/// precision, so a replayed idempotent response is byte-for-byte the first one.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The current time truncated to what both databases store.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

pub fn serialize_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_is_digits_only() {
        assert_eq!(Seq::parse("0"), Ok(Seq::ZERO));
        assert_eq!(Seq::parse("42"), Ok(Seq::new(42)));
        for bad in ["", "-1", "+1", " 1", "1.0", "x", "99999999999999999999"] {
            assert!(Seq::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Seq::try_new(-1), None);
        assert_eq!(Seq::new(7).plus(2), Seq::new(9));
        assert_eq!(Seq::MAX.plus(1), Seq::MAX);
    }

    #[test]
    fn serializes_with_contract_field_names() {
        let n = Notification {
            id: Uuid::nil(),
            seq: Seq::new(3),
            kind: "order.shipped".into(),
            title: "t".into(),
            body: None,
            data: None,
            link: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            read_at: None,
            archived_at: None,
            topic: None,
            expires_at: None,
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["type"], "order.shipped");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123456Z");
        assert!(v["read_at"].is_null());
        assert!(v["archived_at"].is_null());
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "archived_at",
                "body",
                "created_at",
                "data",
                "id",
                "link",
                "read_at",
                "seq",
                "title",
                "type"
            ]
        );
    }
}
