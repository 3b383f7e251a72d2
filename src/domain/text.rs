//! The validated fields of a notification.

use serde::Serialize;
use serde_json::{Map, Value};

/// `type`: 1 to 64 characters of `a-z 0-9 . _ -`, such as `order.shipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NotificationType(String);

impl NotificationType {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(format!("contains {c:?}; only a-z 0-9 . _ - are allowed"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Counts characters the way the contract means them: Unicode scalar values, not bytes.
fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// What every free-text field says about U+0000.
const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// Refuses U+0000. Postgres `text` and `jsonb` cannot store it (`invalid byte sequence for
/// encoding "UTF8": 0x00`) while SQLite can, so without this rule the same publish would be
/// stored on one backend and a 500 on the other. No notification needs a NUL.
fn refuse_nul(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(NUL_MESSAGE.into());
    }
    Ok(())
}

/// `title`: 1 to 200 characters without NUL, and not only white space (a blank title
/// renders as an empty row in every inbox, which is never what the sender meant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("must not be empty or blank".into());
        }
        if char_len(s) > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        refuse_nul(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `body`: at most 4000 characters, without NUL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Body(String);

impl Body {
    pub const MAX_CHARS: usize = 4000;

    pub fn parse(s: &str) -> Result<Self, String> {
        if char_len(s) > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        refuse_nul(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `data`: a JSON object of at most 16 KiB once serialized, nested at most
/// [`NotificationData::MAX_DEPTH`] deep, with no NUL in any key or string at any depth
/// (Postgres `jsonb` refuses `\u0000` wherever it appears).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct NotificationData(Map<String, Value>);

impl NotificationData {
    pub const MAX_BYTES: usize = 16 * 1024;
    /// Objects and arrays nested in `data`, itself counting as one. Every face must carry
    /// what ingest accepts: protobuf decoders (prost, grpcio, protobuf-js) stop at 100
    /// nested messages, and a `google.protobuf.Struct` spends up to three per JSON object
    /// (the Struct, its map entry, the Value: C++ and upb count all three, prost two) beside
    /// the two around it (the response and the Notification): 2 + 3 × 32 = 98 fits.
    pub const MAX_DEPTH: usize = 32;

    pub fn parse(v: &Value) -> Result<Self, String> {
        let Value::Object(map) = v else {
            return Err("must be a JSON object".into());
        };
        let depth = json_depth(v);
        if depth > Self::MAX_DEPTH {
            return Err(format!(
                "nests {depth} levels of objects and arrays; at most {} are allowed",
                Self::MAX_DEPTH
            ));
        }
        let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
        if size > Self::MAX_BYTES {
            return Err(format!(
                "is {size} bytes serialized; at most {} are allowed",
                Self::MAX_BYTES
            ));
        }
        if let Some(path) = nul_path(v, &mut String::new()) {
            return Err(format!("{NUL_MESSAGE}, found at {path}"));
        }
        Ok(Self(map.clone()))
    }

    /// Data read back as stored, without the checks: a row written before a rule existed
    /// (a deeper `data` than [`Self::MAX_DEPTH`]) must still load and be delivered. Tests
    /// recreate such rows with it.
    pub fn from_stored(map: Map<String, Value>) -> Self {
        Self(map)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// How many objects and arrays `v` nests: 0 for a scalar, 1 for `{"a": 1}`. Recursive:
/// what reaches it was parsed by serde_json (128 levels at most) or prost (100 messages).
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Where the first NUL in `v` is, as a JSON Pointer (RFC 6901) below `data`, so the sender
/// can find it in a deep object. `path` is the pointer of `v` itself. The recursion is
/// bounded: serde_json refuses JSON nested more than 128 levels deep.
fn nul_path(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("/{i}"));
            let hit = nul_path(item, path);
            path.truncate(len);
            hit
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = path.len();
            // The pointer of a key that holds a NUL shows it escaped, never the raw byte:
            // this text goes into a JSON response and into logs.
            let escaped = key
                .replace('~', "~0")
                .replace('/', "~1")
                .replace('\0', "\\u0000");
            path.push('/');
            path.push_str(&escaped);
            let hit = if key.contains('\0') {
                Some(path.clone())
            } else {
                nul_path(item, path)
            };
            path.truncate(len);
            hit
        }),
        _ => None,
    }
}

/// `link`: an absolute `http` or `https` URL of at most 2048 characters, without NUL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Link(String);

impl Link {
    pub const MAX_CHARS: usize = 2048;

    pub fn parse(s: &str) -> Result<Self, String> {
        if char_len(s) > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        // Before the URL parser, which would quietly percent-encode it: the sender's spelling
        // is what is stored.
        refuse_nul(s)?;
        let url = url::Url::parse(s).map_err(|e| format!("must be an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("must use http or https, not {:?}", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".into());
        }
        // Keep the sender's spelling: the URL is shown to people and compared by them.
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters (so never a NUL, and
/// with a 128-character service name well inside Postgres's B-tree row limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err("must be visible ASCII characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_alphabet_and_length() {
        assert!(NotificationType::parse("order.shipped_v2-x").is_ok());
        assert!(NotificationType::parse("").is_err());
        assert!(NotificationType::parse("Order").is_err());
        assert!(NotificationType::parse("a b").is_err());
        assert!(NotificationType::parse(&"a".repeat(64)).is_ok());
        assert!(NotificationType::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn title_counts_characters_not_bytes() {
        assert!(Title::parse(&"é".repeat(200)).is_ok());
        assert!(Title::parse(&"é".repeat(201)).is_err());
        assert!(Title::parse("").is_err());
        assert!(Title::parse("   ").is_err());
    }

    #[test]
    fn body_limit() {
        assert!(Body::parse("").is_ok());
        assert!(Body::parse(&"x".repeat(4000)).is_ok());
        assert!(Body::parse(&"x".repeat(4001)).is_err());
    }

    #[test]
    fn data_must_be_a_small_object() {
        assert!(NotificationData::parse(&json!({"order_id": 1234})).is_ok());
        let mut deep = json!(1);
        // Arrays count too; the outermost is an object.
        for i in 0..NotificationData::MAX_DEPTH - 1 {
            deep = if i % 2 == 0 {
                json!({ "a": deep })
            } else {
                json!([deep])
            };
        }
        let deep = json!({ "a": deep });
        assert_eq!(json_depth(&deep), NotificationData::MAX_DEPTH);
        assert!(NotificationData::parse(&deep).is_ok());
        let deeper = json!({ "a": deep });
        let err = NotificationData::parse(&deeper).expect_err("too deep");
        assert!(err.contains("33 levels"), "{err}");
        assert!(NotificationData::parse(&json!([1, 2])).is_err());
        assert!(NotificationData::parse(&json!("x")).is_err());
        let big = json!({ "k": "x".repeat(16 * 1024) });
        assert!(NotificationData::parse(&big).is_err());
    }

    #[test]
    fn link_must_be_absolute_http() {
        assert!(Link::parse("https://shop.example/orders/1234").is_ok());
        assert!(Link::parse("http://localhost:8080/x").is_ok());
        assert!(Link::parse("/orders/1234").is_err());
        assert!(Link::parse("javascript:alert(1)").is_err());
        assert!(Link::parse("ftp://example.com/x").is_err());
        let long = format!("https://e.example/{}", "a".repeat(2048));
        assert!(Link::parse(&long).is_err());
    }

    #[test]
    fn nul_is_refused_in_every_free_text_field() {
        assert!(Title::parse("a\0b").is_err());
        assert!(Body::parse("a\0b").is_err());
        assert!(Link::parse("https://e.example/a\0b").is_err());
        assert!(IdempotencyKey::parse("a\0b").is_err());
    }

    #[test]
    fn nul_in_data_is_found_at_any_depth_and_named_by_pointer() {
        let err = |v: Value| NotificationData::parse(&v).unwrap_err();
        assert!(err(json!({"k": "a\u{0}b"})).ends_with("at /k"));
        assert!(err(json!({"a\u{0}b": 1})).ends_with("at /a\\u0000b"));
        assert!(err(json!({"x": {"y": [1, {"z/w": "\u{0}"}]}})).ends_with("at /x/y/1/z~1w"));
        assert!(err(json!({"x": ["ok", ["\u{0}"]]})).ends_with("at /x/1/0"));
        assert!(
            NotificationData::parse(&json!({"x": {"y": ["ok", "\\u0000 spelled out"]}})).is_ok()
        );
    }

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse("abc-123").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
    }
}
