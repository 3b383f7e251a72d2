//! Token verification and minting. No HTTP here: every face extracts the bearer string
//! and asks [`Authenticator::authenticate`] (or, where it cannot wait,
//! [`Authenticator::verify`]) who it is.
//!
//! Two kinds of token are accepted side by side: the local key's (`tidings token`, the HS256
//! secret or the PEM key), and, when one is configured, an OpenID Connect provider's
//! ([`oidc`]): a token whose `iss` is the provider's is checked against the provider's JWKS,
//! any other against the local key.
//!
//! User and service tokens are kept apart by scope: a token whose `scope` contains
//! `notifications:publish` is a service's, and may only publish; any other valid token is a
//! user's, and may only read that user's own inbox. So a leaked service token never reads an
//! inbox, and a user token never publishes.

use crate::configuration::{AuthSettings, JwtAlgorithm, SettingsError};
use crate::domain::{ServiceName, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub mod oidc;

pub const PUBLISH_SCOPE: &str = "notifications:publish";
/// Lets a service read and write any user's preferences (a settings page in its own app).
pub const PREFERENCES_SCOPE: &str = "preferences:write";

/// What a caller that cannot wait is told while a token's signing key is being re-fetched.
pub const KEYS_REFRESHING: &str =
    "the identity provider's signing keys are being refreshed; try again in a second";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
}

/// RFC 7519 §4.1.3: `aud` is one string or an array of them. The value is checked by
/// `jsonwebtoken` against the configured audience; it is deserialized here only so that an
/// array does not make the whole token "malformed".
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(UserId),
    /// A publishing service, named by its token's `sub`.
    Service(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    /// Unix seconds: streams opened with this token close when it passes.
    pub expires_at: i64,
    /// The token's `scope`, split on spaces.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    /// Valid, but the wrong kind for this endpoint.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The token cannot be checked right now (the identity provider's keys are not loaded
    /// yet): 503, not 401, since the token may well be fine.
    #[error("{0}")]
    Unavailable(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("minting {0:?} tokens needs TIDINGS__AUTH__PRIVATE_KEY_FILE")]
    NoPrivateKey(JwtAlgorithm),
    #[error("could not sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("invalid subject: {0}")]
    Subject(String),
}

pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    provider: Option<Arc<oidc::Provider>>,
}

/// A token's `iss`, read before its signature is checked, only to pick the key to check
/// it with.
#[derive(Deserialize)]
struct IssuerOnly {
    #[serde(default)]
    iss: Option<String>,
}

