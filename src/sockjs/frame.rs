//! SockJS framing (protocol 0.3.3), pure: what the server writes (`o`, `h`, `a[...]`,
//! `c[code,"reason"]`) and what it reads (a JSON array of strings, or on WebSocket one
//! string).

use thiserror::Error;

pub const OPEN: &str = "o";
pub const HEARTBEAT: &str = "h";

/// What is wrong with a client's payload. The texts are the protocol's own: sockjs-client
/// and the conformance suite look for them.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("Payload expected.")]
    Expected,
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// A JSON string literal with the characters SockJS requires escaped beyond what JSON
/// does: browsers mangle or drop some of them (zero-width and bidi marks, the line and
/// paragraph separators, the specials block) on the way through XHR and `<script>`.
pub fn quote(s: &str) -> String {
    // serde_json escapes `"`, `\` and the C0 controls; the rest is done here.
    let json = serde_json::Value::String(s.to_owned()).to_string();
    if !json.chars().any(needs_escape) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{7f}'..='\u{9f}'
        | '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// `a["m1","m2"]`.
pub fn messages<S: AsRef<str>>(msgs: &[S]) -> String {
    let mut out = String::from("a[");
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&quote(m.as_ref()));
    }
    out.push(']');
    out
}

/// `c[3000,"Go away!"]`.
pub fn close(code: u16, reason: &str) -> String {
    format!("c[{code},{}]", quote(reason))
}

/// The messages of an `xhr_send` or `jsonp_send` body: a JSON array of strings.
pub fn parse_send(body: &[u8]) -> Result<Vec<String>, PayloadError> {
    if body.is_empty() {
        return Err(PayloadError::Expected);
    }
    serde_json::from_slice::<Vec<String>>(body).map_err(|_| PayloadError::BrokenJson)
}

/// The messages of a WebSocket text message: an array of strings, or one string (what
/// sockjs-node accepts too). An empty message carries nothing.
pub fn parse_ws(text: &str) -> Result<Vec<String>, PayloadError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.trim_start().starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map(|m| vec![m])
            .map_err(|_| PayloadError::BrokenJson);
    }
    serde_json::from_str::<Vec<String>>(text).map_err(|_| PayloadError::BrokenJson)
}

/// A `c` / `callback` parameter as sockjs-client sends it: `[A-Za-z0-9_.]`, at most 256
/// bytes (its own callbacks are `_jp.a1b2c3.a` style). The protocol also allows `-`, which
/// is refused here: `x-alert` would make the response call `alert`.
///
/// Nor may any dotted part be one that reaches a constructor or the evaluator
/// (`constructor`, `prototype`, `__proto__`, `eval`, `Function`): `x.constructor.constructor`
/// is `Function`, which turns the data it is called with into code.
pub fn valid_callback(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name
            .split('.')
            .any(|part| DANGEROUS_CALLBACK_PARTS.contains(&part))
}

/// Names that turn a JSONP call into running its argument as code (see
/// [`valid_callback`]).
pub const DANGEROUS_CALLBACK_PARTS: &[&str] =
    &["constructor", "prototype", "__proto__", "eval", "Function"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(messages(&["a", "b\"c"]), r#"a["a","b\"c"]"#);
        assert_eq!(messages::<&str>(&[]), "a[]");
        assert_eq!(close(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
    }

    #[test]
    fn escapes_what_browsers_mangle() {
        assert_eq!(
            quote("\u{2028}x\u{ffff}\u{200c}"),
            r#""\u2028x\uffff\u200c""#
        );
        assert_eq!(quote("\n\u{0}"), r#""\n\u0000""#);
        assert_eq!(quote("é"), "\"é\"");
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(
            parse_send(b"[\"a\",\"b\"]"),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_send(b"[]"), Ok(vec![]));
        assert_eq!(parse_send(b""), Err(PayloadError::Expected));
        assert_eq!(parse_send(b"[\"x"), Err(PayloadError::BrokenJson));
        assert_eq!(parse_send(b"[1]"), Err(PayloadError::BrokenJson));
        assert_eq!(parse_ws(""), Ok(vec![]));
        assert_eq!(parse_ws("\"a\""), Ok(vec!["a".into()]));
        assert_eq!(parse_ws("[\"a"), Err(PayloadError::BrokenJson));
    }

    #[test]
    fn callbacks() {
        assert!(valid_callback("_jp.abc123.a"));
        assert!(valid_callback("callback"));
        assert!(valid_callback("_jp.evaluate.constructors"));
        for bad in [
            "",
            " ",
            "*",
            "abc(",
            "a-b",
            "a;alert(1)",
            "a b",
            "eval",
            "constructor.constructor",
            "a.constructor",
            "x.prototype.y",
            "__proto__.f",
            "Function",
            "window.eval",
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }
}
