-- Web Push (issue 24): see the Postgres migration of the same name.
CREATE TABLE push_subscriptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    endpoint TEXT NOT NULL UNIQUE,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    expiration_time INTEGER,
    created_at TEXT NOT NULL,
    retry_at TEXT,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX push_subscriptions_user_id ON push_subscriptions (user_id);

CREATE TABLE webpush_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'unread')),
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX webpush_outbox_subscription_id ON webpush_outbox (subscription_id, id);
