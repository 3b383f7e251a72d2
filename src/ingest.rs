//! Ingest: turns a publish request body into a [`NewNotification`] that cannot be invalid.
//!
//! The body is parsed as a generic JSON value first, not straight into a struct, so that one
//! response can name *every* bad or unknown field at once instead of only the first one serde
//! trips over.

use crate::domain::{
    now_micros, parse_expiry, Body, CollapseKey, FieldError, IdempotencyKey, Link, MarkRead,
    NewNotification, NotificationData, NotificationType, Seq, Title, TopicName, UserId,
};
use crate::store::{Idempotency, PublishCommand};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// At most this many distinct recipients per request.
pub const MAX_RECIPIENTS: usize = 1000;

const KNOWN_FIELDS: [&str; 11] = [
    "recipients",
    "topic",
    "type",
    "title",
    "body",
    "data",
    "link",
    "critical",
    "expires_at",
    "ttl_seconds",
    "collapse_key",
];

/// The parser lives here rather than beside the type in `domain`: turning untrusted JSON
/// into domain values, naming every bad field at once, is ingest's whole job.
impl NewNotification {
    /// Validates a publish body. `null` is treated as absent for the optional fields.
    pub fn parse(value: &Value) -> Result<Self, Vec<FieldError>> {
        let Value::Object(obj) = value else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        let mut errors = Vec::new();
        for key in obj.keys().filter(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            errors.push(FieldError::new(key.clone(), "is not a known field"));
        }

        // `null` is absent here too: `{"recipients": [...], "topic": null}` names recipients.
        let present = |field: &str| obj.get(field).filter(|v| !v.is_null());
        let (recipients, topic) = match (present("recipients"), present("topic")) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    "topic",
                    "give either `recipients` or `topic`, not both",
                ));
                (None, None)
            }
            (None, Some(t)) => match t.as_str().map(TopicName::parse) {
                Some(Ok(topic)) => (Some(Vec::new()), Some(topic)),
                Some(Err(m)) => {
                    errors.push(FieldError::new("topic", m));
                    (None, None)
                }
                None => {
                    errors.push(FieldError::new("topic", "must be a string"));
                    (None, None)
                }
            },
            (r, None) => (parse_recipients(r, &mut errors), None),
        };
        let kind = required_str(obj, "type", &mut errors).and_then(|s| {
            NotificationType::parse(s)
                .map_err(|m| errors.push(FieldError::new("type", m)))
                .ok()
        });
        let title = required_str(obj, "title", &mut errors).and_then(|s| {
            Title::parse(s)
                .map_err(|m| errors.push(FieldError::new("title", m)))
                .ok()
        });
        let body = optional_str(obj, "body", &mut errors).and_then(|s| {
            Body::parse(s)
                .map_err(|m| errors.push(FieldError::new("body", m)))
                .ok()
        });
        let link = optional_str(obj, "link", &mut errors).and_then(|s| {
            Link::parse(s)
                .map_err(|m| errors.push(FieldError::new("link", m)))
                .ok()
        });
        let data = match obj.get("data") {
            None | Some(Value::Null) => None,
            Some(v) => NotificationData::parse(v)
                .map_err(|m| errors.push(FieldError::new("data", m)))
                .ok(),
        };

        let critical = match obj.get("critical") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::new("critical", "must be true or false"));
                false
            }
        };

        let expires_at = optional_str(obj, "expires_at", &mut errors);
        let ttl_seconds = match obj.get("ttl_seconds") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64().or_else(|| whole_f64(v)) {
                Some(n) => Some(n),
                None => {
                    errors.push(FieldError::new(
                        "ttl_seconds",
                        "must be a whole number of seconds",
                    ));
                    None
                }
            },
        };
        let expires_at = parse_expiry(expires_at, ttl_seconds, now_micros())
            .map_err(|(field, m)| errors.push(FieldError::new(field, m)))
            .ok()
            .flatten();
        let collapse_key = optional_str(obj, "collapse_key", &mut errors).and_then(|s| {
            CollapseKey::parse(s)
                .map_err(|m| errors.push(FieldError::new("collapse_key", m)))
                .ok()
        });

        match (recipients, kind, title) {
            (Some(recipients), Some(kind), Some(title)) if errors.is_empty() => Ok(Self {
                recipients,
                topic,
                kind,
                title,
                body,
                data,
                link,
                critical,
                expires_at,
                collapse_key,
            }),
            _ => Err(errors),
        }
    }
}

