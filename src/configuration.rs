//! Typed settings, layered like Spring profiles:
//!
//! 1. built-in defaults (the `local` profile: SQLite file, in-process bus, pretty logs);
//! 2. the profile's own defaults (`production`: JSON logs, no generated secret);
//! 3. an optional file: `$TIDINGS_CONFIG`, else `tidings.toml` and `tidings.<profile>.toml`
//!    in the working directory when they exist;
//! 4. `TIDINGS__SECTION__KEY` environment variables (a `.env` file is loaded into the
//!    environment first).
//!
//! The profile itself comes from `TIDINGS_PROFILE` (one underscore: it picks the layers, so
//! it cannot be one of them). Every value is checked before the server starts, and a bad one
//! stops it with a message that names the setting.

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Local,
    Production,
}

impl Profile {
    pub fn from_env() -> Result<Self, SettingsError> {
        match std::env::var("TIDINGS_PROFILE").as_deref() {
            Err(_) | Ok("") | Ok("local") => Ok(Profile::Local),
            Ok("production") | Ok("prod") => Ok(Profile::Production),
            Ok(other) => Err(SettingsError::invalid(
                "TIDINGS_PROFILE",
                format!("{other:?} is not a profile; use `local` or `production`"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Local => "local",
            Profile::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub grpc: GrpcSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub mqtt: MqttSettings,
    #[serde(default)]
    pub sockjs: SockJsSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub webpush: WebPushSettings,
    #[serde(default)]
    pub schedule: ScheduleSettings,
    #[serde(skip_deserializing, default = "default_profile")]
    pub profile: Profile,
}

fn default_profile() -> Profile {
    Profile::Local
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Address and port to listen on; port 0 picks a free one (tests).
    pub listen: String,
    /// Origins allowed to open a WebSocket or receive iframe events. Empty: same origin only.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Seconds between SSE `: ping` comments and WebSocket pings.
    pub heartbeat_seconds: u64,
    /// Open streams, sockets and waiting long-polls this replica accepts before answering 503.
    pub max_connections: usize,
    /// Of those, how many one user may hold (429 past it), so that one client cannot take
    /// them all. Far above what a browser needs: a tab leader holds one stream for all tabs,
    /// and even one stream per tab stays under it, beside a full STOMP session (one hub
    /// connection per subscription, up to 32).
    pub max_connections_per_user: usize,
    /// Events buffered per connection before a slow client is cut off.
    pub connection_queue: usize,
    /// How long a stopping replica waits for in-flight work before it exits.
    pub shutdown_grace_seconds: u64,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// A connection whose client stops reading (or acknowledging) for this long is closed
    /// by the kernel (TCP_USER_TIMEOUT), so a stalled client cannot hold buffers forever.
    pub stalled_client_seconds: u64,
    /// How long a request body may take to arrive once the head is in (408 after that).
    /// actix times out only the head, so a body trickled a byte at a time would otherwise
    /// hold the connection indefinitely.
    pub body_timeout_seconds: u64,
}

/// SockJS at `/v1/sockjs` (STOMP) and `/v1/sockjs-json` (the `/v1/ws` JSON protocol).
/// The defaults are Spring's and sockjs-node's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SockJsSettings {
    /// Serve the SockJS endpoints at all.
    pub enabled: bool,
    /// Seconds between `h` frames on an idle session (off once STOMP heart-beats are
    /// negotiated).
    pub heartbeat_seconds: u64,
    /// Seconds a session outlives its client's last request.
    pub disconnect_delay_seconds: u64,
    /// Bytes after which a streaming response ends and the client opens another.
    pub stream_bytes_limit: usize,
    /// Set a `JSESSIONID` cookie, for load balancers that stick sessions by it.
    pub jsessionid: bool,
    /// The sockjs-client script the iframe page loads; unset: the copy in the binary.
    pub client_url: Option<String>,
    /// Polling and streaming sessions per endpoint on this replica.
    pub max_sessions: usize,
}

impl Default for SockJsSettings {
    fn default() -> Self {
        SockJsSettings {
            enabled: true,
            heartbeat_seconds: 25,
            disconnect_delay_seconds: 5,
            stream_bytes_limit: 128 * 1024,
            jsessionid: false,
            client_url: None,
            max_sessions: 10_000,
        }
    }
}

/// Web Push (RFC 8030/8291/8292): pushes to browsers with no tab open. Off unless
/// `vapid_private_key` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebPushSettings {
    /// The VAPID key: a P-256 private key, PEM (PKCS#8 or SEC1) or base64url of its 32 raw
    /// bytes (`tidings vapid-keys` prints one). Unset: no Web Push, no push endpoints.
    pub vapid_private_key: Option<SecretString>,
    /// `mailto:` or `https:` contact the push services can reach the operator at.
    pub subject: Option<String>,
    /// Subscriptions one user may hold (phones, laptops, browser profiles).
    pub max_subscriptions_per_user: u32,
    /// The push service keeps an undelivered push this long (the `TTL` header); outbox
    /// rows older than this are dropped, since the push would expire anyway.
    pub ttl_seconds: u64,
    /// Accept `http:` and private, loopback and link-local endpoints. For tests with a
    /// local push service only: it lets a user make the server post to the internal network.
    pub allow_insecure_endpoints: bool,
    /// Pushes in flight at once, across subscriptions.
    pub concurrency: usize,
    /// Subscriptions per lease, and rows per subscription per lease.
    pub batch_subscriptions: u32,
    pub batch_per_subscription: u32,
    /// A push service that has not answered by then counts as a failure (retried).
    pub request_timeout_seconds: u64,
    /// How often a sender looks for rows committed by other replicas.
    pub poll_millis: u64,
}

impl Default for WebPushSettings {
    fn default() -> Self {
        WebPushSettings {
            vapid_private_key: None,
            subject: None,
            max_subscriptions_per_user: 20,
            ttl_seconds: 24 * 3600,
            allow_insecure_endpoints: false,
            concurrency: 64,
            batch_subscriptions: 256,
            batch_per_subscription: 16,
            request_timeout_seconds: 10,
            poll_millis: 500,
        }
    }
}

/// How long notifications are kept. Unset (the default) keeps every notification for ever:
/// the inbox is the source of truth, and how long a company keeps its users' history is the
/// company's decision (a legal hold, an audit trail, a product promise), not ours to guess.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Notifications older than this are pruned: whole seconds, or a number with a unit
    /// (`90d`, `12h`, `30m`, `45s`). Unset: no pruning by age.
    #[serde(deserialize_with = "duration_setting")]
    pub max_age: Option<std::time::Duration>,
    /// Each user keeps at most this many notifications, the newest. Unset: no cap.
    pub max_per_user: Option<u64>,
    /// Inbox rows pruned per transaction: each transaction is short, so it never holds up a
    /// publish for long.
    pub batch_size: u32,
    /// Seconds between pruning runs (a run goes on batch after batch until nothing is left).
    pub interval_seconds: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            max_age: None,
            max_per_user: None,
            batch_size: 1000,
            interval_seconds: 300,
        }
    }
}

