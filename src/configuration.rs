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
    pub auth: AuthSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub sockjs: SockJsSettings,
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
    /// Events buffered per connection before a slow client is cut off.
    pub connection_queue: usize,
    /// How long a stopping replica waits for in-flight work before it exits.
    pub shutdown_grace_seconds: u64,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// A connection whose client stops reading (or acknowledging) for this long is closed
    /// by the kernel (TCP_USER_TIMEOUT), so a stalled client cannot hold buffers forever.
    pub stalled_client_seconds: u64,
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

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://path` or `postgres://…`.
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// Unset: the in-process bus (one replica).
    pub url: Option<SecretString>,
    /// The pub/sub channel; deployments (or tests) sharing one Redis use different ones.
    pub channel: String,
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
            let url = url.expose_secret();
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix:"))
            {
                return Err(SettingsError::invalid(
                    "TIDINGS__REDIS__URL",
                    "must start with redis://",
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
                "TIDINGS__SERVER__CONNECTION_QUEUE",
                self.server.connection_queue,
            ),
            (
                "TIDINGS__DATABASE__MAX_CONNECTIONS",
                self.database.max_connections as usize,
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
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(SettingsError::invalid(name, "must be greater than 0"));
            }
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
        .set_default("server.connection_queue", 256)?
        .set_default("server.shutdown_grace_seconds", 10)?
        .set_default("server.workers", 0)?
        .set_default("server.stalled_client_seconds", 30)?
        .set_default("database.url", "sqlite://tidings.db")?
        .set_default("database.max_connections", 10)?
        .set_default("redis.url", None::<String>)?
        .set_default("redis.channel", "tidings:events")?
        .set_default("auth.algorithm", "HS256")?
        .set_default("auth.secret_file", "tidings.secret")?
        .set_default("auth.generate_secret", !production)?
        .set_default("log.format", if production { "json" } else { "pretty" })?
        .set_default("log.level", "info")?)
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
        assert!(s.auth.generate_secret);
        assert_eq!(s.log.format, LogFormat::Pretty);
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
        s.database.url = SecretString::from("mysql://x");
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TIDINGS__DATABASE__URL"));
    }
}
