//! Tokens from an OpenID Connect provider: its JWKS, cached and rotated, and its claims as
//! the provider writes them.
//!
//! The hot path is synchronous: a token whose `kid` is in the cached key set is checked
//! with no await and no lock held across anything slow (one read lock to clone an `Arc`).
//! Only a token naming an unknown `kid` may wait, for one re-fetch of the JWKS, and such
//! re-fetches are spaced (30 s by default) so that made-up `kid`s cannot make us hammer the
//! provider. The key set has one owner task ([`run`]) that fetches it at start, refreshes
//! it as its `Cache-Control` says (bounded), and re-fetches when nudged. While the provider
//! is unreachable the cached keys keep working; until the first set has loaded, a provider
//! token gets [`AuthError::Unavailable`] (503: the token may well be fine).

use super::{jwt_error, AuthError, Principal, Verified};
use crate::configuration::AuthSettings;
use crate::domain::{ServiceName, UserId};
use crate::metrics::OidcMetrics;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A discovery document or JWKS larger than this is refused: real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between retries while the provider cannot be reached.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a token naming an unknown `kid` waits for the re-fetch it asked for.
const REFETCH_WAIT: Duration = Duration::from_secs(12);

/// The algorithms a provider token may use. No `none`, and no HMAC: a provider's keys are
/// public, so an HMAC "signed" with one proves nothing (the algorithm-confusion attack).
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

const NOT_LOADED: &str =
    "the identity provider's signing keys have not been loaded yet; try again shortly";

/// One verification key from the JWKS.
struct Key {
    kid: Option<String>,
    /// The algorithms this key verifies: its `alg` if the JWKS names one, else every
    /// accepted algorithm of its type and curve.
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// The keys of a JWKS document we can verify with; the others (encryption keys, HMAC
    /// keys, unknown types) are skipped, with the reason in the log.
    fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid: {e}"))?;
        let mut keys = Vec::new();
        for raw in doc.keys {
            match Self::key(raw) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::debug!(%why, "skipping a JWKS key"),
            }
        }
        Ok(Self { keys })
    }

    fn key(raw: Value) -> Result<Key, String> {
        let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable: {e}"))?;
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("not a signing key".into());
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err("an unsupported curve".into()),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            _ => return Err("not an RSA, EC or Ed25519 public key".into()),
        };
        let algorithms = match jwk.common.key_algorithm {
            None => family,
            Some(alg) => {
                let alg = key_algorithm(alg).ok_or("an algorithm we do not accept")?;
                if !family.contains(&alg) {
                    return Err("its `alg` does not fit its key type".into());
                }
                vec![alg]
            }
        };
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable: {e}"))?;
        Ok(Key {
            kid: jwk.common.key_id,
            algorithms,
            decoding,
        })
    }

    fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            // A token without a `kid` is only unambiguous against a one-key set.
            None => match self.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// How a provider token's claims become a [`Principal`].
#[derive(Debug, Clone)]
pub struct ClaimRules {
    user_claim: String,
    scope_claims: Vec<String>,
    publish_scope: String,
}

impl ClaimRules {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            user_claim: settings.user_claim.trim().to_owned(),
            scope_claims: settings
                .scope_claims
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            publish_scope: settings.publish_scope.trim().to_owned(),
        }
    }

    /// Every scope the token carries, from each configured scope claim: `scope` is
    /// space-separated (RFC 8693 §4.2); Okta and Entra also write `scp` that way, or as an
    /// array (Entra's `roles` too).
    pub fn scopes<'c>(&'c self, claims: &'c Map<String, Value>) -> impl Iterator<Item = &'c str> {
        self.scope_claims
            .iter()
            .filter_map(move |path| lookup(claims, path))
            .flat_map(|value| -> Box<dyn Iterator<Item = &'c str> + 'c> {
                match value {
                    Value::String(s) => Box::new(s.split_whitespace()),
                    Value::Array(items) => Box::new(items.iter().filter_map(Value::as_str)),
                    _ => Box::new(std::iter::empty()),
                }
            })
    }

    /// A service is a token whose scopes include the publish scope; its name is its `azp`,
    /// `client_id` or `sub`, in that order (who the token was issued to, for a
    /// client-credentials token). Anything else is a user, named by the user claim.
    pub fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let is_service = self.scopes(claims).any(|s| s == self.publish_scope);
        if is_service {
            let (claim, name) = ["azp", "client_id", "sub"]
                .into_iter()
                .find_map(|c| claims.get(c).and_then(Value::as_str).map(|v| (c, v)))
                .ok_or_else(|| {
                    AuthError::Invalid(
                        "a service token needs an `azp`, `client_id` or `sub` claim to name the service"
                            .into(),
                    )
                })?;
            let name = ServiceName::parse(name).map_err(|m| {
                AuthError::Invalid(format!("the `{claim}` claim (the service name) {m}"))
            })?;
            return Ok(Principal::Service(name.into_string()));
        }
        let claim = &self.user_claim;
        let user = match lookup(claims, claim) {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(AuthError::Invalid(format!(
                    "the `{claim}` claim (the user id) must be a string"
                )))
            }
            None => {
                return Err(AuthError::Invalid(format!(
                    "the `{claim}` claim (the user id) is missing"
                )))
            }
        };
        let user = UserId::parse(user)
            .map_err(|m| AuthError::Invalid(format!("the `{claim}` claim (the user id) {m}")))?;
        Ok(Principal::User(user))
    }
}

