//! A real push service on this machine (RFC 8030), for the Web Push tests.
//!
//! Plain HTTP/1.1 on 127.0.0.1 (keep-alive, `Content-Length` bodies: what an HTTP client
//! sends a push service). Every push is checked as a real push service and browser would:
//!
//! * the VAPID header (RFC 8292): `vapid t=<JWT>, k=<key>`; `k` must be the server's
//!   published key, the JWT ES256 and valid under it, `aud` the endpoint's origin (with
//!   the port), `exp` in the future and within 24 h, `sub` a `mailto:` or `https:` URL;
//! * the body (RFC 8291, `aes128gcm`) is decrypted with the subscription's private key and
//!   auth secret, generated here as a browser generates them.
//!
//! What arrives is recorded per subscription; what fails a check is recorded as a
//! violation (and answered 400/401), which the tests assert never happens. Each
//! subscription can be told to answer something else (410, 429 with `Retry-After`), and
//! the whole service can go down (its port refuses connections) and come back.
//!
//! The crypto is RustCrypto's primitives (p256 ECDH, HKDF-SHA256, AES-128-GCM) following
//! RFC 8291 §3.4 step by step, deliberately not the crate the server encrypts with.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A browser's side of one subscription: its key pair and auth secret.
pub struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        use rand_core::RngCore;
        let mut auth = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut auth);
        Self {
            secret: p256::SecretKey::random(&mut rand_core::OsRng),
            auth,
        }
    }

    fn public(&self) -> Vec<u8> {
        self.secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// RFC 8291 §3.4 and RFC 8188: one record, padding delimiter 2.
    fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.len() < 21 {
            return Err("body shorter than the aes128gcm header".into());
        }
        let salt = &body[..16];
        let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
        let idlen = body[20] as usize;
        if idlen != 65 || body.len() < 21 + idlen {
            return Err(format!("key id of {idlen} bytes, not a 65-byte P-256 key"));
        }
        let as_public = &body[21..21 + idlen];
        let ciphertext = &body[21 + idlen..];
        if ciphertext.len() > rs {
            return Err("more than one record".into());
        }
        let as_key = p256::PublicKey::from_sec1_bytes(as_public)
            .map_err(|_| "the sender's key is not on P-256".to_string())?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), as_key.as_affine());
        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(&self.public());
        key_info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), &shared.raw_secret_bytes()[..])
            .expand(&key_info, &mut ikm)
            .map_err(|e| e.to_string())?;
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .map_err(|e| e.to_string())?;
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .map_err(|e| e.to_string())?;
        let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
        let mut plain = cipher
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| "AES-GCM authentication failed".to_string())?;
        let end = plain
            .iter()
            .rposition(|b| *b != 0)
            .ok_or("no padding delimiter")?;
        if plain[end] != 2 {
            return Err(format!(
                "padding delimiter {} instead of 2 (last record)",
                plain[end]
            ));
        }
        plain.truncate(end);
        Ok(plain)
    }
}

/// How a subscription's push resource answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Created,
    /// Gone (410) from now on.
    Gone,
    /// `429 Too Many Requests` with `Retry-After: secs`, for the next `times` pushes.
    TooMany {
        retry_after: u64,
        times: u32,
    },
    /// Takes every push (reads it whole) and never answers.
    Hang,
    /// Another status (such as 413) for the next `times` pushes.
    Refuse {
        status: u16,
        times: u32,
    },
}

/// One push as the browser gets it.
#[derive(Debug, Clone)]
pub struct Received {
    pub subscription: String,
    pub at: Instant,
    pub payload: Value,
    pub ttl: Option<String>,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The encrypted body's size.
    pub size: usize,
}

#[derive(Default)]
struct State {
    browsers: HashMap<String, Browser>,
    answers: HashMap<String, Answer>,
    received: Vec<Received>,
    /// Every request to a subscription, whatever the answer: (subscription, when, status).
    requests: Vec<(String, Instant, u16)>,
    violations: Vec<String>,
    server_key: Option<String>,
}

pub struct PushService {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Option<JoinSet<()>>,
}

impl PushService {
    pub async fn start() -> PushService {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut s = PushService {
            port,
            state: Arc::new(Mutex::new(State::default())),
            server: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let state = self.state.clone();
        let port = self.port;
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                conns.spawn(async move {
                    let _ = connection(stream, state, port).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        self.server = Some(set);
    }

    /// Stops answering: the port refuses connections and open ones are closed.
    pub async fn down(&mut self) {
        if let Some(mut set) = self.server.take() {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }

    /// Serves again on the same port.
    pub async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind the push service's port");
        self.serve(listener);
    }

    /// The server's VAPID public key, which every push must be signed with.
    pub fn expect_server_key(&self, key: &str) {
        self.state.lock().unwrap().server_key = Some(key.to_owned());
    }

    /// A new browser subscription: `(id, PushSubscription JSON)`.
    pub fn subscribe(&self) -> (String, Value) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let browser = Browser::new();
        let json = json!({
            "endpoint": format!("http://127.0.0.1:{}/push/{id}", self.port),
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(browser.public()),
                "auth": URL_SAFE_NO_PAD.encode(browser.auth),
            }
        });
        self.state
            .lock()
            .unwrap()
            .browsers
            .insert(id.clone(), browser);
        (id, json)
    }

    pub fn answer(&self, subscription: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(subscription.to_owned(), answer);
    }

    /// What the subscription received (decrypted), in arrival order.
    pub fn received(&self, subscription: &str) -> Vec<Received> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.subscription == subscription)
            .cloned()
            .collect()
    }

    pub fn all_received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Every request to the subscription: (when, status answered).
    pub fn requests(&self, subscription: &str) -> Vec<(Instant, u16)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.0 == subscription)
            .map(|r| (r.1, r.2))
            .collect()
    }

    /// Pushes that failed a check (VAPID, decryption, headers); must stay empty.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        if let Some(set) = &mut self.server {
            set.abort_all();
        }
    }
}

