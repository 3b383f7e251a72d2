-- One row per user: the user's latest seq and unread count, bumped in the same transaction
-- as every insert, so the unread badge is one primary-key lookup, never a scan.
CREATE TABLE user_cursors (
    user_id  TEXT    PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL,
    unread   INTEGER NOT NULL CHECK (unread >= 0),
    -- Bumped by every change to this row, so live updates that arrive out of order
    -- (from several replicas, over Redis) can be put back in order.
    version  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE notifications (
    user_id    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    id         TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    body       TEXT,
    data       TEXT,
    link       TEXT,
    created_at TEXT    NOT NULL,
    read_at    TEXT,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX notifications_id ON notifications (id);
-- Serves "unread only" listings and mark-read without touching read rows.
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_at IS NULL;

CREATE TABLE idempotency_keys (
    service     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (service, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
