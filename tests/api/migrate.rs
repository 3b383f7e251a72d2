//! The storage layout of the performance issue upgrades an existing database in place:
//! notifications written before it keep their ids, seqs, read state and counters; and ids
//! handed out before the id key stay valid while new ones reveal nothing.

use crate::helpers::{sample, seqs, spawn_app_with, Backend};
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};
use std::borrow::Cow;
use tidings_test_support::harness;

/// The first migration of the message/inbox layout: everything before it is the old one.
const LAYOUT: i64 = 20261202000001;

const OLD_IDS: [&str; 3] = [
    "0192e4a0-0000-7000-8000-000000000001",
    "0192e4a0-0000-7000-8000-000000000002",
    "0192e4a0-0000-7000-8000-000000000003",
];

async fn old_migrator(dir: &str) -> Migrator {
    let mut m = Migrator::new(std::path::Path::new(dir))
        .await
        .expect("read the migrations");
    let old: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version < LAYOUT)
        .cloned()
        .collect();
    m.migrations = Cow::Owned(old);
    m
}

/// alice had three notifications (the first read), bob one, in the old layout.
fn old_rows(ts: &str) -> String {
    format!(
        "INSERT INTO user_cursors (user_id, last_seq, unread, version) VALUES ('alice', 3, 2, 4), ('bob', 1, 1, 1);
         INSERT INTO notifications (user_id, seq, id, type, title, body, data, link, created_at, read_at, topic) VALUES
           ('alice', 1, '{a}', 'old.kind', 'first', 'b1', NULL, NULL, {ts}, {ts}, NULL),
           ('alice', 2, '{b}', 'old.kind', 'second', NULL, '{{\"k\": 1}}', 'https://example.com/x', {ts}, NULL, 'news'),
           ('alice', 3, '{c}', 'old.kind', 'third', NULL, NULL, NULL, {ts}, NULL, NULL),
           ('bob', 1, '0192e4a0-0000-7000-8000-0000000000b1', 'old.kind', 'bob''s', NULL, NULL, NULL, {ts}, NULL, NULL);",
        a = OLD_IDS[0],
        b = OLD_IDS[1],
        c = OLD_IDS[2],
    )
}

