-- Issue 26: expiring and collapsing notifications. Two new side tables, nothing else: no
-- existing table is altered or indexed, so this migration takes no lock that blocks writes
-- on a table 0.1.0 uses, and 0.1.0 (which never reads these) keeps working beside it.
--
-- Side tables rather than columns on `inbox`/`messages`: an index on a new column of a large
-- existing table would scan it under a SHARE lock at start-up (docs/upgrading.md, rule 1);
-- a new table is indexed empty. Every row of each table is one the clean-up or the collapse
-- lookup needs, so its plain indexes are what partial ones would be on a shared table.

-- One row per recipient's copy that expires. Reads skip a copy whose `expires_at` has passed
-- (a primary-key lookup per row), the unread count subtracts the user's unread copies that
-- are due but not yet cleaned up, and the clean-up takes the due rows by `expires_at` and
-- deletes the copies with them, like a service retraction. A row whose copy is gone (deleted
-- by its user, pruned, or by a 0.1.0 replica) is removed by the clean-up when it is due.
CREATE TABLE inbox_expiry (
    user_id    TEXT        NOT NULL,
    seq        BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_expiry_due ON inbox_expiry (expires_at);

-- The newest copy each (user, publishing service, collapse key) points at. A publish with a
-- `collapse_key` replaces that copy if it is still there and unread, then points the row at
-- its own copy, all under the user's cursor row lock. A row whose copy is gone or read is
-- simply overwritten by the next publish with the same key.
CREATE TABLE inbox_collapse (
    user_id      TEXT   NOT NULL,
    service      TEXT   NOT NULL,
    collapse_key TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    PRIMARY KEY (user_id, service, collapse_key)
);
