-- One row per user: the user's latest seq and unread count, bumped in the same transaction
-- as every insert. Its row lock orders concurrent publishes to one user, so seq order is
-- commit order, and the unread badge is one primary-key lookup, never a scan.
CREATE TABLE user_cursors (
    user_id  TEXT   PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    unread   BIGINT NOT NULL CHECK (unread >= 0),
    -- Bumped by every change to this row, so live updates that arrive out of order
    -- (from several replicas, over Redis) can be put back in order.
    version  BIGINT NOT NULL
);

CREATE TABLE notifications (
    user_id    TEXT        NOT NULL,
    seq        BIGINT      NOT NULL,
    id         UUID        NOT NULL,
    type       TEXT        NOT NULL,
    title      TEXT        NOT NULL,
    body       TEXT,
    data       JSONB,
    link       TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    read_at    TIMESTAMPTZ,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX notifications_id ON notifications (id);
-- Serves "unread only" listings and mark-read without touching read rows.
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_at IS NULL;

CREATE TABLE idempotency_keys (
    service     TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint TEXT        NOT NULL,
    response    TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (service, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
