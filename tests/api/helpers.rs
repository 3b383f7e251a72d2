//! The test harness: every test gets its own server on a random port and its own fresh
//! database, dropped afterwards.

use tidings_test_support::harness;
pub use tidings_test_support::harness::sign;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use tidings::configuration::{Profile, Settings};
use tidings::domain::{Seq, UserId};
use tidings::hub::{History, HistoryRead};
use tidings::startup::Application;

pub const SECRET: &str = "test-secret-that-is-at-least-32-characters-long";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn redis_url() -> String {
    std::env::var("TIDINGS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub address: String,
    /// The gRPC listener, `http://127.0.0.1:<port>` (on by default, port 0 in tests).
    pub grpc_address: String,
    /// The server's database, for a test that writes what the API would refuse.
    pub database_url: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    database: Database,
}

enum Database {
    Sqlite(tempfile::TempDir),
    Postgres { name: String },
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts a server with test settings, after `customize` has changed them.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_history(backend, customize, |history| history).await
}

/// [`spawn_app_with`], with the hub's reads of the database going through `layer` (see
/// [`SlowLatest`]).
/// Prints the servers' "internal error" lines (the one place a 500 is logged, with its cause)
/// on stderr, so a test that meets an unexpected 500 shows why. Nothing else is logged: the
/// suite's output stays readable.
fn show_internal_errors() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tidings::http::error=error",
            ))
            .with_writer(std::io::stderr)
            .try_init();
    });
}

pub async fn spawn_app_with_history(
    backend: Backend,
    customize: impl FnOnce(&mut Settings),
    layer: impl FnOnce(Arc<dyn History>) -> Arc<dyn History> + Send + 'static,
) -> TestApp {
    show_internal_errors();
    let mut settings = Settings::defaults(Profile::Local).expect("defaults");
    settings.server.listen = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.server.shutdown_grace_seconds = 2;
    settings.auth.jwt_secret = Some(SecretString::from(SECRET));
    settings.database.max_connections = 5;
    let database = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            settings.database.url = SecretString::from(format!(
                "sqlite://{}",
                dir.path().join("tidings.db").display()
            ));
            Database::Sqlite(dir)
        }
        Backend::Postgres => {
            // Postgres is required: CI and the README's test command provide it, and a
            // test never skips itself when it is missing, it fails.
            let (name, url) = harness::create_database("tidings_test").await;
            settings.database.url = SecretString::from(url);
            // The production topology: Postgres with Redis pub/sub, on a channel of its own
            // so tests running side by side on one Redis never see each other's events.
            settings.redis.url = Some(SecretString::from(redis_url()));
            settings.redis.channel = name.clone();
            Database::Postgres { name }
        }
    };
    customize(&mut settings);
    let database_url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();

    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match Application::build_with_history(settings, layer).await {
                Ok(app) => {
                    let _ = ready_tx.send(Ok((app.port(), app.grpc_port())));
                    let _ = app
                        .run_until(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        })
    });
    let (port, grpc_port) = tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .expect("join")
        .expect("server thread died")
        .unwrap_or_else(|e| panic!("the app did not start: {e}"));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        grpc_address: format!("http://127.0.0.1:{}", grpc_port.unwrap_or(0)),
        database_url,
        client: reqwest::Client::new(),
        stop: Some(stop_tx),
        thread: Some(thread),
        database,
    }
}

impl TestApp {
    /// Sends the replica its shutdown signal without waiting for it to stop, so a test
    /// can watch its open streams end.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Database::Postgres { name } = &self.database {
            harness::drop_database_blocking(name);
        }
    }
}

/// The hub's history with every "latest seq" read (where a stream opened without a cursor
/// starts) begun `delay` late: it holds open, on purpose, the window between a connection
/// registering and its starting point being fixed, which a loaded machine opens by chance.
#[derive(Debug)]
pub struct SlowLatest {
    inner: Arc<dyn History>,
    delay: Duration,
}

impl SlowLatest {
    pub fn layer(delay: Duration) -> impl FnOnce(Arc<dyn History>) -> Arc<dyn History> + Send {
        move |inner| Arc::new(SlowLatest { inner, delay })
    }
}