/// A claim by name, or by a dotted path into objects (`realm_access.roles`). A claim whose
/// own name has a dot in it is found too: the whole name is tried first.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// What a token check came to without waiting: a result, or "wait for the key re-fetch
/// under way, then check again".
pub enum Check {
    Done(Result<Verified, AuthError>),
    Wait(KeyWait),
}

/// A wait for the JWKS fetch in flight to finish.
pub struct KeyWait(watch::Receiver<u64>);

impl KeyWait {
    /// Resolves when the fetch has finished (either way), or after a bound.
    pub async fn finished(mut self) {
        let _ = tokio::time::timeout(REFETCH_WAIT, self.0.changed()).await;
    }
}

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
enum Source {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(String),
    Jwks(String),
}

/// The provider: the cached key set and how tokens are checked against it.
pub struct Provider {
    /// Tokens whose `iss` is this are the provider's. `None` (a JWKS URL alone): tokens with
    /// a `kid` are.
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    rules: ClaimRules,
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    /// Set when an unknown-`kid` re-fetch is asked for, cleared when a fetch finishes.
    refetching: AtomicBool,
    last_refetch: Mutex<Option<Instant>>,
    refetch_every: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    nudge: mpsc::Sender<()>,
    nudged: Mutex<Option<mpsc::Receiver<()>>>,
    /// Counts finished fetches; a token waiting for a re-fetch watches it.
    fetched: watch::Sender<u64>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// `None` when no provider is configured.
    pub fn new(settings: &AuthSettings) -> Option<Self> {
        let oidc = &settings.oidc;
        let issuer = oidc.issuer.clone();
        let source = match (&oidc.jwks_url, &issuer) {
            (Some(url), _) => Source::Jwks(url.clone()),
            (None, Some(iss)) => Source::Discovery(iss.clone()),
            (None, None) => return None,
        };
        let (nudge, nudged) = mpsc::channel(1);
        Some(Self {
            issuer,
            audience: settings.audience.clone(),
            leeway: settings.leeway_seconds,
            rules: ClaimRules::new(settings),
            source,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            refetching: AtomicBool::new(false),
            last_refetch: Mutex::new(None),
            refetch_every: Duration::from_secs(oidc.unknown_kid_refetch_seconds),
            min_refresh: Duration::from_secs(oidc.min_refresh_seconds),
            max_refresh: Duration::from_secs(oidc.max_refresh_seconds),
            nudge,
            nudged: Mutex::new(Some(nudged)),
            fetched: watch::Sender::new(0),
        })
    }

    /// Whether the first key set has loaded (readiness).
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether this token is the provider's to check: its `iss` is the provider's, or (with
    /// a JWKS URL and no issuer) it names a `kid`.
    pub fn owns(&self, header: &Header, iss: Option<&str>) -> bool {
        match &self.issuer {
            Some(ours) => iss.is_some_and(|iss| same_issuer(iss, ours)),
            None => header.kid.is_some(),
        }
    }

    /// Checks a token this provider owns, without waiting.
    pub fn check(&self, token: &str, header: &Header) -> Check {
        let alg = header.alg;
        if !ACCEPTED.contains(&alg) {
            return Check::Done(Err(AuthError::Invalid(format!(
                "the token's algorithm {alg:?} is not accepted for the identity provider's tokens"
            ))));
        }
        if !self.ready() {
            return Check::Done(Err(AuthError::Unavailable(NOT_LOADED)));
        }
        let keys = match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(key) = keys.find(header.kid.as_deref()) else {
            return match &header.kid {
                Some(kid) => self.unknown_kid(kid),
                None => Check::Done(Err(AuthError::Invalid(
                    "the token names no signing key (`kid`)".into(),
                ))),
            };
        };
        if !key.algorithms.contains(&alg) {
            return Check::Done(Err(AuthError::Invalid(format!(
                "the token's algorithm {alg:?} does not match its signing key's"
            ))));
        }
        Check::Done(self.decode(token, alg, &key.decoding))
    }

    fn decode(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<Verified, AuthError> {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                required.push("iss");
                // Both spellings (with and without a trailing slash) are the same issuer.
                let bare = iss.trim_end_matches('/');
                validation.set_issuer(&[bare.to_owned(), format!("{bare}/")]);
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                required.push("aud");
                validation.set_audience(&[aud]);
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.reject_tokens_expiring_in_less_than = 1;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| jwt_error(&e))?;
        let claims = data.claims;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| AuthError::Invalid("the `exp` claim is malformed".into()))?;
        Ok(Verified {
            principal: self.rules.principal(&claims)?,
            expires_at,
            scopes: self.rules.scopes(&claims).map(str::to_owned).collect(),
        })
    }

