//! What a CONNECT (or STOMP) frame says: the protocol version both sides speak
//! (`accept-version`) and the user's token. Heart-beat negotiation has its own module
//! ([`crate::transports::stomp::heartbeat`]).

use crate::transports::stomp::frame::Frame;

/// Supported versions, best first, as the `version` header of an ERROR lists them.
pub(crate) const VERSIONS: [&str; 3] = ["1.2", "1.1", "1.0"];

/// `accept-version` negotiation: the best version both sides speak. A client that sends
/// no `accept-version` speaks 1.0 (the spec's rule).
pub fn negotiate_version(accept: Option<&str>) -> Option<&'static str> {
    let offered: Vec<&str> = match accept {
        None => vec!["1.0"],
        Some(list) => list.split(',').map(str::trim).collect(),
    };
    VERSIONS.into_iter().find(|v| offered.contains(v))
}

/// The token of a CONNECT frame: its `Authorization` header (`Bearer <jwt>`, or the bare
/// token, as `@stomp/stompjs` users often set it), else `passcode` (what STOMP clients that
/// only know login/passcode can send). Header names are case-sensitive in STOMP, but
/// `authorization` is accepted too: Spring front ends send either.
pub fn connect_token(frame: &Frame) -> Option<&str> {
    let auth = frame
        .header("Authorization")
        .or_else(|| frame.header("authorization"))
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(value) = auth {
        return Some(match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => value,
        });
    }
    frame.header("passcode").filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transports::stomp::frame::Command;

    fn connect(headers: &[(&str, &str)]) -> Frame {
        let mut f = Frame::new(Command::Connect);
        for (n, v) in headers {
            f.push_header(*n, *v);
        }
        f
    }

    #[test]
    fn version_negotiation_prefers_1_2() {
        assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Some("1.2"));
        assert_eq!(negotiate_version(Some("1.1, 1.0")), Some("1.1"));
        assert_eq!(negotiate_version(Some("1.0")), Some("1.0"));
        assert_eq!(negotiate_version(None), Some("1.0"));
        assert_eq!(negotiate_version(Some("2.0,0.9")), None);
        assert_eq!(negotiate_version(Some("")), None);
    }

    #[test]
    fn token_comes_from_authorization_or_passcode() {
        assert_eq!(
            connect_token(&connect(&[("Authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            connect_token(&connect(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            connect_token(&connect(&[("Authorization", "abc")])),
            Some("abc")
        );
        assert_eq!(
            connect_token(&connect(&[("login", "alice"), ("passcode", "xyz")])),
            Some("xyz")
        );
        // Authorization wins over passcode.
        assert_eq!(
            connect_token(&connect(&[
                ("passcode", "p"),
                ("Authorization", "Bearer a")
            ])),
            Some("a")
        );
        assert_eq!(connect_token(&connect(&[("passcode", "")])), None);
        assert_eq!(connect_token(&connect(&[("Authorization", "  ")])), None);
        assert_eq!(connect_token(&connect(&[])), None);
    }
}