/// What went wrong in a JWT check, in words for the client.
fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAlgorithm => {
            AuthError::Invalid("the token's algorithm is not accepted".into())
        }
        ErrorKind::InvalidSignature => AuthError::Invalid("the signature does not match".into()),
        ErrorKind::InvalidIssuer => AuthError::Invalid("the issuer is not accepted".into()),
        ErrorKind::InvalidAudience => AuthError::Invalid("the audience is not accepted".into()),
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::Invalid(format!("the `{c}` claim is required"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Invalid(format!("the `{c}` claim is malformed"))
        }
        ErrorKind::ImmatureSignature => {
            AuthError::Invalid("the token is not valid yet (its `nbf` is later)".into())
        }
        _ => AuthError::Invalid("the token is malformed".into()),
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// HS256 with `secret`, or the configured public key for RS256/ES256.
    pub fn new(
        settings: &AuthSettings,
        secret: Option<&SecretString>,
    ) -> Result<Self, SettingsError> {
        let key_err =
            |name: &str, e: &dyn std::fmt::Display| SettingsError::invalid(name, e.to_string());
        let (algorithm, decoding, encoding) = match settings.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = secret
                    .ok_or_else(|| {
                        SettingsError::invalid("TIDINGS__AUTH__JWT_SECRET", "is required for HS256")
                    })?
                    .expose_secret()
                    .as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::ES256) => {
                let pem = match (&settings.public_key_pem, &settings.public_key_file) {
                    (Some(pem), _) => pem.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map_err(|e| key_err("TIDINGS__AUTH__PUBLIC_KEY_FILE", &e))?,
                    (None, None) => {
                        return Err(SettingsError::invalid(
                            "TIDINGS__AUTH__PUBLIC_KEY_FILE",
                            "is required for RS256 and ES256",
                        ))
                    }
                };
                let private = settings
                    .private_key_file
                    .as_ref()
                    .map(std::fs::read)
                    .transpose()
                    .map_err(|e| key_err("TIDINGS__AUTH__PRIVATE_KEY_FILE", &e))?;
                if alg == JwtAlgorithm::RS256 {
                    (
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(pem.as_bytes())
                            .map_err(|e| key_err("TIDINGS__AUTH__PUBLIC_KEY_FILE", &e))?,
                        private
                            .map(|p| EncodingKey::from_rsa_pem(&p))
                            .transpose()
                            .map_err(|e| key_err("TIDINGS__AUTH__PRIVATE_KEY_FILE", &e))?,
                    )
                } else {
                    (
                        Algorithm::ES256,
                        DecodingKey::from_ec_pem(pem.as_bytes())
                            .map_err(|e| key_err("TIDINGS__AUTH__PUBLIC_KEY_FILE", &e))?,
                        private
                            .map(|p| EncodingKey::from_ec_pem(&p))
                            .transpose()
                            .map_err(|e| key_err("TIDINGS__AUTH__PRIVATE_KEY_FILE", &e))?,
                    )
                }
            }
        };
        // Only the configured algorithm is accepted: this is what stops alg-confusion attacks
        // (an HS256 token signed with the RSA public key) and `alg: none`.
        let mut validation = Validation::new(algorithm);
        // A configured issuer or audience is required, not only checked when present:
        // otherwise a token that simply leaves the claim out (one minted for another
        // deployment that shares the key, say) would pass.
        let mut required = vec!["exp", "sub"];
        if settings.issuer.is_some() {
            required.push("iss");
        }
        if settings.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        // One leeway for both ends of the validity window, `exp` and `nbf`.
        validation.leeway = settings.leeway_seconds;
        validation.validate_nbf = true;
        // RFC 7519: a token is expired *at* `exp`, not one second after it. Streams close at
        // `exp`, so accepting it for that second would open a stream only to end it at once.
        validation.reject_tokens_expiring_in_less_than = 1;
        match &settings.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            algorithm,
            decoding,
            encoding,
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            provider: oidc::Provider::new(settings).map(Arc::new),
        })
    }

    /// The OpenID Connect provider, when one is configured: its key set's owner task is
    /// started by the server (`oidc::run`), not here, so `tidings token` fetches nothing.
    pub fn provider(&self) -> Option<&Arc<oidc::Provider>> {
        self.provider.as_ref()
    }

    /// Whether every kind of token can be checked: false until the provider's first key set
    /// has loaded.
    pub fn ready(&self) -> bool {
        self.provider.as_ref().is_none_or(|p| p.ready())
    }

    /// Who a token speaks for. The one check every face makes; it waits only when the token
    /// names a signing key the provider's cached set lacks (a rotation), for one re-fetch.
    pub async fn authenticate(&self, token: &str) -> Result<Verified, AuthError> {
        // Twice at most: the fetch we waited for may have been one that started before the
        // rotation, with the re-fetch queued behind it.
        for _ in 0..2 {
            match self.check(token) {
                oidc::Check::Done(result) => return result,
                oidc::Check::Wait(wait) => wait.finished().await,
            }
        }
        self.verify(token)
    }

    /// [`Authenticator::authenticate`] for a caller that cannot wait: a token naming a key
    /// being re-fetched gets [`AuthError::Unavailable`] (503, try again in a second).
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        match self.check(token) {
            oidc::Check::Done(result) => result,
            oidc::Check::Wait(_) => Err(AuthError::Unavailable(KEYS_REFRESHING)),
        }
    }

    /// The check without waiting: the provider's when the token is its, else the local key's.
    pub fn check(&self, token: &str) -> oidc::Check {
        if let Some(provider) = &self.provider {
            if let Ok(header) = jsonwebtoken::decode_header(token) {
                let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssuerOnly>(token)
                    .ok()
                    .and_then(|c| c.iss);
                if provider.owns(&header, iss.as_deref()) {
                    return provider.check(token, &header);
                }
            }
        }
        oidc::Check::Done(self.verify_local(token))
    }

    fn verify_local(&self, token: &str) -> Result<Verified, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| jwt_error(&e))?;
        let claims = data.claims;
        let is_service = claims
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|scope| scope == PUBLISH_SCOPE));
        let principal = if is_service {
            Principal::Service(
                ServiceName::parse(&claims.sub)
                    .map_err(|m| {
                        AuthError::Invalid(format!("the `sub` claim (the service name) {m}"))
                    })?
                    .into_string(),
            )
        } else {
            Principal::User(
                UserId::parse(&claims.sub)
                    .map_err(|m| AuthError::Invalid(format!("the `sub` claim {m}")))?,
            )
        };
        Ok(Verified {
            principal,
            expires_at: claims.exp,
            scopes: claims
                .scope
                .as_deref()
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    pub fn mint_user(&self, user: &str, ttl: Duration) -> Result<String, MintError> {
        let user = UserId::parse(user).map_err(MintError::Subject)?;
        self.mint(user.as_str(), None, ttl)
    }

    pub fn mint_service(&self, service: &str, ttl: Duration) -> Result<String, MintError> {
        let service = ServiceName::parse(service).map_err(MintError::Subject)?;
        self.mint(service.as_str(), Some(PUBLISH_SCOPE), ttl)
    }

    fn mint(&self, sub: &str, scope: Option<&str>, ttl: Duration) -> Result<String, MintError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or(MintError::NoPrivateKey(match self.algorithm {
                Algorithm::ES256 => JwtAlgorithm::ES256,
                _ => JwtAlgorithm::RS256,
            }))?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iat: Some(now),
            scope: scope.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(self.algorithm),
            &claims,
            key,
        )?)
    }
}