    /// A `kid` not in the cached set: the provider may have rotated. Ask the owner for a
    /// re-fetch, unless one was asked for less than `refetch_every` ago; then wait for it.
    fn unknown_kid(&self, kid: &str) -> Check {
        // Subscribe before looking at the flag: a fetch that finishes after we saw it set
        // bumps the counter after this subscription, so the wait cannot miss it.
        let wait = KeyWait(self.fetched.subscribe());
        if self.refetching.load(Ordering::Acquire) {
            return Check::Wait(wait);
        }
        let mut last = match self.last_refetch.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|at| at.elapsed() < self.refetch_every) {
            return Check::Done(Err(AuthError::Invalid(format!(
                "the token's signing key `{kid}` is not one of the identity provider's keys"
            ))));
        }
        *last = Some(Instant::now());
        self.refetching.store(true, Ordering::Release);
        let _ = self.nudge.try_send(());
        Check::Wait(wait)
    }

    fn refresh_after(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.min_refresh)
            .clamp(self.min_refresh, self.max_refresh)
    }

    fn store(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.keys.write() {
            Ok(mut keys) => *keys = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        self.loaded.store(true, Ordering::Release);
    }
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{0}")]
    Document(String),
}

/// A GET of a JSON document of at most [`MAX_DOCUMENT_BYTES`], with its `max-age`.
async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let http = |source| FetchError::Http {
        url: url.to_owned(),
        source,
    };
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(http)?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
        });
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as 0 (then the
/// shortest refresh interval applies).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

async fn jwks_url(client: &reqwest::Client, issuer: &str) -> Result<String, FetchError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (body, _) = get(client, &url).await?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Document(format!("{url} is not a discovery document: {e}")))?;
    // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if !same_issuer(&doc.issuer, issuer) {
        return Err(FetchError::Document(format!(
            "{url} names the issuer {:?}, not {issuer:?}",
            doc.issuer
        )));
    }
    Ok(doc.jwks_uri)
}

/// The key set's owner: fetches it, refreshes it, re-fetches it when nudged, until
/// `stop`. Run once per provider (a second call returns at once).
pub async fn run(provider: Arc<Provider>, metrics: OidcMetrics, stop: CancellationToken) {
    let taken = match provider.nudged.lock() {
        Ok(mut n) => n.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some(mut nudged) = taken else { return };
    let client = match reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "could not build the HTTP client for the identity provider");
            return;
        }
    };
    let mut jwks: Option<String> = match &provider.source {
        Source::Jwks(url) => Some(url.clone()),
        Source::Discovery(_) => None,
    };
    let mut failures: u32 = 0;
    loop {
        let outcome = async {
            let url = match (&jwks, &provider.source) {
                (Some(url), _) => url.clone(),
                (None, Source::Discovery(issuer)) => {
                    let url = jwks_url(&client, issuer).await?;
                    jwks = Some(url.clone());
                    url
                }
                (None, Source::Jwks(url)) => url.clone(),
            };
            let (body, max_age) = get(&client, &url).await?;
            let set = KeySet::parse(&body).map_err(FetchError::Document)?;
            Ok::<_, FetchError>((set, max_age))
        }
        .await;
        let next = match outcome {
            Ok((set, max_age)) => {
                metrics.fetches.inc();
                metrics.stale.set(0);
                metrics.keys.set(set.keys.len() as i64);
                if failures > 0 || !provider.ready() {
                    tracing::info!(keys = set.keys.len(), "loaded the identity provider's keys");
                }
                if set.keys.is_empty() {
                    tracing::warn!("the identity provider's JWKS has no key we can verify with");
                }
                provider.store(set);
                failures = 0;
                provider.refresh_after(max_age)
            }
            Err(e) => {
                metrics.failures.inc();
                metrics.stale.set(1);
                failures = failures.saturating_add(1);
                tracing::warn!(
                    error = %crate::telemetry::Chain(&e),
                    cached = provider.ready(),
                    "could not fetch the identity provider's keys; the cached keys stay in use"
                );
                // Discovery is tried again next time: the provider may have moved its JWKS.
                if matches!(provider.source, Source::Discovery(_)) {
                    jwks = None;
                }
                retry_after(failures).min(provider.refresh_after(None))
            }
        };
        provider.refetching.store(false, Ordering::Release);
        provider.fetched.send_modify(|n| *n = n.wrapping_add(1));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next) => {}
            got = nudged.recv() => if got.is_none() { return },
        }
    }
}