async fn an_old_database_is_upgraded_in_place(b: Backend) {
    let _dir;
    let mut pg_name = None;
    let url = match b {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
            _dir = dir;
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            old_migrator("migrations/sqlite")
                .await
                .run(&mut conn)
                .await
                .expect("old migrations");
            conn.execute(old_rows("'2026-11-01T10:00:00.000000Z'").as_str())
                .await
                .expect("old rows");
            let _ = conn.close().await;
            url
        }
        Backend::Postgres => {
            let (name, url) = harness::create_database("tidings_migrate").await;
            pg_name = Some(name);
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("postgres");
            old_migrator("migrations/postgres")
                .await
                .run(&mut conn)
                .await
                .expect("old migrations");
            conn.execute(old_rows("'2026-11-01T10:00:00Z'").as_str())
                .await
                .expect("old rows");
            let _ = conn.close().await;
            url
        }
    };

    let app = spawn_app_with(b, |s| s.database.url = url.clone().into()).await;

    let page = app.list("alice", "?after=0").await;
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert_eq!(
        (page["unread"].clone(), page["seq"].clone()),
        (json!(2), json!(3))
    );
    let n = &page["notifications"];
    let ids: Vec<&str> = (0..3).map(|i| n[i]["id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, OLD_IDS, "old ids are kept");
    assert_eq!(n[0]["title"], "first");
    assert!(!n[0]["read_at"].is_null(), "read state is kept");
    assert_eq!(n[1]["data"], json!({"k": 1}));
    assert_eq!(n[1]["link"], "https://example.com/x");
    assert!(n[2]["read_at"].is_null());

    // An old id still marks read, and only the caller's.
    let (status, counts) = app.mark_read("alice", &json!({"ids": [OLD_IDS[1]]})).await;
    assert_eq!(status, 200);
    assert_eq!(counts, json!({"unread": 1, "seq": 3}));
    let (_, bobs) = app
        .mark_read(
            "alice",
            &json!({"ids": ["0192e4a0-0000-7000-8000-0000000000b1"]}),
        )
        .await;
    assert_eq!(bobs["unread"], 1);
    assert_eq!(app.unread("bob").await["unread"], 1);

    // New notifications continue the seq, with ids of the new layout, and mark read by id.
    let r = app.publish(&sample(&["alice", "bob"])).await;
    let mine = &r["notifications"][0];
    assert_eq!(
        (mine["recipient"].clone(), mine["seq"].clone()),
        (json!("alice"), json!(4))
    );
    let (_, counts) = app
        .mark_read("alice", &json!({"ids": [mine["id"].clone()]}))
        .await;
    assert_eq!(counts, json!({"unread": 1, "seq": 4}));
    assert_eq!(seqs(&app.list("alice", "").await), [4, 3, 2, 1]);
    assert_eq!(app.unread("bob").await, json!({"unread": 2, "seq": 2}));

    drop(app);
    if let Some(name) = pg_name {
        harness::drop_database_blocking(&name);
    }
}

/// The migration that made the id key: before it, ids were the plain layout.
const ID_KEYS: i64 = 20261207000001;

/// A database of the release before the id key, with one notification whose id was handed
/// out in the plain layout (message 1, ordinal 0, seq 1: it counts publishes).
async fn database_before_the_id_key(
    b: Backend,
) -> (String, Option<String>, Option<tempfile::TempDir>) {
    async fn upto<C>(dir: &str, conn: &mut C)
    where
        C: sqlx::Connection + sqlx::migrate::Migrate,
    {
        let mut m = Migrator::new(std::path::Path::new(dir))
            .await
            .expect("read the migrations");
        let old: Vec<_> = m
            .migrations
            .iter()
            .filter(|x| x.version < ID_KEYS)
            .cloned()
            .collect();
        m.migrations = Cow::Owned(old);
        m.run_direct(conn).await.expect("old migrations");
    }
    let rows = |ts: &str| {
        format!(
            "INSERT INTO user_cursors (user_id, last_seq, unread, version) VALUES ('alice', 1, 1, 1);
             INSERT INTO messages (id, service, type, title, created_at) VALUES (1, 'billing', 'old.kind', 'plain', {ts});
             INSERT INTO inbox (user_id, seq, message_id, ordinal) VALUES ('alice', 1, 1, 0);"
        )
    };
    match b {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("keyless.db").display()
            );
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            upto("migrations/sqlite", &mut conn).await;
            conn.execute(rows("'2026-12-01T10:00:00.000000Z'").as_str())
                .await
                .expect("rows");
            let _ = conn.close().await;
            (url, None, Some(dir))
        }
        Backend::Postgres => {
            let (name, url) = harness::create_database("tidings_idkey").await;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("postgres");
            upto("migrations/postgres", &mut conn).await;
            conn.execute(rows("'2026-12-01T10:00:00Z'").as_str())
                .await
                .expect("rows");
            conn.execute("SELECT setval(pg_get_serial_sequence('messages', 'id'), 2, false)")
                .await
                .expect("sequence");
            let _ = conn.close().await;
            (url, Some(name), None)
        }
    }
}