fn parse_recipients(v: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<UserId>> {
    let list = match v {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "recipients",
                "is required (or give `topic`)",
            ));
            return None;
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            errors.push(FieldError::new(
                "recipients",
                "must be an array of user ids",
            ));
            return None;
        }
    };
    if list.is_empty() {
        errors.push(FieldError::new("recipients", "must name at least one user"));
        return None;
    }
    let before = errors.len();
    let mut out: Vec<UserId> = Vec::with_capacity(list.len().min(MAX_RECIPIENTS));
    let mut seen = std::collections::HashSet::with_capacity(list.len().min(MAX_RECIPIENTS));
    for (i, item) in list.iter().enumerate() {
        let field = format!("recipients[{i}]");
        match item.as_str().map(UserId::parse) {
            None => errors.push(FieldError::new(field, "must be a string")),
            Some(Err(m)) => errors.push(FieldError::new(field, m)),
            Some(Ok(id)) => {
                if seen.insert(id.clone()) {
                    out.push(id);
                }
            }
        }
        // Past a handful of bad entries the rest add noise, not help.
        if errors.len() - before >= 20 {
            break;
        }
    }
    if out.len() > MAX_RECIPIENTS {
        errors.push(FieldError::new(
            "recipients",
            format!(
                "names {} distinct users; at most {MAX_RECIPIENTS} are allowed per request",
                out.len()
            ),
        ));
    }
    (errors.len() == before).then_some(out)
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// At most this many ids per mark-read request.
pub const MAX_READ_IDS: usize = 1000;

/// A JSON number written with a fraction of zero (`11.0`) as the integer it is.
fn whole_f64(v: &Value) -> Option<i64> {
    v.as_f64()
        .filter(|f| f.fract() == 0.0 && (0.0..9.0e18).contains(f))
        .map(|f| f as i64)
}

/// Validates a mark-read body: `{"ids": [...]}` or `{"up_to": seq}`, exactly one.
///
/// `extra` names fields the caller's envelope adds and that are allowed beside them (the
/// WebSocket frame's `type`).
pub fn parse_mark_read(value: &Value, extra: &[&str]) -> Result<MarkRead, Vec<FieldError>> {
    let Value::Object(obj) = value else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !["ids", "up_to"].contains(&k.as_str()) && !extra.contains(&k.as_str()))
        .map(|k| FieldError::new(k.clone(), "is not a known field"))
        .collect();
    let result = match (obj.get("ids"), obj.get("up_to")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "ids",
                "give either `ids` or `up_to`, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                "ids",
                "give `ids` (a list of notification ids) or `up_to` (a seq)",
            ));
            None
        }
        // `11.0` is a whole number too (JSON Schema's `integer` includes it), whatever the
        // client's JSON encoder chose.
        (None, Some(v)) => match v.as_i64().or_else(|| whole_f64(v)).and_then(Seq::try_new) {
            Some(seq) => Some(MarkRead::UpTo(seq)),
            _ => {
                errors.push(FieldError::new(
                    "up_to",
                    "must be a whole number, 0 or more",
                ));
                None
            }
        },
        (Some(Value::Array(list)), None) if list.is_empty() || list.len() > MAX_READ_IDS => {
            errors.push(FieldError::new(
                "ids",
                format!("must hold 1 to {MAX_READ_IDS} ids"),
            ));
            None
        }
        (Some(Value::Array(list)), None) => {
            let mut ids = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                match item.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    Some(id) => ids.push(id),
                    None if errors.len() < 20 => errors.push(FieldError::new(
                        format!("ids[{i}]"),
                        "must be a notification id (a UUID)",
                    )),
                    None => {}
                }
            }
            Some(MarkRead::Ids(ids))
        }
        (Some(_), None) => {
            errors.push(FieldError::new(
                "ids",
                "must be an array of notification ids",
            ));
            None
        }
    };
    match result {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

/// A publish body and its sender, checked against every rule, ready for the store.
///
/// The rules that span fields live here, not in a face, so REST, gRPC and any face added
/// later refuse the same requests with the same words: a topic publish takes no
/// idempotency key, because its fan-out commits in batches and a retry could not be
/// answered with "the first response again".
pub fn publish_command(
    service: String,
    key: Option<IdempotencyKey>,
    body: &Value,
) -> Result<PublishCommand, Vec<FieldError>> {
    let notification = NewNotification::parse(body)?;
    if notification.topic.is_some() && key.is_some() {
        return Err(vec![FieldError::new(
            "Idempotency-Key",
            "is not supported with `topic`: a topic fan-out commits in batches",
        )]);
    }
    Ok(PublishCommand {
        service,
        idempotency: key.map(|key| Idempotency {
            key,
            fingerprint: fingerprint(body),
        }),
        notification,
        schedule: None,
    })
}

/// `deliver_at` may be at most this many days ahead: a year and a day, so "same time next
/// year" fits, and the table of pending schedules cannot fill with the far future.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

/// A publish body checked whole, `deliver_at` included: what to publish, and when.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub cmd: PublishCommand,
    /// In the future: schedule it. `None` when absent, or now or past ("now").
    pub deliver_at: Option<DateTime<Utc>>,
    /// The body without `deliver_at`: what a schedule stores and publishes at its time.
    pub request: Value,
}

