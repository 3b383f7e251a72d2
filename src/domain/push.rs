//! Web Push values: a browser's push subscription as it is allowed in, and the VAPID key.
//!
//! A subscription's endpoint is a URL the server will POST to on the user's behalf, so it
//! is checked like any URL a user hands a server: `https` only, and never a private,
//! loopback or link-local address (server-side request forgery), unless the operator
//! allows it for tests with a local push service.

use super::FieldError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::SecretKey;
use std::net::IpAddr;

/// Longest endpoint accepted; real ones are under 500 bytes.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// A subscription's fields, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPushSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub expiration_time: Option<i64>,
}

/// Checks the browser's `PushSubscription` JSON. Every broken field is reported, by its
/// JSON path (`endpoint`, `keys.p256dh`, `keys.auth`, `expirationTime`).
pub fn parse_subscription(
    body: &serde_json::Value,
    allow_insecure: bool,
) -> Result<NewPushSubscription, Vec<FieldError>> {
    let mut errors = Vec::new();
    let endpoint = match body.get("endpoint").and_then(|v| v.as_str()) {
        Some(e) => match check_endpoint(e, allow_insecure) {
            Ok(()) => Some(e.to_owned()),
            Err(m) => {
                errors.push(FieldError::new("endpoint", m));
                None
            }
        },
        None => {
            errors.push(FieldError::new("endpoint", "is required (a string)"));
            None
        }
    };
    let keys = body.get("keys");
    let key = |name: &str, len: usize, errors: &mut Vec<FieldError>| -> Option<String> {
        let field = format!("keys.{name}");
        let Some(v) = keys.and_then(|k| k.get(name)).and_then(|v| v.as_str()) else {
            errors.push(FieldError::new(field, "is required (base64url)"));
            return None;
        };
        match decode_b64url(v) {
            Some(bytes) if bytes.len() == len => Some(URL_SAFE_NO_PAD.encode(bytes)),
            Some(bytes) => {
                errors.push(FieldError::new(
                    field,
                    format!("must be {len} bytes, got {}", bytes.len()),
                ));
                None
            }
            None => {
                errors.push(FieldError::new(field, "is not base64url"));
                None
            }
        }
    };
    let p256dh = key("p256dh", 65, &mut errors);
    let p256dh = p256dh.filter(|k| {
        let ok = decode_b64url(k).is_some_and(|b| p256::PublicKey::from_sec1_bytes(&b).is_ok());
        if !ok {
            errors.push(FieldError::new(
                "keys.p256dh",
                "is not an uncompressed P-256 public key",
            ));
        }
        ok
    });
    let auth = key("auth", 16, &mut errors);
    let expiration_time = match body.get("expirationTime") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..1e15).contains(&t) => Some(t as i64),
            _ => {
                errors.push(FieldError::new(
                    "expirationTime",
                    "must be null or milliseconds since the epoch",
                ));
                None
            }
        },
    };
    match (endpoint, p256dh, auth) {
        (Some(endpoint), Some(p256dh), Some(auth)) if errors.is_empty() => {
            Ok(NewPushSubscription {
                endpoint,
                p256dh,
                auth,
                expiration_time,
            })
        }
        _ => Err(errors),
    }
}

/// Browsers send base64url, with or without padding; some libraries send standard base64.
fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').replace('+', "-").replace('/', "_");
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// `https` on a public host, or anything when `allow_insecure`.
pub fn check_endpoint(raw: &str, allow_insecure: bool) -> Result<(), String> {
    if raw.len() > MAX_ENDPOINT_LEN {
        return Err(format!("must be at most {MAX_ENDPOINT_LEN} characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let Some(host) = url.host() else {
        return Err("has no host".into());
    };
    if allow_insecure {
        return match url.scheme() {
            "https" | "http" => Ok(()),
            _ => Err("must be an https URL".into()),
        };
    }
    if url.scheme() != "https" {
        return Err("must be an https URL".into());
    }
    let private = match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || !d.contains('.')
        }
        url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
    };
    if private {
        return Err(
            "must be on a public host, not a private, loopback or link-local address".into(),
        );
    }
    Ok(())
}