/// Ids no longer count publishes: two consecutive ones share no visible structure and cannot
/// be read without the deployment's key; an id handed out before the key still resolves,
/// and is still the one shown.
async fn ids_reveal_nothing_and_old_ones_still_resolve(b: Backend) {
    use tidings::domain::NotificationId;
    let (url, pg_name, _dir) = database_before_the_id_key(b).await;
    let app = spawn_app_with(b, |s| s.database.url = url.clone().into()).await;
    let plain = NotificationId::new(1, 0, 1)
        .expect("in range")
        .to_uuid()
        .to_string();

    // The old notification keeps its plain id, which marks read.
    let page = app.list("alice", "?after=0").await;
    assert_eq!(page["notifications"][0]["id"], json!(plain), "{page}");
    let (status, counts) = app.mark_read("alice", &json!({"ids": [plain]})).await;
    assert_eq!((status, counts), (200, json!({"unread": 0, "seq": 1})));

    // Two consecutive publishes.
    let ids: Vec<uuid::Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let r = app.publish(&sample(&["alice"])).await;
            let id = r["notifications"][0]["id"].as_str().expect("an id");
            ids.push(id.parse().expect("a uuid"));
        }
        ids
    };
    for (id, (message, seq)) in ids.iter().zip([(2, 2), (3, 3)]) {
        let counter = NotificationId::new(message, 0, seq)
            .expect("in range")
            .to_uuid();
        assert_ne!(*id, counter, "not the counting layout");
        assert_eq!(
            NotificationId::from_uuid(id),
            None,
            "{id}: unreadable without the key"
        );
    }
    let differing = (ids[0].as_u128() ^ ids[1].as_u128()).count_ones();
    assert!(
        differing >= 30,
        "consecutive ids differ in only {differing} bits"
    );

    // They work as ids: listed as handed out, marked read, retracted by their service.
    let page = app.list("alice", "?after=1").await;
    let listed: Vec<String> = (0..2)
        .map(|i| {
            page["notifications"][i]["id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(listed, [ids[0].to_string(), ids[1].to_string()]);
    let (_, counts) = app.mark_read("alice", &json!({"ids": [ids[0]]})).await;
    assert_eq!(counts, json!({"unread": 1, "seq": 3}));
    let resp = app
        .client
        .delete(app.url(&format!("/v1/notifications/{}", ids[1])))
        .bearer_auth(crate::helpers::service_token("billing"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(seqs(&app.list("alice", "").await), [2, 1]);

    drop(app);
    if let Some(name) = pg_name {
        harness::drop_database_blocking(&name);
    }
}

/// A replica of this release starts on a database that a later release has already migrated
/// (a rolling upgrade's new replicas migrate first; an old one may restart meanwhile, or be
/// rolled back to): the later migration, unknown here, is not an error.
async fn a_database_migrated_by_a_later_release_still_starts(b: Backend) {
    let _dir;
    let mut pg_name = None;
    // What sqlx records for an applied migration, for one this release does not have.
    let later = |checksum: &str| {
        format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (29991231000001, 'a later release', TRUE, {checksum}, 0)"
        )
    };
    let url = match b {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("later.db").display()
            );
            _dir = dir;
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            sqlx::migrate!("./migrations/sqlite")
                .run(&mut conn)
                .await
                .expect("migrations");
            conn.execute(later("X'00'").as_str())
                .await
                .expect("a later migration");
            let _ = conn.close().await;
            url
        }
        Backend::Postgres => {
            let (name, url) = harness::create_database("tidings_migrate").await;
            pg_name = Some(name);
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("postgres");
            sqlx::migrate!("./migrations/postgres")
                .run(&mut conn)
                .await
                .expect("migrations");
            conn.execute(later("decode('00', 'hex')").as_str())
                .await
                .expect("a later migration");
            let _ = conn.close().await;
            url
        }
    };

    let app = spawn_app_with(b, |s| s.database.url = url.clone().into()).await;
    let r = app.publish(&sample(&["alice"])).await;
    assert_eq!(r["notifications"][0]["seq"], 1);
    assert_eq!(seqs(&app.list("alice", "?after=0").await), [1]);

    drop(app);
    if let Some(name) = pg_name {
        harness::drop_database_blocking(&name);
    }
}

crate::both_backends!(
    an_old_database_is_upgraded_in_place,
    ids_reveal_nothing_and_old_ones_still_resolve,
    a_database_migrated_by_a_later_release_still_starts,
);
