//! Tokens from a real OpenID Connect provider: node-oidc-provider (a certified
//! implementation), started per test by `tests/oidc/harness.mjs` on a free loopback port.
//! Service tokens come from its client-credentials grant; user access tokens are minted by the
//! harness with the provider's own signing keys (the shape a user flow would issue). Every
//! face takes them; the key set rotates, survives the provider going down, and waits for a
//! provider that is not up yet; forged and foreign tokens get 401, never 500.

use crate::helpers::{sample, spawn_app_with, user_token, Backend, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings_test_support::live::{eventually, metric, scrape, SseClient, WsClient, WAIT};
use tokio::time::{timeout, Instant};

const AUDIENCE: &str = "tidings";

/// The provider, as a child process; killed when dropped.
struct Idp {
    issuer: String,
    port: u16,
    child: Child,
    client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Idp {
    async fn start() -> Idp {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Idp {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir).join("node_modules").exists(),
            "the provider harness is not installed: run `npm ci` in tests/oidc"
        );
        let mut child = Command::new("node")
            .arg("harness.mjs")
            .arg(port.to_string())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node tests/oidc/harness.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let line = timeout(
            WAIT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                line
            }),
        )
        .await
        .expect("the provider starts within WAIT")
        .expect("join");
        assert!(line.contains("\"ready\":true"), "provider said {line:?}");
        Idp {
            issuer: format!("http://127.0.0.1:{port}"),
            port,
            child,
            client: reqwest::Client::new(),
        }
    }

    /// The `billing` client's access token, from the client-credentials grant.
    async fn service_token(&self) -> String {
        let resp: Value = self
            .client
            .post(format!("{}/token", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=billing&client_secret=billing-secret&scope=notifications%3Apublish")
            .send()
            .await
            .expect("token endpoint")
            .json()
            .await
            .expect("token response");
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {resp}"))
            .to_owned()
    }

    /// A user access token signed with the provider's current key, with these claims over
    /// `iss`, `aud`, `iat` and `exp`; `extra` sets the harness's `key`, `kid` or `ttl`.
    async fn token_with(&self, claims: Value, extra: Value) -> String {
        let mut body = json!({ "claims": claims });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let resp: Value = self.test_post("token", body).await;
        resp["token"].as_str().expect("token").to_owned()
    }

    async fn user_token(&self, user: &str) -> String {
        self.token_with(json!({ "sub": user }), json!({})).await
    }

    async fn test_post(&self, route: &str, body: Value) -> Value {
        self.client
            .post(format!("{}/_test/{route}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect("harness route")
            .json()
            .await
            .expect("harness answer")
    }

    async fn state(&self) -> Value {
        self.client
            .get(format!("{}/_test/state", self.issuer))
            .send()
            .await
            .expect("harness state")
            .json()
            .await
            .expect("harness state body")
    }

    async fn fetches(&self) -> u64 {
        self.state().await["fetches"].as_u64().expect("fetches")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server that takes this provider's tokens beside its local key's.
async fn app_for(
    b: Backend,
    issuer: &str,
    customize: impl FnOnce(&mut tidings::configuration::Settings),
) -> TestApp {
    let issuer = issuer.to_owned();
    spawn_app_with(b, move |s| {
        s.auth.oidc.issuer = Some(issuer);
        customize(s);
    })
    .await
}

async fn readyz(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .status()
        .as_u16()
}

async fn wait_ready(app: &TestApp) {
    eventually(WAIT, "/readyz says ready", || async {
        (readyz(app).await == 200).then_some(())
    })
    .await;
}

async fn publish_as(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/v1/notifications"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("publish");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The status, `WWW-Authenticate` and problem detail of an inbox read with `token`.
async fn inbox(app: &TestApp, token: &str) -> (u16, Option<String>, Value) {
    let resp = app
        .client
        .get(app.url("/v1/notifications"))
        .bearer_auth(token)
        .send()
        .await
        .expect("inbox");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (status, www, resp.json().await.unwrap_or(Value::Null))
}

/// Subscribes over STOMP (live only, as STOMP's default), publishes with `service` once
/// subscribed, and returns the seq of the notification that arrives.
async fn stomp_next_notification(app: &TestApp, token: &str, service: &str) -> i64 {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("{}/v1/stomp", app.address.replace("http://", "ws://"));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v12.stomp"),
    );
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within WAIT")
        .expect("handshake");
    for frame in [
        format!(
            "CONNECT\naccept-version:1.2\nhost:tidings\nheart-beat:0,0\npasscode:{token}\n\n\0"
        ),
        "SUBSCRIBE\nid:feed\ndestination:/user/queue/notifications\nreceipt:subscribed\n\n\0"
            .into(),
    ] {
        ws.send(Message::text(frame)).await.expect("send");
    }
    let mut connected = false;
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("a STOMP frame within WAIT")
            .expect("socket open")
            .expect("socket frame");
        let Message::Text(text) = msg else { continue };
        let text = text.as_str().trim_start_matches('\n');
        let head = text.split("\n\n").next().unwrap_or_default();
        let mut lines = head.lines();
        match lines.next() {
            Some("CONNECTED") => connected = true,
            Some("RECEIPT") => {
                let (status, body) = publish_as(app, service, &sample(&["alice"])).await;
                assert_eq!(status, 201, "{body}");
            }
            Some("MESSAGE") => {
                let mut seq = None;
                let mut kind = None;
                for (k, v) in lines.filter_map(|l| l.split_once(':')) {
                    match k {
                        "x-tidings-seq" => seq = v.parse::<i64>().ok(),
                        "x-tidings-event" => kind = Some(v.to_owned()),
                        _ => {}
                    }
                }
                if kind.as_deref() == Some("notification") {
                    assert!(connected);
                    return seq.expect("x-tidings-seq");
                }
            }
            other => panic!("unexpected STOMP frame {other:?}: {text}"),
        }
    }
}

async fn grpc_first_notification(app: &TestApp, token: &str) -> i64 {
    let mut client = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect to the gRPC listener");
    let mut req = tonic::Request::new(proto::SubscribeRequest { after: Some(0) });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let mut stream = client.subscribe(req).await.expect("subscribe").into_inner();
    loop {
        let event = timeout(WAIT, stream.message())
            .await
            .expect("an event within WAIT")
            .expect("stream ok")
            .expect("stream open");
        if let Some(event::Event::Notification(n)) = event.event {
            return n.seq;
        }
    }
}

/// The provider's service token publishes; its users' tokens read the inbox and open SSE,
/// WebSocket, STOMP and gRPC streams; another user's token sees nothing of it; the local
/// key's tokens keep working beside the provider's.
async fn provider_tokens_work_on_every_face(b: Backend) {
    let idp = Idp::start().await;
    let app = app_for(b, &idp.issuer, |_| {}).await;
    wait_ready(&app).await;

    let service = idp.service_token().await;
    let (status, receipt) = publish_as(&app, &service, &sample(&["alice"])).await;
    assert_eq!(status, 201, "{receipt}");

    let alice = idp.user_token("alice").await;
    let (status, _, page) = inbox(&app, &alice).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["notifications"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    assert_eq!(
        page["notifications"][0]["id"],
        receipt["notifications"][0]["id"]
    );

    let mut sse = SseClient::open(&app.address, &alice, Some(0)).await;
    assert_eq!(sse.next_notification().await.0, 1);
    drop(sse);
    let mut ws = WsClient::open(&app.address, &alice, Some(0)).await;
    assert_eq!(ws.next_notification().await.0, 1);
    ws.close().await;
    assert_eq!(stomp_next_notification(&app, &alice, &service).await, 2);
    assert_eq!(grpc_first_notification(&app, &alice).await, 1);

    let bob = idp.user_token("bob").await;
    let (status, _, page) = inbox(&app, &bob).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["notifications"],
        json!([]),
        "bob sees nothing of alice's"
    );

    // The service token cannot read, the user token cannot publish.
    assert_eq!(inbox(&app, &service).await.0, 403);
    assert_eq!(publish_as(&app, &alice, &sample(&["alice"])).await.0, 403);
    // A local token (no provider `iss`) is checked against the local key, as before.
    let (status, page) = app.get(&user_token("alice"), "/v1/notifications").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["notifications"].as_array().map(Vec::len), Some(2));
}

/// Claims as providers write them: `preferred_username` as the user, `scp` as an array, and
/// a user claim that breaks the user id rules refused with a message that says so.
async fn provider_claims_as_configured(b: Backend) {
    let idp = Idp::start().await;
    let app = app_for(b, &idp.issuer, |s| {
        s.auth.user_claim = "preferred_username".into();
        s.auth.audience = Some(AUDIENCE.into());
    })
    .await;
    wait_ready(&app).await;
    // Okta and Entra: `scp` as an array, the service named by `azp`.
    let okta_service = idp
        .token_with(
            json!({"sub": "0oa1b2c3", "azp": "crm", "scp": ["openid", "notifications:publish"]}),
            json!({}),
        )
        .await;
    let (status, body) = publish_as(&app, &okta_service, &sample(&["alice"])).await;
    assert_eq!(status, 201, "{body}");
    let alice = idp
        .token_with(
            json!({"sub": "f47ac10b-58cc", "preferred_username": "alice", "scp": ["openid"]}),
            json!({}),
        )
        .await;
    let (status, _, page) = inbox(&app, &alice).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["notifications"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );

    let bad = idp
        .token_with(
            json!({"sub": "x", "preferred_username": "alice smith/../admin"}),
            json!({}),
        )
        .await;
    let (status, www, problem) = inbox(&app, &bad).await;
    assert_eq!(status, 401, "{problem}");
    assert!(www.is_some_and(|w| w.contains("invalid_token")));
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`preferred_username` claim (the user id)"),
        "{detail}"
    );
    let missing = idp.token_with(json!({"sub": "x"}), json!({})).await;
    let (status, _, problem) = inbox(&app, &missing).await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`preferred_username` claim (the user id) is missing"),
        "{problem}"
    );
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Forged and foreign tokens: each a 401 with `WWW-Authenticate`, never a 500.
async fn provider_refusals_are_401(b: Backend) {
    let idp = Idp::start().await;
    let app = app_for(b, &idp.issuer, |s| s.auth.audience = Some(AUDIENCE.into())).await;
    wait_ready(&app).await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": "alice", "exp": now + 300});
    let kid = idp.state().await["kids"][0]
        .as_str()
        .expect("kid")
        .to_owned();

    // alg none, naming the provider's key.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    // HS256 with the provider's public key (its JWKS entry) as the HMAC secret.
    let jwks: Value = idp
        .client
        .get(format!("{}/jwks", idp.issuer))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks body");
    let public = jwks["keys"][0].to_string();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.clone());
    let confused = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .expect("sign");
    let confused_n = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            jwks["keys"][0]["n"].as_str().unwrap_or_default().as_bytes(),
        ),
    )
    .expect("sign");

    let cases = [
        ("alg none", none),
        ("HS256 with the public key", confused),
        ("HS256 with the modulus", confused_n),
        (
            "wrong iss",
            idp.token_with(
                json!({"sub": "alice", "iss": format!("{}/other", idp.issuer)}),
                json!({}),
            )
            .await,
        ),
        (
            "wrong aud",
            idp.token_with(json!({"sub": "alice", "aud": "someone-else"}), json!({}))
                .await,
        ),
        (
            "expired",
            idp.token_with(json!({"sub": "alice", "exp": now - 10}), json!({}))
                .await,
        ),
        (
            "another provider's key, its own kid",
            idp.token_with(json!({"sub": "alice"}), json!({"key": "foreign"}))
                .await,
        ),
        (
            "another provider's key, this provider's kid",
            idp.token_with(
                json!({"sub": "alice"}),
                json!({"key": "foreign", "kid": kid}),
            )
            .await,
        ),
    ];
    for (what, token) in cases {
        let (status, www, problem) = inbox(&app, &token).await;
        assert_eq!(status, 401, "{what}: {problem}");
        assert!(
            www.as_deref().is_some_and(|w| w.starts_with("Bearer")),
            "{what}: no WWW-Authenticate"
        );
    }
    // And the genuine article still works.
    assert_eq!(inbox(&app, &idp.user_token("alice").await).await.0, 200);
}

