-- The MQTT bridge's transactional outbox: see the Postgres migration of the same name.
-- AUTOINCREMENT so an id is never reused, even after the table was emptied.
CREATE TABLE mqtt_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'unread')),
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