/// 1 s, 2 s, 4 s … up to 30 s between tries while the provider cannot be reached.
fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::{Profile, Settings};
    use serde_json::json;

    fn rules(user: &str, scopes: &str) -> ClaimRules {
        let mut s = Settings::defaults(Profile::Local).unwrap().auth;
        s.user_claim = user.into();
        s.scope_claims = scopes.into();
        ClaimRules::new(&s)
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_from_a_string_an_array_or_roles() {
        let r = rules("sub", "scope,scp");
        let service = |v| r.principal(&claims(v)).unwrap();
        assert_eq!(
            service(json!({"scope": "openid notifications:publish", "azp": "billing", "sub": "x"})),
            Principal::Service("billing".into())
        );
        assert_eq!(
            service(json!({"scp": ["notifications:publish"], "client_id": "crm", "sub": "x"})),
            Principal::Service("crm".into())
        );
        assert_eq!(
            service(json!({"scp": "notifications:publish", "sub": "svc"})),
            Principal::Service("svc".into())
        );
        // `roles` counts only when configured.
        let app_role = json!({"roles": ["notifications:publish"], "sub": "alice"});
        assert!(matches!(service(app_role.clone()), Principal::User(_)));
        let r = rules("sub", "scope,scp,roles");
        assert_eq!(
            r.principal(&claims(app_role)).unwrap(),
            Principal::Service("alice".into())
        );
    }

    #[test]
    fn user_claim_by_name_or_nested_path() {
        let r = rules("preferred_username", "scope");
        assert_eq!(
            r.principal(&claims(
                json!({"preferred_username": "alice", "sub": "f00"})
            ))
            .unwrap(),
            Principal::User(UserId::parse("alice").unwrap())
        );
        let r = rules("ext.login", "realm_access.roles");
        assert_eq!(
            r.principal(&claims(json!({"ext": {"login": "bob"}})))
                .unwrap(),
            Principal::User(UserId::parse("bob").unwrap())
        );
        assert!(matches!(
            r.principal(&claims(
                json!({"realm_access": {"roles": ["notifications:publish"]}, "sub": "kc"})
            )),
            Ok(Principal::Service(_))
        ));
        let err = rules("email", "scope")
            .principal(&claims(json!({"sub": "x"})))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`email` claim (the user id) is missing"),
            "{err}"
        );
    }

    #[test]
    fn cache_control_and_refresh_bounds() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        let mut s = Settings::defaults(Profile::Local).unwrap().auth;
        s.oidc.issuer = Some("https://idp.example".into());
        let p = Provider::new(&s).unwrap();
        assert_eq!(p.refresh_after(None), Duration::from_secs(300));
        assert_eq!(
            p.refresh_after(Some(Duration::ZERO)),
            Duration::from_secs(300)
        );
        assert_eq!(
            p.refresh_after(Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            p.refresh_after(Some(Duration::from_secs(7 * 86_400))),
            Duration::from_secs(86_400)
        );
        assert_eq!(retry_after(1), Duration::from_secs(1));
        assert_eq!(retry_after(3), Duration::from_secs(4));
        assert_eq!(retry_after(40), Duration::from_secs(30));
    }

    #[test]
    fn jwks_keys_we_cannot_verify_with_are_skipped() {
        let set = KeySet::parse(
            br#"{"keys":[
                {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
                {"kty":"EC","crv":"P-256","kid":"ec","use":"sig",
                 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
                 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty":"EC","crv":"P-256","kid":"wrong-alg","alg":"RS256",
                 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty":"weird"}
            ]}"#,
        )
        .unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ec")]);
        assert_eq!(set.keys[0].algorithms, [Algorithm::ES256]);
    }
}