/// Rotation: a token signed with a new `kid` works at once (the unknown-`kid` re-fetch), a
/// token signed with a key removed from the JWKS stops working after the next refresh.
async fn provider_key_rotation(b: Backend) {
    let idp = Idp::start().await;
    // The refresh interval follows the JWKS's Cache-Control, within the bounds; the test
    // lowers the lower bound so that "after the next refresh" is seconds away.
    idp.test_post("cache-control", json!({"value": "max-age=3600"}))
        .await;
    let app = app_for(b, &idp.issuer, |s| s.auth.oidc.min_refresh_seconds = 1).await;
    wait_ready(&app).await;
    let old = idp.service_token().await;
    assert_eq!(publish_as(&app, &old, &sample(&["alice"])).await.0, 201);
    let before = idp.fetches().await;

    // New key first: the provider now signs with it; the old one is still listed.
    idp.test_post("cache-control", json!({"value": "max-age=1"}))
        .await;
    let new_kid = idp.test_post("rotate", json!({})).await["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let new = idp.service_token().await;
    let header = jsonwebtoken::decode_header(&new).expect("header");
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    // The first request naming the new kid is a service's settings page: it waits for the
    // re-fetch like every other face (it once answered 503 "try again").
    let writer = idp
        .token_with(
            json!({"sub": "settings", "scope": "preferences:write"}),
            json!({}),
        )
        .await;
    let resp = app
        .client
        .get(app.url("/v1/users/bob/preferences"))
        .bearer_auth(&writer)
        .send()
        .await
        .expect("preferences");
    assert_eq!(resp.status().as_u16(), 200, "the new kid at once");
    let (status, body) = publish_as(&app, &new, &sample(&["alice"])).await;
    assert_eq!(status, 201, "the new kid at once: {body}");
    assert_eq!(
        idp.fetches().await,
        before + 1,
        "one re-fetch for the new kid"
    );
    assert_eq!(publish_as(&app, &old, &sample(&["alice"])).await.0, 201);

    // The old key removed: after the next refresh (max-age=1) its tokens stop working.
    idp.test_post("retire", json!({})).await;
    eventually(WAIT, "the retired key's token is refused", || async {
        let (status, _) = publish_as(&app, &old, &sample(&["alice"])).await;
        (status == 401).then_some(())
    })
    .await;
    assert_eq!(publish_as(&app, &new, &sample(&["alice"])).await.0, 201);
}

/// A flood of tokens naming made-up `kid`s: at most one JWKS fetch per 30 s.
async fn provider_unknown_kid_flood_is_rate_limited(b: Backend) {
    let idp = Idp::start().await;
    let app = app_for(b, &idp.issuer, |_| {}).await;
    wait_ready(&app).await;
    let started = Instant::now();
    let before = idp.fetches().await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(
            idp.token_with(
                json!({"sub": "alice"}),
                json!({"kid": format!("made-up-{i}")}),
            )
            .await,
        );
    }
    // 1,000 requests, 50 at a time, cycling through the made-up kids.
    let results = futures::stream::iter(0..1000)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            let app = &app;
            async move { inbox(app, &token).await.0 }
        })
        .buffer_unordered(50)
        .collect::<Vec<u16>>()
        .await;
    let refused = results.iter().filter(|s| **s == 401).count();
    assert_eq!(refused, results.len(), "every made-up kid refused with 401");
    let fetched = idp.fetches().await - before;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "the flood took {elapsed:?}"
    );
    assert!(fetched <= 1, "{fetched} JWKS fetches in {elapsed:?}");
    // The provider's real tokens still work.
    assert_eq!(inbox(&app, &idp.user_token("alice").await).await.0, 200);
}

