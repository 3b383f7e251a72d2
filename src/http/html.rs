//! What every HTML page Tidings writes needs: data inside a `<script>` block that cannot end
//! it or become markup, and the headers that keep a page from running anything else.
//!
//! Pure and free of the crate's other modules, so every face that writes HTML (the
//! hidden-iframe stream, SockJS's `htmlfile` and iframe pages) shares this one escaping
//! instead of each doing its own.

use base64::Engine;
use sha2::{Digest, Sha256};

/// `X-Content-Type-Options` on every page and script: never sniffed as something else.
pub const NOSNIFF: &str = "nosniff";

/// A JavaScript expression (a JSON value, or a JSON string literal) made safe inside a
/// `<script>` block of an HTML page. `<`, `>` and `&` can only appear inside string
/// literals there, where `\u003c` means the same, so no `</script>`, `<!--` or `]]>` can end
/// or change the block; U+2028 and U+2029 ended string literals in engines before ES2019.
pub fn script_safe(js: &str) -> String {
    if !js.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return js.to_owned();
    }
    let mut out = String::with_capacity(js.len() + 16);
    for c in js.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A fresh nonce for one response's `Content-Security-Policy: script-src 'nonce-…'`: a
/// script that was injected into the page (whatever slipped past [`script_safe`]) lacks it
/// and does not run.
pub fn nonce() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>())
}

/// `'sha256-…'`, the CSP source that allows exactly this inline script of a fixed page.
pub fn script_hash(script: &str) -> String {
    let digest = Sha256::digest(script.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy of a page whose only scripts carry `nonce`: nothing else loads or runs.
pub fn nonce_policy(nonce: &str) -> String {
    format!("default-src 'none'; script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'")
}

/// The Swagger UI at `/docs`: its own scripts, styles (it sets inline styles) and images,
/// and requests to this server only (the document and "Try it out").
pub const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_in_a_script_payload_ends_the_block() {
        let hostile = "</script><script>window.__pwned=1</script>\u{2028}\u{2029}<!--&";
        let json = serde_json::to_string(hostile).unwrap_or_default();
        let safe = script_safe(&json);
        for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!safe.contains(bad), "{bad:?} in {safe}");
        }
        // The same string to a JavaScript (and JSON) reader.
        let back: String = serde_json::from_str(&safe).unwrap_or_default();
        assert_eq!(back, hostile);
        assert_eq!(script_safe("p(\"ok\")"), "p(\"ok\")");
    }

    #[test]
    fn nonces_differ_and_hashes_are_csp_sources() {
        assert_ne!(nonce(), nonce());
        assert!(nonce()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        // printf 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            script_hash("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }
}