/// Serves one keep-alive connection.
async fn connection(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    port: u16,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > 64 * 1024 {
            return Ok(());
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let (status, extra) = handle(&state, port, &path, &headers, &body);
        if status == 0 {
            // Answer::Hang: the connection stays open, silent, until the client gives up.
            std::future::pending::<()>().await;
        }
        let reason = match status {
            201 => "Created",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            410 => "Gone",
            413 => "Content Too Large",
            429 => "Too Many Requests",
            _ => "Other",
        };
        let response = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n{extra}\r\n");
        w.write_all(response.as_bytes()).await?;
    }
}

fn handle(
    state: &Mutex<State>,
    port: u16,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, String) {
    let mut st = state.lock().unwrap();
    let Some(id) = path.strip_prefix("/push/").map(str::to_owned) else {
        return (404, String::new());
    };
    let answer = st.answers.get(&id).copied().unwrap_or(Answer::Created);
    let status = match answer {
        Answer::Created => 201,
        Answer::Gone => 410,
        Answer::Hang => {
            st.requests.push((id.clone(), Instant::now(), 0));
            return (0, String::new());
        }
        Answer::TooMany { retry_after, times } => {
            if times <= 1 {
                st.answers.remove(&id);
            } else {
                st.answers.insert(
                    id.clone(),
                    Answer::TooMany {
                        retry_after,
                        times: times - 1,
                    },
                );
            }
            st.requests.push((id.clone(), Instant::now(), 429));
            return (429, format!("Retry-After: {retry_after}\r\n"));
        }
        Answer::Refuse { status, times } => {
            if times <= 1 {
                st.answers.remove(&id);
            } else {
                st.answers.insert(
                    id.clone(),
                    Answer::Refuse {
                        status,
                        times: times - 1,
                    },
                );
            }
            st.requests.push((id.clone(), Instant::now(), status));
            return (status, String::new());
        }
    };
    st.requests.push((id.clone(), Instant::now(), status));
    if status != 201 {
        return (status, String::new());
    }
    let origin = format!("http://127.0.0.1:{port}");
    if let Err(v) = check_vapid(
        headers.get("authorization"),
        &origin,
        st.server_key.as_deref(),
    ) {
        st.violations.push(format!("{id}: {v}"));
        return (401, String::new());
    }
    if headers.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
        st.violations
            .push(format!("{id}: Content-Encoding is not aes128gcm"));
        return (400, String::new());
    }
    if body.len() > 4096 {
        st.violations
            .push(format!("{id}: body of {} bytes", body.len()));
        return (400, String::new());
    }
    let Some(browser) = st.browsers.get(&id) else {
        return (404, String::new());
    };
    let plain = match browser.decrypt(body) {
        Ok(p) => p,
        Err(e) => {
            st.violations.push(format!("{id}: {e}"));
            return (400, String::new());
        }
    };
    let payload: Value = match serde_json::from_slice(&plain) {
        Ok(v) => v,
        Err(e) => {
            st.violations
                .push(format!("{id}: payload is not JSON: {e}"));
            return (400, String::new());
        }
    };
    let topic = headers.get("topic").cloned();
    if let Some(t) = &topic {
        if t.len() > 32
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            st.violations.push(format!(
                "{id}: Topic {t:?} is not ≤ 32 base64url characters"
            ));
        }
    }
    st.received.push(Received {
        subscription: id,
        at: Instant::now(),
        payload,
        ttl: headers.get("ttl").cloned(),
        urgency: headers.get("urgency").cloned(),
        topic,
        size: body.len(),
    });
    (201, String::new())
}

#[derive(serde::Deserialize)]
struct VapidClaims {
    aud: String,
    exp: u64,
    sub: String,
}

fn check_vapid(
    header: Option<&String>,
    origin: &str,
    expected_key: Option<&str>,
) -> Result<(), String> {
    let h = header.ok_or("no Authorization header")?;
    let rest = h
        .strip_prefix("vapid ")
        .ok_or("Authorization is not `vapid`")?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    if let Some(expected) = expected_key {
        if k != expected {
            return Err("k= is not the server's published key".into());
        }
    }
    let raw = URL_SAFE_NO_PAD
        .decode(k)
        .map_err(|_| "k= is not base64url")?;
    if raw.len() != 65 || raw[0] != 4 {
        return Err("k= is not an uncompressed P-256 key".into());
    }
    let x = URL_SAFE_NO_PAD.encode(&raw[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&raw[33..]);
    let key = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[origin]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<VapidClaims>(t, &key, &v).map_err(|e| format!("JWT: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if data.claims.exp > now + 24 * 3600 {
        return Err("exp is more than 24 h ahead".into());
    }
    if data.claims.aud != origin {
        return Err(format!("aud {} is not {origin}", data.claims.aud));
    }
    if !(data.claims.sub.starts_with("mailto:") || data.claims.sub.starts_with("https:")) {
        return Err(format!("sub {} is not mailto: or https:", data.claims.sub));
    }
    Ok(())
}

/// Waits, polling, until `check` holds.
pub async fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