/// [`publish_command`] for a body that may carry `deliver_at` (RFC 3339, at most
/// [`MAX_SCHEDULE_AHEAD_DAYS`] after `now`). Every bad field is named at once, `deliver_at`
/// among them. The idempotency fingerprint covers the whole body, `deliver_at` included, so
/// the same key with another time is a conflict, as with any other changed field.
pub fn publish_plan(
    service: String,
    key: Option<IdempotencyKey>,
    body: &Value,
    now: DateTime<Utc>,
) -> Result<PublishPlan, Vec<FieldError>> {
    let mut request = body.clone();
    let deliver_at = match request.as_object_mut().and_then(|o| o.remove("deliver_at")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_deliver_at(&v, now).map_err(|m| FieldError::new("deliver_at", m)),
    };
    let cmd = publish_command(service, key, &request);
    // An absolute `expires_at` must leave the notification some life after it is delivered
    // (a `ttl_seconds` counts from the delivery, so it always does).
    let deliver_at = match (deliver_at, &cmd) {
        (Ok(Some(at)), Ok(cmd))
            if request.get("expires_at").is_some_and(|v| !v.is_null())
                && cmd.notification.expires_at.is_some_and(|e| e <= at) =>
        {
            return Err(vec![FieldError::new(
                "expires_at",
                "must be after `deliver_at`: the notification would expire before it is delivered",
            )]);
        }
        (deliver_at, _) => deliver_at,
    };
    match (cmd, deliver_at) {
        (Ok(mut cmd), Ok(deliver_at)) => {
            if let Some(idem) = &mut cmd.idempotency {
                idem.fingerprint = fingerprint(body);
            }
            Ok(PublishPlan {
                cmd,
                deliver_at,
                request,
            })
        }
        (Err(mut errors), Err(e)) => {
            errors.push(e);
            Err(errors)
        }
        (Err(errors), Ok(_)) => Err(errors),
        (Ok(_), Err(e)) => Err(vec![e]),
    }
}

/// `Some` for a time after `now` (to the microsecond, as stored), `None` for now or past.
pub fn parse_deliver_at(v: &Value, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
    let text = v
        .as_str()
        .ok_or("must be a date and time as an RFC 3339 string, such as 2026-12-24T09:00:00Z")?;
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| {
            "must be an RFC 3339 date and time with its offset, such as 2026-12-24T09:00:00Z"
        })?
        .with_timezone(&Utc);
    if at > now + chrono::Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
        return Err(format!(
            "must be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"
        ));
    }
    let at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
    Ok((at > now).then_some(at))
}

