-- Issue 26: expiring and collapsing notifications (see the Postgres migration for why side
-- tables). Additive: a previous release never reads them. Times are stored as the RFC 3339
-- text every other time column here uses (fixed width, so text order is time order).
CREATE TABLE inbox_expiry (
    user_id    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    expires_at TEXT    NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_expiry_due ON inbox_expiry (expires_at);

CREATE TABLE inbox_collapse (
    user_id      TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    collapse_key TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (user_id, service, collapse_key)
) WITHOUT ROWID;
