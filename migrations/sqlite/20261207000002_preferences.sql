-- Issue 25: each user's preferences (mute rules, quiet hours), applied at commit.
--
-- Additive only: a previous release ignores both the table and the new column (its cursor
-- upsert leaves `prefs_version` alone, and it is nullable). `prefs_version` mirrors
-- `preferences.version` on the row every publish locks; see the Postgres migration.
CREATE TABLE preferences (
    user_id    TEXT    PRIMARY KEY NOT NULL,
    version    INTEGER NOT NULL,
    document   TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
) WITHOUT ROWID;

ALTER TABLE user_cursors ADD COLUMN prefs_version INTEGER;
