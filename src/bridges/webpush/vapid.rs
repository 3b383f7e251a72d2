//! The `Authorization: vapid t=…, k=…` header (RFC 8292): an ES256 JWT whose `aud` is the
//! push resource's origin (scheme, host and port), with `exp` within 24 h and the
//! operator's contact as `sub`; signed by jsonwebtoken.
//!
//! A token is good for every push to one origin until it nears its expiry, so it is signed
//! once per origin and hour, not once per push.

use crate::domain::{VapidKey, VapidKeyError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tokens live 12 h (the limit is 24 h) and are replaced after 1 h.
const VALID_FOR: Duration = Duration::from_secs(12 * 3600);
const REUSE_FOR: Duration = Duration::from_secs(3600);
/// Origins remembered at once; past it the cache starts again (push services are few).
const MAX_ORIGINS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the push endpoint has no origin")]
    NoOrigin,
    #[error("the VAPID token could not be signed")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

pub struct Signer {
    key: EncodingKey,
    public: String,
    subject: String,
    cache: HashMap<String, (String, SystemTime)>,
}

impl Signer {
    pub fn new(key: &VapidKey, subject: String) -> Result<Self, VapidKeyError> {
        Ok(Self {
            key: EncodingKey::from_ec_der(&key.pkcs8_der()?),
            public: key.public_key(),
            subject,
            cache: HashMap::new(),
        })
    }

    /// The header value for a push to `endpoint`.
    pub fn authorization(&mut self, endpoint: &str) -> Result<String, SignError> {
        let origin = origin(endpoint).ok_or(SignError::NoOrigin)?;
        let now = SystemTime::now();
        if let Some((header, signed)) = self.cache.get(&origin) {
            if now.duration_since(*signed).unwrap_or_default() < REUSE_FOR {
                return Ok(header.clone());
            }
        }
        let exp = (now + VALID_FOR)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &Claims {
                aud: &origin,
                exp,
                sub: &self.subject,
            },
            &self.key,
        )?;
        let header = format!("vapid t={token}, k={}", self.public);
        if self.cache.len() >= MAX_ORIGINS {
            self.cache.clear();
        }
        self.cache.insert(origin, (header.clone(), now));
        Ok(header)
    }
}

/// `scheme://host[:port]`, the port only when it is not the scheme's default.
fn origin(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    match url.origin() {
        o @ url::Origin::Tuple(..) => Some(o.ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audience_is_the_endpoints_origin_with_its_port() {
        assert_eq!(
            origin("https://push.example.com/a/b?c").as_deref(),
            Some("https://push.example.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8123/push/1").as_deref(),
            Some("http://127.0.0.1:8123")
        );
    }

    #[test]
    fn a_token_verifies_with_the_public_key() {
        let key = VapidKey::generate();
        let mut s = Signer::new(&key, "mailto:ops@example.com".into()).unwrap();
        let h = s.authorization("https://push.example.com/x").unwrap();
        let t = h
            .strip_prefix("vapid t=")
            .and_then(|r| r.split(", k=").next())
            .unwrap();
        assert!(h.ends_with(&format!("k={}", key.public_key())));
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.public_key())
            .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[1..33]);
        let y = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[33..]);
        let dk = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["https://push.example.com"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(t, &dk, &v).unwrap();
        assert_eq!(data.claims["sub"], "mailto:ops@example.com");
        // Signed once per origin: the second push reuses the header.
        assert_eq!(s.authorization("https://push.example.com/y").unwrap(), h);
    }
}