/// A digest of the request body that ignores formatting and key order, so a client that
/// retries with the same content under the same `Idempotency-Key` is recognised even if
/// its JSON serializer reorders keys.
pub fn fingerprint(value: &Value) -> String {
    // serde_json's Map is ordered by key (no `preserve_order` feature), so this is canonical.
    let canonical = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(r: Result<NewNotification, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_the_contract_example_and_folds_duplicates() {
        let n = NewNotification::parse(&json!({
            "recipients": ["alice", "bob", "alice"],
            "type": "order.shipped",
            "title": "Your order has shipped",
            "body": "Parcel 1Z999 is on its way.",
            "data": {"order_id": 1234},
            "link": "https://shop.example/orders/1234"
        }))
        .unwrap();
        let r: Vec<_> = n.recipients.iter().map(|u| u.as_str()).collect();
        assert_eq!(r, ["alice", "bob"]);
    }

    #[test]
    fn names_every_bad_and_unknown_field() {
        let f = fields(NewNotification::parse(&json!({
            "recipients": ["ok", "not ok"],
            "type": "Bad Type",
            "title": "",
            "link": "nope",
            "extra": 1,
            "other": 2
        })));
        for want in ["recipients[1]", "type", "title", "link", "extra", "other"] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn recipients_bounds() {
        assert_eq!(
            fields(NewNotification::parse(
                &json!({"recipients": [], "type": "a", "title": "t"})
            )),
            ["recipients"]
        );
        let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
        assert_eq!(
            fields(NewNotification::parse(
                &json!({"recipients": many, "type": "a", "title": "t"})
            )),
            ["recipients"]
        );
        // 1001 entries that fold to 1000 distinct users are fine.
        let mut folded: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
        folded.push("u0".into());
        assert!(
            NewNotification::parse(&json!({"recipients": folded, "type": "a", "title": "t"}))
                .is_ok()
        );
    }

    #[test]
    fn topic_or_recipients() {
        let n =
            NewNotification::parse(&json!({"topic": "release-notes", "type": "a", "title": "t"}))
                .unwrap();
        assert_eq!(n.topic.unwrap().as_str(), "release-notes");
        assert!(n.recipients.is_empty());
        assert_eq!(
            fields(NewNotification::parse(
                &json!({"topic": "x", "recipients": ["a"], "type": "a", "title": "t"})
            )),
            ["topic"]
        );
        assert_eq!(
            fields(NewNotification::parse(
                &json!({"topic": "a b", "type": "a", "title": "t"})
            )),
            ["topic"]
        );
    }

    #[test]
    fn null_optionals_are_absent() {
        let n = NewNotification::parse(
            &json!({"recipients": ["a"], "type": "a", "title": "t", "body": null, "data": null, "link": null}),
        )
        .unwrap();
        assert!(n.body.is_none() && n.data.is_none() && n.link.is_none());
    }

    #[test]
    fn lifecycle_fields_name_themselves() {
        let base = |extra: Value| {
            let mut v = json!({"recipients": ["a"], "type": "a", "title": "t"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            NewNotification::parse(&v)
        };
        let n = base(json!({"ttl_seconds": 60, "collapse_key": "chat:general"})).unwrap();
        assert!(n.expires_at.is_some());
        assert_eq!(n.collapse_key.unwrap().as_str(), "chat:general");
        assert_eq!(fields(base(json!({"collapse_key": ""}))), ["collapse_key"]);
        assert_eq!(
            fields(base(json!({"collapse_key": "k".repeat(65)}))),
            ["collapse_key"]
        );
        assert_eq!(
            fields(base(json!({"expires_at": "2001-01-01T00:00:00Z"}))),
            ["expires_at"]
        );
        assert_eq!(fields(base(json!({"expires_at": "soon"}))), ["expires_at"]);
        assert_eq!(fields(base(json!({"ttl_seconds": "60"}))), ["ttl_seconds"]);
        assert_eq!(
            fields(base(
                json!({"ttl_seconds": 60, "expires_at": "2999-01-01T00:00:00Z"})
            )),
            ["ttl_seconds"]
        );
    }

    #[test]
    fn mark_read_takes_ids_or_up_to() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_mark_read(&json!({"ids": [id.to_string()]}), &[]).unwrap(),
            MarkRead::Ids(vec![id])
        );
        assert_eq!(
            parse_mark_read(&json!({"up_to": 7}), &[]).unwrap(),
            MarkRead::UpTo(Seq::new(7))
        );
        assert!(parse_mark_read(&json!({"type": "read", "up_to": 7}), &["type"]).is_ok());
        let fields = |v| -> Vec<String> {
            parse_mark_read(&v, &[])
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(json!({})), ["ids"]);
        assert_eq!(fields(json!({"ids": [], "up_to": 1})), ["ids"]);
        assert_eq!(fields(json!({"ids": []})), ["ids"]);
        assert_eq!(fields(json!({"ids": ["nope"]})), ["ids[0]"]);
        assert_eq!(fields(json!({"up_to": -1})), ["up_to"]);
        assert_eq!(fields(json!({"up_to": 1, "x": 1})), ["x"]);
    }

    #[test]
    fn deliver_at_is_a_time_within_the_limit() {
        let now = DateTime::parse_from_rfc3339("2026-12-08T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_deliver_at(&json!(s), now);
        assert_eq!(at("2026-12-08T11:59:59Z"), Ok(None), "past: now");
        assert_eq!(at("2026-12-08T12:00:00Z"), Ok(None), "now: now");
        assert_eq!(
            at("2026-12-08T13:00:00.1234567+01:00")
                .unwrap()
                .unwrap()
                .to_rfc3339(),
            "2026-12-08T12:00:00.123456+00:00",
            "UTC, to the microsecond"
        );
        assert!(at("2027-12-09T12:00:00Z").unwrap().is_some(), "366 days");
        assert!(at("2027-12-09T12:00:01Z").is_err(), "beyond 366 days");
        assert!(at("tomorrow").is_err());
        assert!(at("2026-12-09T12:00:00").is_err(), "no offset");
        assert!(parse_deliver_at(&json!(1_765_000_000), now).is_err());
    }

    #[test]
    fn a_plan_names_deliver_at_beside_the_other_fields() {
        let now = Utc::now();
        let fields = |body: Value| -> Vec<String> {
            publish_plan("s".into(), None, &body, now)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(json!({"recipients": ["a"], "type": "a", "title": "", "deliver_at": "x"})),
            ["title", "deliver_at"]
        );
        let key = IdempotencyKey::parse("k").unwrap();
        let plan = |t: &str| {
            publish_plan(
                "s".into(),
                Some(key.clone()),
                &json!({"recipients": ["a"], "type": "a", "title": "t", "deliver_at": t}),
                now,
            )
            .unwrap()
        };
        let soon = crate::domain::format_time(&(now + chrono::Duration::hours(1)));
        let (a, b) = (plan(&soon), plan("2000-01-01T00:00:00Z"));
        assert!(a.deliver_at.is_some() && b.deliver_at.is_none());
        assert_ne!(
            a.cmd.idempotency.clone().unwrap().fingerprint,
            b.cmd.idempotency.unwrap().fingerprint,
            "the time is part of the request"
        );
        assert!(a.request.get("deliver_at").is_none());
    }

    #[test]
    fn expires_at_must_come_after_deliver_at() {
        let now = Utc::now();
        let at = |h: i64| crate::domain::format_time(&(now + chrono::Duration::hours(h)));
        let plan = |extra: Value| {
            let mut body =
                json!({"recipients": ["a"], "type": "a", "title": "t", "deliver_at": at(2)});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            publish_plan("s".into(), None, &body, now)
        };
        let errors = plan(json!({"expires_at": at(1)})).unwrap_err();
        assert_eq!(errors[0].field, "expires_at");
        assert!(plan(json!({"expires_at": at(3)})).is_ok());
        // A TTL counts from the delivery.
        assert!(plan(json!({"ttl_seconds": 60})).is_ok());
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "b": [1, 2], "a": 1 }"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"a": 2, "b": [1, 2]})));
    }
}