impl RetentionSettings {
    /// Whether there is anything to prune at all.
    pub fn enabled(&self) -> bool {
        self.max_age.is_some() || self.max_per_user.is_some()
    }
}

/// Scheduled notifications (`deliver_at`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ScheduleSettings {
    /// A service may hold at most this many pending scheduled notifications; past it a
    /// schedule is refused with 429 until some are delivered or cancelled. Bounds the table.
    pub max_pending_per_service: u64,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            max_pending_per_service: crate::notifier::DEFAULT_MAX_PENDING_SCHEDULES,
        }
    }
}

/// A duration as configured: whole seconds (a number, or a string of digits), or digits
/// followed by `s`, `m`, `h` or `d`. Empty means unset.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90d, 12h, 30m or 3600"))?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn duration_setting<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Seconds(s)) => Ok(Some(std::time::Duration::from_secs(s))),
        Some(Raw::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(Raw::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://path` or `postgres://…`.
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// Unset: the in-process bus (one replica). A comma-separated list: a Redis Cluster's
    /// seed nodes (one node of a cluster is detected too).
    pub url: Option<SecretString>,
    /// The broadcast channel, and the prefix of each user's channel (`<channel>:u:<user>`);
    /// deployments (or tests) sharing one Redis use different ones.
    pub channel: String,
    /// How events travel between replicas.
    pub routing: Routing,
}

/// How events travel between replicas over Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// A channel per user, subscribed only by the replicas that hold the user: a replica's
    /// bus work follows its own connections, not the size of the cluster.
    User,
    /// One channel that every replica subscribes to and decodes, keeping the events of the
    /// users it holds: R replicas do R × E work. Kept to compare against (the scaling
    /// benchmark) and as a fallback while a deployment moves to per-user channels.
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GrpcSettings {
    /// The gRPC (and gRPC-Web) listener: `auto` (the HTTP address with the next port up,
    /// 8080 → 8081, and port 0 when the HTTP port is 0), `off`, or an address and port.
    /// A listener of its own because gRPC wants HTTP/2 end to end, which actix-web's
    /// HTTP/1 listener does not speak.
    pub listen: String,
    /// TCP connections the listener holds at once; past it a connection is closed at once.
    /// Its descriptors come out of the same open-file budget as the HTTP face's, so a
    /// flood on one listener cannot starve the other.
    pub max_connections: usize,
    /// A connection that has not sent its HTTP/2 preface (or HTTP/1 request) this long
    /// after it was accepted is closed.
    pub handshake_timeout_seconds: u64,
    /// A connection with no call open for this long is closed (dead peers are found sooner
    /// by HTTP/2 pings every `server.heartbeat_seconds`).
    pub idle_timeout_seconds: u64,
}

/// The MQTT bridge: every committed notification and unread-count change is published to
/// a broker from a transactional outbox. Off unless `url` is set.
#[derive(Debug, Clone, Deserialize)]
pub struct MqttSettings {
    /// `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS). Unset: no bridge, no outbox.
    pub url: Option<SecretString>,
    /// Topics are `{prefix}/users/{user}/notifications` and `{prefix}/users/{user}/unread`.
    pub topic_prefix: String,
    /// The MQTT client id. Unset: `tidings-` and a random suffix, so replicas never share
    /// one (a broker disconnects the older of two sessions with the same id).
    pub client_id: Option<String>,
    pub keep_alive_seconds: u64,
    /// Publishes awaiting their PUBACK at once.
    pub inflight: u16,
    /// Users per batch (one lease), and rows per user per batch.
    pub batch_users: u32,
    pub batch_per_user: u32,
    /// A batch whose PUBACKs have not all come back by then is abandoned and the connection
    /// dropped; the unacknowledged rows stay in the outbox and are published again.
    pub ack_timeout_seconds: u64,
    /// How often a worker looks for rows committed by other replicas (its own commits wake
    /// it at once).
    pub poll_millis: u64,
    /// Rows older than this are dropped (counted in `tidings_mqtt_outbox_dropped`); 0 keeps
    /// every row until the broker has it.
    pub max_age_seconds: u64,
    /// PEM CA bundle for `mqtts://`; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that authenticate clients by TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub algorithm: JwtAlgorithm,
    /// HS256 secret shared with whoever mints tokens.
    pub jwt_secret: Option<SecretString>,
    /// Where the `local` profile keeps the secret it generates on first start.
    pub secret_file: PathBuf,
    /// Generate `secret_file` when no secret is configured (local profile only).
    pub generate_secret: bool,
    /// RS256/ES256: the PEM public key, inline or as a file.
    pub public_key_pem: Option<String>,
    pub public_key_file: Option<PathBuf>,
    /// RS256/ES256: the PEM private key, used only by `tidings token`.
    pub private_key_file: Option<PathBuf>,
    /// Checked when set.
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// An OpenID Connect provider whose tokens are accepted beside the local key's.
    #[serde(default)]
    pub oidc: OidcSettings,
    /// Where a provider token names its user: a claim, or a dotted path into objects.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Comma-separated claims (or dotted paths) that hold a provider token's scopes.
    #[serde(default = "default_scope_claims")]
    pub scope_claims: String,
    /// The scope that makes a provider token a publishing service's.
    #[serde(default = "default_publish_scope")]
    pub publish_scope: String,
    /// Clock skew allowed on `exp` and `nbf`, for every token.
    #[serde(default)]
    pub leeway_seconds: u64,
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_scope_claims() -> String {
    "scope,scp".into()
}

fn default_publish_scope() -> String {
    "notifications:publish".into()
}

/// `TIDINGS__AUTH__OIDC__*`. The refresh bounds are settings only so that tests can make a
/// rotation visible in seconds; the defaults are the ones to run with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OidcSettings {
    /// The provider's issuer URL: its discovery document names the JWKS, and a token whose
    /// `iss` is this one is checked against that JWKS.
    pub issuer: Option<String>,
    /// The JWKS URL, for providers without discovery (then tokens with a `kid` are the
    /// provider's, unless `issuer` is set too).
    pub jwks_url: Option<String>,
    /// The shortest and longest time between background refreshes of the JWKS; its
    /// `Cache-Control: max-age` picks a time in between.
    pub min_refresh_seconds: u64,
    pub max_refresh_seconds: u64,
    /// The shortest time between two re-fetches caused by tokens naming an unknown `kid`.
    pub unknown_kid_refetch_seconds: u64,
}

impl OidcSettings {
    /// HTTPS, except on loopback (a provider beside the service, or a test's).
    fn validate(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("TIDINGS__AUTH__OIDC__ISSUER", &self.issuer),
            ("TIDINGS__AUTH__OIDC__JWKS_URL", &self.jwks_url),
        ] {
            let Some(value) = value else { continue };
            let url = url::Url::parse(value)
                .map_err(|e| SettingsError::invalid(name, format!("is not a URL: {e}")))?;
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                return Err(SettingsError::invalid(
                    name,
                    "must be an https:// URL (http:// only on loopback)",
                ));
            }
        }
        if self.min_refresh_seconds == 0 || self.min_refresh_seconds > self.max_refresh_seconds {
            return Err(SettingsError::invalid(
                "TIDINGS__AUTH__OIDC__MIN_REFRESH_SECONDS",
                "must be above 0 and at most TIDINGS__AUTH__OIDC__MAX_REFRESH_SECONDS",
            ));
        }
        Ok(())
    }
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            jwks_url: None,
            min_refresh_seconds: 300,
            max_refresh_seconds: 86_400,
            unknown_kid_refetch_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, such as `info` or `tidings=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("could not read the configuration: {0}")]
    Load(#[from] config::ConfigError),
}

impl SettingsError {
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsError::Invalid {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// The smallest secret we accept: 32 bytes is what HS256's output length calls for.
pub const MIN_SECRET_LEN: usize = 32;

impl Settings {
    /// Loads settings for the profile named by `TIDINGS_PROFILE`, from every layer.
    pub fn load() -> Result<Self, SettingsError> {
        let _ = dotenvy::dotenv();
        let profile = Profile::from_env()?;
        let mut builder = defaults(profile)?;
        match std::env::var_os("TIDINGS_CONFIG") {
            Some(path) => {
                builder = builder.add_source(File::from(PathBuf::from(path)).required(true))
            }
            None => {
                builder = builder
                    .add_source(File::new("tidings", FileFormat::Toml).required(false))
                    .add_source(
                        File::new(&format!("tidings.{}", profile.as_str()), FileFormat::Toml)
                            .required(false),
                    );
            }
        }
        let config = builder
            .add_source(
                Environment::with_prefix("TIDINGS")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("server.allowed_origins")
                    .try_parsing(true),
            )
            .build()?;
        let mut settings: Settings = config.try_deserialize()?;
        settings.profile = profile;
        // `TIDINGS__SERVER__ALLOWED_ORIGINS=` (as in .env.example) means none, not one empty origin.
        settings
            .server
            .allowed_origins
            .retain(|o| !o.trim().is_empty());
        settings.validate()?;
        Ok(settings)
    }

    /// Built-in defaults only, for tests and tools that set fields directly.
    pub fn defaults(profile: Profile) -> Result<Self, SettingsError> {
        let mut settings: Settings = defaults(profile)?.build()?.try_deserialize()?;
        settings.profile = profile;
        Ok(settings)
    }

    /// Checks what types alone cannot. Each message names the environment variable to fix.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.listen_addr()?;
        self.grpc_addr()?;
        let db = self.database.url.expose_secret();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(SettingsError::invalid(
                "TIDINGS__DATABASE__URL",
                "must start with sqlite: or postgres://",
            ));
        }
        if let Some(url) = &self.redis.url {
            // One URL, or a comma-separated list of a Redis Cluster's seed nodes.
            let ok = url.expose_secret().split(',').map(str::trim).all(|url| {
                url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("redis+unix:")
            });
            if !ok {
                return Err(SettingsError::invalid(
                    "TIDINGS__REDIS__URL",
                    "must start with redis:// (or be a comma-separated list of such URLs)",
                ));
            }
        }
        let positive = [
            (
                "TIDINGS__SERVER__HEARTBEAT_SECONDS",
                self.server.heartbeat_seconds as usize,
            ),
            (
                "TIDINGS__SERVER__MAX_CONNECTIONS",
                self.server.max_connections,
            ),
            (
                "TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER",
                self.server.max_connections_per_user,
            ),
            (
                "TIDINGS__SERVER__CONNECTION_QUEUE",
                self.server.connection_queue,
            ),
            (
                "TIDINGS__SERVER__BODY_TIMEOUT_SECONDS",
                self.server.body_timeout_seconds as usize,
            ),
            (
                "TIDINGS__DATABASE__MAX_CONNECTIONS",
                self.database.max_connections as usize,
            ),
            ("TIDINGS__GRPC__MAX_CONNECTIONS", self.grpc.max_connections),
            (
                "TIDINGS__GRPC__HANDSHAKE_TIMEOUT_SECONDS",
                self.grpc.handshake_timeout_seconds as usize,
            ),
            (
                "TIDINGS__GRPC__IDLE_TIMEOUT_SECONDS",
                self.grpc.idle_timeout_seconds as usize,
            ),
            (
                "TIDINGS__SOCKJS__HEARTBEAT_SECONDS",
                self.sockjs.heartbeat_seconds as usize,
            ),
            (
                "TIDINGS__SOCKJS__DISCONNECT_DELAY_SECONDS",
                self.sockjs.disconnect_delay_seconds as usize,
            ),
            (
                "TIDINGS__SOCKJS__STREAM_BYTES_LIMIT",
                self.sockjs.stream_bytes_limit,
            ),
            ("TIDINGS__SOCKJS__MAX_SESSIONS", self.sockjs.max_sessions),
            (
                "TIDINGS__RETENTION__BATCH_SIZE",
                self.retention.batch_size as usize,
            ),
            (
                "TIDINGS__RETENTION__INTERVAL_SECONDS",
                self.retention.interval_seconds as usize,
            ),
            (
                "TIDINGS__SCHEDULE__MAX_PENDING_PER_SERVICE",
                usize::try_from(self.schedule.max_pending_per_service).unwrap_or(usize::MAX),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(SettingsError::invalid(name, "must be greater than 0"));
            }
        }
        // The per-user cap exists so that one user cannot take every place on the replica;
        // at or above the replica's cap it would not. Refused rather than clamped: a silent
        // clamp would hide that one of the two numbers is not what the operator meant.
        if self.server.max_connections_per_user >= self.server.max_connections {
            return Err(SettingsError::invalid(
                "TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER",
                format!(
                    "({}) must be less than TIDINGS__SERVER__MAX_CONNECTIONS ({}), or one user could hold every connection of the replica",
                    self.server.max_connections_per_user, self.server.max_connections
                ),
            ));
        }
        if let Some(secret) = &self.auth.jwt_secret {
            if secret.expose_secret().len() < MIN_SECRET_LEN {
                return Err(SettingsError::invalid(
                    "TIDINGS__AUTH__JWT_SECRET",
                    format!(
                        "must be at least {MIN_SECRET_LEN} characters (try `openssl rand -hex 32`)"
                    ),
                ));
            }
        }
        if self.auth.algorithm != JwtAlgorithm::HS256
            && self.auth.public_key_pem.is_none()
            && self.auth.public_key_file.is_none()
        {
            return Err(SettingsError::invalid(
                "TIDINGS__AUTH__PUBLIC_KEY_FILE",
                format!(
                    "{:?} needs a PEM public key (or TIDINGS__AUTH__PUBLIC_KEY_PEM)",
                    self.auth.algorithm
                ),
            ));
        }
        self.auth.oidc.validate()?;
        if self.webpush.vapid_private_key.is_some() {
            let subject = self.webpush.subject.as_deref().unwrap_or("");
            if !(subject.starts_with("mailto:") || subject.starts_with("https:")) {
                return Err(SettingsError::invalid(
                    "TIDINGS__WEBPUSH__SUBJECT",
                    "Web Push needs a contact for the push services: mailto:… or https:…",
                ));
            }
            let w = &self.webpush;
            for (name, value) in [
                ("TIDINGS__WEBPUSH__CONCURRENCY", w.concurrency as u64),
                (
                    "TIDINGS__WEBPUSH__BATCH_SUBSCRIPTIONS",
                    u64::from(w.batch_subscriptions),
                ),
                (
                    "TIDINGS__WEBPUSH__BATCH_PER_SUBSCRIPTION",
                    u64::from(w.batch_per_subscription),
                ),
                ("TIDINGS__WEBPUSH__TTL_SECONDS", w.ttl_seconds),
                (
                    "TIDINGS__WEBPUSH__REQUEST_TIMEOUT_SECONDS",
                    w.request_timeout_seconds,
                ),
                ("TIDINGS__WEBPUSH__POLL_MILLIS", w.poll_millis),
            ] {
                if value == 0 {
                    return Err(SettingsError::invalid(name, "must be at least 1"));
                }
            }
            if w.request_timeout_seconds > 30 {
                return Err(SettingsError::invalid(
                    "TIDINGS__WEBPUSH__REQUEST_TIMEOUT_SECONDS",
                    "must be at most 30 (a lease lasts 60 s)",
                ));
            }
        }
        if let Some(url) = &self.mqtt.url {
            let url = url.expose_secret();
            if !(url.starts_with("mqtt://") || url.starts_with("mqtts://")) {
                return Err(SettingsError::invalid(
                    "TIDINGS__MQTT__URL",
                    "must start with mqtt:// or mqtts://",
                ));
            }
            let prefix = &self.mqtt.topic_prefix;
            if prefix.is_empty()
                || prefix.contains(['+', '#', '\0'])
                || prefix.starts_with('/')
                || prefix.ends_with('/')
            {
                return Err(SettingsError::invalid(
                    "TIDINGS__MQTT__TOPIC_PREFIX",
                    "must be a topic such as tidings: not empty, no + or #, no leading or trailing /",
                ));
            }
            for (name, value) in [
                ("TIDINGS__MQTT__INFLIGHT", u64::from(self.mqtt.inflight)),
                (
                    "TIDINGS__MQTT__BATCH_USERS",
                    u64::from(self.mqtt.batch_users),
                ),
                (
                    "TIDINGS__MQTT__BATCH_PER_USER",
                    u64::from(self.mqtt.batch_per_user),
                ),
                (
                    "TIDINGS__MQTT__KEEP_ALIVE_SECONDS",
                    self.mqtt.keep_alive_seconds,
                ),
                (
                    "TIDINGS__MQTT__ACK_TIMEOUT_SECONDS",
                    self.mqtt.ack_timeout_seconds,
                ),
                ("TIDINGS__MQTT__POLL_MILLIS", self.mqtt.poll_millis),
            ] {
                if value == 0 {
                    return Err(SettingsError::invalid(name, "must be greater than 0"));
                }
            }
            if self
                .mqtt
                .batch_users
                .saturating_mul(self.mqtt.batch_per_user)
                > 10_000
            {
                return Err(SettingsError::invalid(
                    "TIDINGS__MQTT__BATCH_USERS",
                    "batch_users × batch_per_user must be at most 10000",
                ));
            }
            if self.mqtt.keep_alive_seconds < 5 {
                return Err(SettingsError::invalid(
                    "TIDINGS__MQTT__KEEP_ALIVE_SECONDS",
                    "must be at least 5",
                ));
            }
            if self.mqtt.client_cert_file.is_some() != self.mqtt.client_key_file.is_some() {
                return Err(SettingsError::invalid(
                    "TIDINGS__MQTT__CLIENT_KEY_FILE",
                    "a client certificate needs its key, and a key its certificate",
                ));
            }
        }
        if self.retention.max_age.is_some_and(|a| a.is_zero()) {
            return Err(SettingsError::invalid(
                "TIDINGS__RETENTION__MAX_AGE",
                "must be greater than 0 (unset it to keep notifications for ever)",
            ));
        }
        if self.retention.max_per_user == Some(0) {
            return Err(SettingsError::invalid(
                "TIDINGS__RETENTION__MAX_PER_USER",
                "must be greater than 0 (unset it to keep every notification)",
            ));
        }
        if self.retention.batch_size > 100_000 {
            return Err(SettingsError::invalid(
                "TIDINGS__RETENTION__BATCH_SIZE",
                "must be at most 100000: a batch is one transaction",
            ));
        }
        for origin in &self.server.allowed_origins {
            if origin != "*" && url::Url::parse(origin).is_err() {
                return Err(SettingsError::invalid(
                    "TIDINGS__SERVER__ALLOWED_ORIGINS",
                    format!("{origin:?} is not an origin such as https://app.example"),
                ));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, SettingsError> {
        self.server.listen.parse().map_err(|_| {
            SettingsError::invalid(
                "TIDINGS__SERVER__LISTEN",
                format!(
                    "{:?} is not an address and port such as 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })
    }

    /// Where the gRPC listener binds, or `None` when it is `off`.
    pub fn grpc_addr(&self) -> Result<Option<SocketAddr>, SettingsError> {
        let name = "TIDINGS__GRPC__LISTEN";
        match self.grpc.listen.trim() {
            "off" => Ok(None),
            "auto" => {
                let mut addr = self.listen_addr()?;
                if addr.port() != 0 {
                    let next = addr.port().checked_add(1).ok_or_else(|| {
                        SettingsError::invalid(
                            name,
                            "`auto` takes the HTTP port + 1, and the HTTP port is 65535; set an address",
                        )
                    })?;
                    addr.set_port(next);
                }
                Ok(Some(addr))
            }
            other => other.parse().map(Some).map_err(|_| {
                SettingsError::invalid(
                    name,
                    format!("{other:?} is not `auto`, `off` or an address and port such as 127.0.0.1:8081"),
                )
            }),
        }
    }

    /// The HS256 secret: configured, or (local profile) the one kept in `secret_file`,
    /// generated on first use. Never a well-known default.
    pub fn resolve_jwt_secret(&self) -> Result<SecretString, SettingsError> {
        if let Some(secret) = &self.auth.jwt_secret {
            return Ok(secret.clone());
        }
        // Production takes only an explicit secret: a file left behind by a local run must
        // not quietly become a cluster's signing key.
        if !self.auth.generate_secret {
            return Err(SettingsError::invalid(
                "TIDINGS__AUTH__JWT_SECRET",
                format!(
                    "is not set, and the {} profile does not generate one: set it to a random string of at \
                     least {MIN_SECRET_LEN} characters (`openssl rand -hex 32`), shared by every replica and \
                     every service that mints tokens",
                    self.profile.as_str()
                ),
            ));
        }
        let path = &self.auth.secret_file;
        if let Ok(existing) = std::fs::read_to_string(path) {
            let existing = existing.trim();
            if existing.len() >= MIN_SECRET_LEN {
                return Ok(SecretString::from(existing.to_owned()));
            }
        }
        let secret = generate_secret();
        write_private_file(path, &secret).map_err(|e| {
            SettingsError::invalid(
                "TIDINGS__AUTH__SECRET_FILE",
                format!(
                    "could not write the generated secret to {}: {e}",
                    path.display()
                ),
            )
        })?;
        tracing::info!(path = %path.display(), "generated a JWT secret for this installation");
        Ok(SecretString::from(secret))
    }
}

fn defaults(
    profile: Profile,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, SettingsError> {
    let production = profile == Profile::Production;
    Ok(Config::builder()
        .set_default("server.listen", "127.0.0.1:8080")?
        .set_default("server.allowed_origins", Vec::<String>::new())?
        .set_default("server.heartbeat_seconds", 15)?
        .set_default("server.max_connections", 20_000)?
        .set_default("server.max_connections_per_user", 64)?
        .set_default("server.connection_queue", 256)?
        .set_default("server.shutdown_grace_seconds", 10)?
        .set_default("server.workers", 0)?
        .set_default("server.stalled_client_seconds", 30)?
        .set_default("server.body_timeout_seconds", 10)?
        .set_default("database.url", "sqlite://tidings.db")?
        .set_default("database.max_connections", 10)?
        .set_default("redis.url", None::<String>)?
        .set_default("redis.channel", "tidings:events")?
        .set_default("redis.routing", "user")?
        .set_default("grpc.listen", "auto")?
        .set_default("grpc.max_connections", 10_000)?
        .set_default("grpc.handshake_timeout_seconds", 5)?
        .set_default("grpc.idle_timeout_seconds", 300)?
        .set_default("auth.algorithm", "HS256")?
        .set_default("auth.secret_file", "tidings.secret")?
        .set_default("auth.generate_secret", !production)?
        .set_default("log.format", if production { "json" } else { "pretty" })?
        .set_default("log.level", "info")?
        .set_default("mqtt.url", None::<String>)?
        .set_default("mqtt.topic_prefix", "tidings")?
        .set_default("mqtt.client_id", None::<String>)?
        .set_default("mqtt.keep_alive_seconds", 30)?
        .set_default("mqtt.inflight", 100)?
        .set_default("mqtt.batch_users", 50)?
        .set_default("mqtt.batch_per_user", 20)?
        .set_default("mqtt.ack_timeout_seconds", 30)?
        .set_default("mqtt.poll_millis", 250)?
        .set_default("mqtt.max_age_seconds", 0)?
        .set_default("mqtt.ca_file", None::<String>)?
        .set_default("mqtt.client_cert_file", None::<String>)?
        .set_default("mqtt.client_key_file", None::<String>)?)
}

fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read: it holds a signing secret.
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local() {
        let s = Settings::defaults(Profile::Local).unwrap();
        s.validate().unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert!(s.redis.url.is_none());
        assert_eq!(s.redis.routing, Routing::User);
        assert!(s.auth.generate_secret);
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert_eq!(s.server.body_timeout_seconds, 10);
    }

    #[test]
    fn the_grpc_listener_sits_next_to_the_http_one() {
        let mut s = Settings::defaults(Profile::Local).unwrap();
        assert_eq!(
            s.grpc_addr().unwrap(),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        s.server.listen = "127.0.0.1:0".into();
        assert_eq!(s.grpc_addr().unwrap(), Some("127.0.0.1:0".parse().unwrap()));
        s.grpc.listen = "off".into();
        assert_eq!(s.grpc_addr().unwrap(), None);
        s.grpc.listen = "0.0.0.0:50051".into();
        assert_eq!(
            s.grpc_addr().unwrap(),
            Some("0.0.0.0:50051".parse().unwrap())
        );
        s.grpc.listen = "nope".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__GRPC__LISTEN"));
    }

    #[test]
    fn production_does_not_generate_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults(Profile::Production).unwrap();
        s.auth.secret_file = dir.path().join("secret");
        let err = s.resolve_jwt_secret().unwrap_err().to_string();
        assert!(err.contains("TIDINGS__AUTH__JWT_SECRET"), "{err}");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn local_generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.auth.secret_file = dir.path().join("secret");
        let a = s.resolve_jwt_secret().unwrap();
        let b = s.resolve_jwt_secret().unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().len() >= MIN_SECRET_LEN);
    }

    #[test]
    fn retention_durations_take_seconds_or_a_unit() {
        use std::time::Duration;
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("d").is_err());
        let s = Settings::defaults(Profile::Local).unwrap();
        assert!(!s.retention.enabled(), "keeping everything is the default");
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.retention.max_per_user = Some(0);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__RETENTION__MAX_PER_USER"));
    }

    #[test]
    fn the_per_user_cap_must_be_below_the_replica_cap() {
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.server.max_connections = 60;
        s.server.max_connections_per_user = 64;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER")
                && err.contains("TIDINGS__SERVER__MAX_CONNECTIONS ("),
            "{err}"
        );
        s.server.max_connections_per_user = 60;
        assert!(s.validate().is_err(), "equal still lets one user take all");
        s.server.max_connections_per_user = 59;
        s.validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.server.listen = "nowhere".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__SERVER__LISTEN"));
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.auth.jwt_secret = Some(SecretString::from("short"));
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__AUTH__JWT_SECRET"));
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.server.body_timeout_seconds = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__SERVER__BODY_TIMEOUT_SECONDS"));
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.mqtt.url = Some(SecretString::from("http://broker"));
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__MQTT__URL"));
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.mqtt.url = Some(SecretString::from("mqtt://broker"));
        s.mqtt.topic_prefix = "a/#".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__MQTT__TOPIC_PREFIX"));
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.database.url = SecretString::from("mysql://x");
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__DATABASE__URL"));
    }

    #[test]
    fn web_push_needs_a_contact_subject() {
        let mut s = Settings::defaults(Profile::Local).unwrap();
        s.webpush.vapid_private_key = Some(SecretString::from("any"));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("TIDINGS__WEBPUSH__SUBJECT"), "{e}");
        s.webpush.subject = Some("mailto:ops@example.com".into());
        s.webpush.concurrency = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("TIDINGS__WEBPUSH__CONCURRENCY"), "{e}");
        s.webpush.concurrency = 4;
        assert!(s.validate().is_ok());
    }
}
