//! Between protobuf messages and the core's types. Requests become the JSON values that
//! `ingest` validates for REST, so both faces refuse the same input with the same words.

use super::proto;
use crate::domain::{
    format_time, json_depth, ChangeKind, Counts, InboxChange, Notification, NotificationData,
};
use crate::store::Receipt;
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// Integers up to 2^53 survive a double exactly: those are written back as integers, so
/// `{"order_id": 1234}` sent over gRPC reads `1234` over REST, not `1234.0`.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// A `google.protobuf.Struct` as the JSON object it stands for.
pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= MAX_EXACT => {
            Value::Number(Number::from(*n as i64))
        }
        // NaN and infinities have no JSON form: null, as the proto3 JSON mapping has it.
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// A JSON object as a `google.protobuf.Struct`; `None` for anything else.
pub fn json_to_struct(v: &Value) -> Option<prost_types::Struct> {
    match v {
        Value::Object(map) => Some(object_to_struct(map)),
        _ => None,
    }
}

fn object_to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A publish request as the JSON body REST would have received. proto3 cannot tell an
/// empty string from an absent one: empty means absent, as the comments in the contract say.
pub fn publish_body(r: &proto::PublishRequest) -> Value {
    let mut body = Map::new();
    if !r.recipients.is_empty() {
        body.insert("recipients".into(), r.recipients.clone().into());
    }
    for (field, value) in [
        ("topic", &r.topic),
        ("type", &r.r#type),
        ("title", &r.title),
        ("body", &r.body),
        ("link", &r.link),
    ] {
        if !value.is_empty() {
            body.insert(field.into(), Value::String(value.clone()));
        }
    }
    if let Some(data) = &r.data {
        body.insert("data".into(), struct_to_json(data));
    }
    for (field, value) in [
        ("expires_at", &r.expires_at),
        ("collapse_key", &r.collapse_key),
    ] {
        if let Some(v) = value {
            body.insert(field.into(), Value::String(v.clone()));
        }
    }
    if let Some(ttl) = r.ttl_seconds {
        body.insert("ttl_seconds".into(), ttl.into());
    }
    Value::Object(body)
}

/// A mark-read request as the JSON body REST would have received.
pub fn mark_read_body(r: &proto::MarkReadRequest) -> Value {
    let mut body = Map::new();
    if !r.ids.is_empty() {
        body.insert("ids".into(), r.ids.clone().into());
    }
    if let Some(up_to) = r.up_to {
        body.insert("up_to".into(), up_to.into());
    }
    Value::Object(body)
}

pub fn receipt(r: &Receipt) -> proto::Receipt {
    proto::Receipt {
        id: r.id.map(|id| id.to_string()).unwrap_or_default(),
        recipient: r.recipient.clone(),
        seq: r.seq.map_or(0, |s| s.get()),
        created_at: format_time(&r.created_at),
    }
}

/// A stored notification's `data` at any depth: a Struct within what ingest accepts today,
/// else JSON text (`data_json`), so a row older than the depth limit never makes a
/// client's decoder fail on a List page or a Subscribe stream.
pub fn notification(n: &Notification) -> proto::Notification {
    let (data, data_json) = match &n.data {
        Some(v) if json_depth(v) > NotificationData::MAX_DEPTH => (None, Some(v.to_string())),
        Some(v) => (json_to_struct(v), None),
        None => (None, None),
    };
    proto::Notification {
        id: n.id.to_string(),
        seq: n.seq.get(),
        r#type: n.kind.clone(),
        title: n.title.clone(),
        body: n.body.clone(),
        data,
        data_json,
        link: n.link.clone(),
        created_at: format_time(&n.created_at),
        read_at: n.read_at.as_ref().map(format_time),
        topic: n.topic.clone(),
        archived_at: n.archived_at.as_ref().map(format_time),
        expires_at: n.expires_at.as_ref().map(format_time),
    }
}

pub fn changed(c: &InboxChange) -> proto::Changed {
    let kind = match c.kind {
        ChangeKind::Archived => proto::ChangeKind::Archived,
        ChangeKind::Unarchived => proto::ChangeKind::Unarchived,
        ChangeKind::Deleted => proto::ChangeKind::Deleted,
    };
    proto::Changed {
        change: kind as i32,
        ids: c.ids.iter().map(|i| i.to_string()).collect(),
        seqs: c.seqs.iter().map(|s| s.get()).collect(),
    }
}

pub fn counts(c: &Counts) -> proto::Counts {
    proto::Counts {
        unread: c.unread,
        seq: c.seq.get(),
    }
}

/// The hub's `preferences` frame (`{"version":N,"preferences":{...}}`, the document as
/// `GET /v1/preferences` answers it) as the protobuf event.
pub fn preferences(json: &str) -> Result<proto::Preferences, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Frame {
        version: i64,
        preferences: Document,
    }
    #[derive(serde::Deserialize)]
    struct Document {
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        quiet_hours: Option<Quiet>,
    }
    #[derive(serde::Deserialize)]
    struct Rule {
        #[serde(default)]
        types: Vec<String>,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        channels: Vec<String>,
        action: String,
    }
    #[derive(serde::Deserialize)]
    struct Quiet {
        start: String,
        end: String,
        time_zone: String,
    }
    let f: Frame = serde_json::from_str(json)?;
    Ok(proto::Preferences {
        version: f.version,
        rules: f
            .preferences
            .rules
            .into_iter()
            .map(|r| proto::PreferenceRule {
                types: r.types,
                topics: r.topics,
                channels: r.channels,
                action: r.action,
            })
            .collect(),
        quiet_hours: f.preferences.quiet_hours.map(|q| proto::QuietHours {
            start: q.start,
            end: q.end,
            time_zone: q.time_zone,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_objects_survive_the_round_trip() {
        let v =
            json!({"order_id": 1234, "price": 9.5, "tags": ["a", null, true], "deep": {"x": -3}});
        let s = json_to_struct(&v).unwrap();
        assert_eq!(struct_to_json(&s), v);
    }

    #[test]
    fn preferences_frames_become_the_event() {
        let p = preferences(
            r#"{"version":3,"preferences":{"rules":[{"types":["marketing.*"],"topics":[],"channels":["inbox"],"action":"mute"}],"quiet_hours":{"start":"22:00","end":"07:00","time_zone":"Europe/Berlin"}}}"#,
        )
        .unwrap();
        assert_eq!(p.version, 3);
        assert_eq!(
            p.rules,
            [proto::PreferenceRule {
                types: vec!["marketing.*".into()],
                topics: vec![],
                channels: vec!["inbox".into()],
                action: "mute".into(),
            }]
        );
        assert_eq!(p.quiet_hours.unwrap().time_zone, "Europe/Berlin");
        let none =
            preferences(r#"{"version":1,"preferences":{"rules":[],"quiet_hours":null}}"#).unwrap();
        assert!(none.rules.is_empty() && none.quiet_hours.is_none());
        assert!(preferences("not json").is_err());
    }

    #[test]
    fn empty_strings_are_absent() {
        let body = publish_body(&proto::PublishRequest {
            recipients: vec!["alice".into()],
            r#type: "a".into(),
            title: "t".into(),
            ..Default::default()
        });
        assert_eq!(
            body,
            json!({"recipients": ["alice"], "type": "a", "title": "t"})
        );
    }
}
