use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user's own cursor: 1, 2, 3, … per user, with no holes, in commit order.
pub type Seq = i64;

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
    /// The topic it was published to; absent for a publish to named recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
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
    fn serializes_with_contract_field_names() {
        let n = Notification {
            id: Uuid::nil(),
            seq: 3,
            kind: "order.shipped".into(),
            title: "t".into(),
            body: None,
            data: None,
            link: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            read_at: None,
            topic: None,
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["type"], "order.shipped");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123456Z");
        assert!(v["read_at"].is_null());
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
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