/// The provider down: the cached keys keep working, and the failed refreshes show in the
/// metrics.
async fn provider_down_cached_keys_keep_working(b: Backend) {
    let mut idp = Idp::start().await;
    idp.test_post("cache-control", json!({"value": "no-store"}))
        .await;
    let app = app_for(b, &idp.issuer, |s| s.auth.oidc.min_refresh_seconds = 1).await;
    wait_ready(&app).await;
    let alice = idp.user_token("alice").await;
    let service = idp.service_token().await;
    idp.stop();
    eventually(WAIT, "a failed refresh is counted", || async {
        let text = scrape(&app.client, &app.address).await;
        metric(&text, "tidings_oidc_jwks_fetch_failures_total", &[])
            .filter(|n| *n >= 1.0)
            .map(|_| ())
    })
    .await;
    assert_eq!(publish_as(&app, &service, &sample(&["alice"])).await.0, 201);
    assert_eq!(inbox(&app, &alice).await.0, 200);
    assert_eq!(readyz(&app).await, 200, "cached keys: still ready");
}

/// Started before the provider is up: its tokens get 503 (a problem document, not 401) and
/// `/readyz` fails; once the provider is up, 200 and ready.
async fn provider_not_up_yet_gives_503_then_200(b: Backend) {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let app = app_for(b, &issuer, |_| {}).await;
    // A token that names the provider as its issuer (its signature cannot be checked yet).
    let early = format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"RS256","kid":"k1"}"#),
        b64(
            json!({"iss": issuer, "sub": "alice", "exp": chrono::Utc::now().timestamp() + 300})
                .to_string()
                .as_bytes()
        )
    );
    let (status, _, problem) = inbox(&app, &early).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "urn:tidings:problem:unavailable");
    assert_eq!(readyz(&app).await, 503);
    // Local tokens are unaffected.
    assert_eq!(
        app.get(&user_token("alice"), "/v1/notifications").await.0,
        200
    );

    let idp = Idp::start_on(port).await;
    assert_eq!(idp.port, port);
    wait_ready(&app).await;
    let alice = idp.user_token("alice").await;
    assert_eq!(inbox(&app, &alice).await.0, 200);
}

crate::both_backends!(
    provider_tokens_work_on_every_face,
    provider_claims_as_configured,
);

/// The key-set behaviours touch no storage: SQLite only.
mod keys {
    use super::*;

    macro_rules! sqlite_only {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Backend::Sqlite).await
                }
            )*
        };
    }

    sqlite_only!(
        provider_refusals_are_401,
        provider_key_rotation,
        provider_unknown_kid_flood_is_rate_limited,
        provider_down_cached_keys_keep_working,
        provider_not_up_yet_gives_503_then_200,
    );
}