/// Parses a TTL such as `90s`, `15m`, `1h`, `30d`, or a bare number of seconds.
/// The token in a `Bearer <token>` credential, as every face carries it (the HTTP
/// `Authorization` header, gRPC's `authorization` metadata). `source` names where it came
/// from, for the error.
pub fn bearer_token<'v>(value: &'v str, source: &str) -> Result<&'v str, AuthError> {
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Invalid(format!(
            "{source} must be `Bearer <token>`"
        ))),
    }
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 15m, 1h or 30d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?}; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{Profile, Settings};

    fn hs256() -> Authenticator {
        let settings = Settings::defaults(Profile::Local).unwrap();
        Authenticator::new(&settings.auth, Some(&SecretString::from("x".repeat(32)))).unwrap()
    }

    #[test]
    fn user_and_service_tokens_are_told_apart() {
        let a = hs256();
        let user = a.mint_user("alice", Duration::from_secs(60)).unwrap();
        let service = a.mint_service("billing", Duration::from_secs(60)).unwrap();
        assert_eq!(
            a.verify(&user).unwrap().principal,
            Principal::User(UserId::parse("alice").unwrap())
        );
        assert_eq!(
            a.verify(&service).unwrap().principal,
            Principal::Service("billing".into())
        );
    }

    #[test]
    fn rejects_another_secret_and_alg_none() {
        let a = hs256();
        let settings = Settings::defaults(Profile::Local).unwrap();
        let other =
            Authenticator::new(&settings.auth, Some(&SecretString::from("y".repeat(32)))).unwrap();
        let token = other.mint_user("alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(a.verify(&token), Err(AuthError::Invalid(_))));
        // {"alg":"none"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(a.verify(none), Err(AuthError::Invalid(_))));
    }

    fn with_keys(alg: JwtAlgorithm, name: &str) -> Authenticator {
        let mut settings = Settings::defaults(Profile::Local).unwrap().auth;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        settings.algorithm = alg;
        settings.public_key_file = Some(format!("{dir}/{name}-public.pem").into());
        settings.private_key_file = Some(format!("{dir}/{name}-private.pem").into());
        Authenticator::new(&settings, None).unwrap()
    }

    #[test]
    fn rs256_and_es256_with_pem_keys() {
        for (alg, name) in [
            (JwtAlgorithm::RS256, "rs256"),
            (JwtAlgorithm::ES256, "es256"),
        ] {
            let a = with_keys(alg, name);
            let token = a.mint_user("alice", Duration::from_secs(60)).unwrap();
            assert_eq!(
                a.verify(&token).unwrap().principal,
                Principal::User(UserId::parse("alice").unwrap()),
                "{name}"
            );
        }
        // An HS256 token is refused by an RS256 server, even one signed with the public key
        // as the HMAC secret (the classic algorithm-confusion attack).
        let rs = with_keys(JwtAlgorithm::RS256, "rs256");
        let public = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rs256-public.pem"
        ))
        .unwrap();
        let settings = Settings::defaults(Profile::Local).unwrap();
        let confused =
            Authenticator::new(&settings.auth, Some(&SecretString::from(public))).unwrap();
        let token = confused
            .mint_user("alice", Duration::from_secs(60))
            .unwrap();
        assert!(matches!(rs.verify(&token), Err(AuthError::Invalid(_))));
        // And an ES256 token on the RS256 server.
        let es = with_keys(JwtAlgorithm::ES256, "es256");
        let token = es.mint_user("alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(rs.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
