-- The storage layout of the performance issue: see the Postgres migration of the same name.
-- AUTOINCREMENT: a message id is never reused, so a derived notification id never repeats.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    service    TEXT,
    type       TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    body       TEXT,
    data       TEXT,
    link       TEXT,
    topic      TEXT,
    created_at TEXT    NOT NULL
);

CREATE TABLE inbox (
    user_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    message_id  INTEGER NOT NULL,
    ordinal     INTEGER NOT NULL,
    legacy_id   TEXT,
    read_at     TEXT,
    archived_at TEXT,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_unread ON inbox (user_id, seq) WHERE read_at IS NULL;
CREATE INDEX inbox_message ON inbox (message_id);
CREATE UNIQUE INDEX inbox_legacy_id ON inbox (legacy_id) WHERE legacy_id IS NOT NULL;

-- Upgrade in place: each existing notification becomes its own message.
CREATE TEMP TABLE moving AS
    SELECT row_number() OVER (ORDER BY created_at, user_id, seq) AS mid, * FROM notifications;
INSERT INTO messages (id, type, title, body, data, link, topic, created_at)
    SELECT mid, type, title, body, data, link, topic, created_at FROM moving;
INSERT INTO inbox (user_id, seq, message_id, ordinal, legacy_id, read_at)
    SELECT user_id, seq, mid, 0, id, read_at FROM moving;
DROP TABLE moving;
DROP TABLE notifications;

ALTER TABLE user_cursors ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