impl History for SlowLatest {
    fn after(&self, user: UserId, after: Seq, limit: u32) -> HistoryRead {
        self.inner.after(user, after, limit)
    }

    fn latest(&self, user: UserId) -> HistoryRead {
        let (inner, delay) = (self.inner.clone(), self.delay);
        // The read itself starts after the delay, so its snapshot is taken late.
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.latest(user).await
        })
    }
}

pub fn user_token(user: &str) -> String {
    sign(Algorithm::HS256, SECRET, user, 3600, None)
}

pub fn service_token(service: &str) -> String {
    sign(
        Algorithm::HS256,
        SECRET,
        service,
        3600,
        Some("notifications:publish"),
    )
}

pub fn sample(recipients: &[&str]) -> Value {
    json!({
        "recipients": recipients,
        "type": "order.shipped",
        "title": "Your order has shipped",
        "body": "Parcel 1Z999 is on its way.",
        "data": {"order_id": 1234},
        "link": "https://shop.example/orders/1234"
    })
}

impl TestApp {
    /// Makes every later read of this app's inbox fail, as in an outage, while the server
    /// itself stays up. Postgres: the database refuses new connections and the app's open
    /// ones are terminated. SQLite: open connections keep a deleted or locked file readable
    /// (and a lock from this process would not conflict with the server's, which shares it),
    /// so the tables every read uses are renamed away instead; reads fail at once.
    pub async fn break_database(&self) {
        use sqlx::{Connection, Executor};
        match &self.database {
            Database::Postgres { name } => {
                let mut admin = sqlx::PgConnection::connect(&harness::postgres_admin_url())
                    .await
                    .expect("connect to the Postgres admin database");
                admin
                    .execute(format!(r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#).as_str())
                    .await
                    .expect("refuse connections");
                admin
                    .execute(
                        format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                        )
                        .as_str(),
                    )
                    .await
                    .expect("terminate the app's connections");
                let _ = admin.close().await;
            }
            Database::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("tidings.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("open the SQLite file");
                for table in ["inbox", "user_cursors"] {
                    conn.execute(format!("ALTER TABLE {table} RENAME TO {table}_gone").as_str())
                        .await
                        .expect("rename the tables every read uses");
                }
                let _ = conn.close().await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn publish_raw(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/v1/notifications"))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        req.send().await.expect("publish request")
    }

    /// Publishes as the `billing` service and expects a 201; returns the body.
    pub async fn publish(&self, body: &Value) -> Value {
        let resp = self
            .publish_raw(&service_token("billing"), body, None)
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("publish body");
        assert_eq!(status, 201, "publish failed: {body}");
        body
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn list(&self, user: &str, query: &str) -> Value {
        let (status, body) = self
            .get(&user_token(user), &format!("/v1/notifications{query}"))
            .await;
        assert_eq!(status, 200, "list failed: {body}");
        body
    }

    pub async fn unread(&self, user: &str) -> Value {
        let (status, body) = self
            .get(&user_token(user), "/v1/notifications/unread-count")
            .await;
        assert_eq!(status, 200, "unread-count failed: {body}");
        body
    }

    pub async fn mark_read(&self, user: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url("/v1/notifications/read"))
            .bearer_auth(user_token(user))
            .json(body)
            .send()
            .await
            .expect("read request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// The `seq`s of a listing, in the order given.
pub fn seqs(page: &Value) -> Vec<i64> {
    page["notifications"]
        .as_array()
        .expect("notifications array")
        .iter()
        .map(|n| n["seq"].as_i64().expect("seq"))
        .collect()
}

/// The fields named by a problem document's `errors`.
pub fn problem_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Defines each listed `async fn name(backend: Backend)` test twice: `sqlite::name` and
/// `postgres::name`, so the one API suite runs against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// `<script nonce="…">p({...})</script>` → the event.
pub fn iframe_line(line: &str) -> Option<Value> {
    let json = line
        .strip_prefix("<script nonce=\"")?
        .split_once("\">p(")?
        .1
        .strip_suffix(")</script>")?;
    serde_json::from_str(json).ok()
}
