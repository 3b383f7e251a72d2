//! `x-tidings-after` on a SUBSCRIBE: where a subscription resumes, with the same replay
//! rules as the other transports' cursors.

use crate::domain::{Cursor, Seq};
use crate::transports::stomp::ack::truncate;

/// The header that resumes a subscription from a cursor.
pub const AFTER_HEADER: &str = "x-tidings-after";

/// `x-tidings-after`: the last seq the client has seen; absent means only what is new.
pub fn parse_cursor(header: Option<&str>) -> Result<Cursor, String> {
    match header {
        None => Ok(Cursor::Live),
        Some(v) => match Seq::parse(v) {
            Ok(seq) => Ok(Cursor::After(seq)),
            _ => Err(format!(
                "{AFTER_HEADER} must be a seq (a whole number, 0 or more), not '{}'",
                truncate(v, 32)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(None), Ok(Cursor::Live));
        assert_eq!(parse_cursor(Some("0")), Ok(Cursor::After(Seq::ZERO)));
        assert_eq!(parse_cursor(Some("42")), Ok(Cursor::After(Seq::new(42))));
        for bad in ["", "-1", "+1", "x", "1.5", "99999999999999999999"] {
            assert!(parse_cursor(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
