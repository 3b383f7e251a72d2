-- Issue 25 on Web Push: users whose pushes their quiet hours hold back, and until when (see
-- the Postgres migration). Additive: a previous release never reads it.
CREATE TABLE push_quiet (
    user_id TEXT PRIMARY KEY NOT NULL,
    until   TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX push_quiet_until ON push_quiet (until);
