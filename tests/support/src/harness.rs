//! What the API, cluster and nginx harnesses all need: a fresh Postgres database per test
//! (and its removal), and HS256 tokens signed like the service's own.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sqlx::{Connection, Executor, PgConnection};

/// The admin database of a Postgres server with trust auth, where test databases are made.
pub fn postgres_admin_url() -> String {
    std::env::var("TIDINGS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database named `{prefix}_{uuid}`; returns its name and URL.
pub async fn create_database(prefix: &str) -> (String, String) {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let admin = postgres_admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("Postgres is required for these tests at {admin}: {e}"));
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .expect("create the test database");
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let url = format!("{base}/{name}");
    (name, url)
}

/// Drops a test database, best effort. Meant for `Drop`, which runs inside the test's
/// runtime: a fresh thread with its own runtime may block there.
pub fn drop_database_blocking(name: &str) {
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        }
    })
    .join();
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// Signs arbitrary claims, including tokens the CLI would never mint (expired, wrong
/// algorithm, another key).
pub fn sign(alg: Algorithm, secret: &str, sub: &str, exp_in: i64, scope: Option<&str>) -> String {
    let claims = Claims {
        sub,
        exp: chrono::Utc::now().timestamp() + exp_in,
        scope,
    };
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}
