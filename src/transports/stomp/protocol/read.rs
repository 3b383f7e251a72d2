//! `SEND` to `/app/read`: the one thing a client may send, with the same JSON body as
//! `POST /v1/notifications/read`, checked by the same parser.

use crate::domain::MarkRead;
use crate::ingest::parse_mark_read;

/// The one `SEND` destination: marks notifications read.
pub const READ: &str = "/app/read";

/// The body of a SEND to `/app/read`: the same JSON as `POST /v1/notifications/read`.
pub fn parse_read_body(body: &[u8]) -> Result<MarkRead, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the {READ} body is not JSON: {e}"))?;
    parse_mark_read(&value, &[]).map_err(|errors| {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{} {}", e.field, e.message)
                }
            })
            .collect();
        format!("invalid {READ} body: {}", fields.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Seq;

    #[test]
    fn read_bodies() {
        assert_eq!(
            parse_read_body(br#"{"up_to":5}"#),
            Ok(MarkRead::UpTo(Seq::new(5)))
        );
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            parse_read_body(format!(r#"{{"ids":["{id}"]}}"#).as_bytes()),
            Ok(MarkRead::Ids(vec![id]))
        );
        assert!(parse_read_body(b"").unwrap_err().contains("not JSON"));
        assert!(parse_read_body(br#"{"up_to":-1}"#)
            .unwrap_err()
            .contains("up_to"));
        assert!(parse_read_body(br#"{"type":"read","up_to":1}"#)
            .unwrap_err()
            .contains("type is not a known field"));
        assert!(parse_read_body(b"[]").unwrap_err().contains("JSON object"));
    }
}