/// Whether `ip` is on the public internet: not private, loopback, link-local, shared
/// (CGNAT), multicast, documentation or unspecified. Also checked at send time, on what an
/// endpoint's DNS name resolves to (`bridges::webpush::resolve`).
pub fn is_public_ip(ip: IpAddr) -> bool {
    is_public(ip)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a P-256 private key: expected PEM (PKCS#8 or SEC1) or base64url of 32 raw bytes")]
pub struct VapidKeyError;

/// The application server's VAPID key pair (RFC 8292).
#[derive(Clone)]
pub struct VapidKey {
    secret: SecretKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey({})", self.public_key())
    }
}

impl VapidKey {
    /// A PEM (PKCS#8 or SEC1) or base64url raw 32-byte key.
    pub fn parse(raw: &str) -> Result<Self, VapidKeyError> {
        let raw = raw.trim();
        let secret = if raw.starts_with("-----BEGIN") {
            SecretKey::from_pkcs8_pem(raw)
                .or_else(|_| SecretKey::from_sec1_pem(raw))
                .map_err(|_| VapidKeyError)?
        } else {
            let bytes = decode_b64url(raw).ok_or(VapidKeyError)?;
            if bytes.len() != 32 {
                return Err(VapidKeyError);
            }
            SecretKey::from_slice(&bytes).map_err(|_| VapidKeyError)?
        };
        Ok(Self { secret })
    }

    pub fn generate() -> Self {
        use rand::RngCore;
        loop {
            // 32 random bytes are a valid scalar unless zero or past the curve's order
            // (a chance of about 2^-32): then draw again.
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(secret) = SecretKey::from_slice(&bytes) {
                return Self { secret };
            }
        }
    }

    /// The application server key a browser subscribes with: base64url of the
    /// uncompressed public point (65 bytes).
    pub fn public_key(&self) -> String {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// The private key as base64url of its 32 raw bytes (what `vapid-keys` prints).
    pub fn private_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }

    /// PKCS#8 DER, for the JWT signer.
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, VapidKeyError> {
        self.secret
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|_| VapidKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> (String, String) {
        let ua = VapidKey::generate();
        (ua.public_key(), URL_SAFE_NO_PAD.encode([7u8; 16]))
    }

    #[test]
    fn a_browser_subscription_is_accepted() {
        let (p, a) = keys();
        let s = parse_subscription(
            &json!({"endpoint": "https://fcm.googleapis.com/fcm/send/abc", "expirationTime": null,
                    "keys": {"p256dh": p, "auth": a}}),
            false,
        )
        .unwrap();
        assert_eq!(s.endpoint, "https://fcm.googleapis.com/fcm/send/abc");
    }

    #[test]
    fn private_and_plain_endpoints_are_refused_unless_allowed() {
        for e in [
            "http://push.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://localhost/x",
            "https://intranet/x",
            "https://user:pw@push.example.com/x",
        ] {
            assert!(check_endpoint(e, false).is_err(), "{e}");
        }
        assert!(check_endpoint("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_endpoint("https://push.example.com/x", false).is_ok());
    }

    #[test]
    fn every_broken_field_is_named() {
        let errors = parse_subscription(
            &json!({"endpoint": "ftp://x", "keys": {"p256dh": "AAAA", "auth": "%%"}}),
            false,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["endpoint", "keys.p256dh", "keys.auth"]);
    }

    #[test]
    fn vapid_keys_round_trip_through_every_format() {
        let k = VapidKey::generate();
        let raw = VapidKey::parse(&k.private_key_b64()).unwrap();
        assert_eq!(raw.public_key(), k.public_key());
        let pem =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&k.secret, Default::default()).unwrap();
        assert_eq!(VapidKey::parse(&pem).unwrap().public_key(), k.public_key());
        assert!(VapidKey::parse("nope").is_err());
        assert_eq!(URL_SAFE_NO_PAD.decode(k.public_key()).unwrap().len(), 65);
    }
}
