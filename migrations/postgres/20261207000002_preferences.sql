-- Issue 25: each user's preferences (mute rules, quiet hours), applied at commit.
--
-- Additive only: a previous release ignores both the table and the new column (its cursor
-- upsert leaves `prefs_version` alone, and it is nullable).
--
-- `document` is the validated preferences document (JSON), `version` its ETag. The same
-- version is kept on the user's cursor row: every publish locks that row anyway, so it
-- returns the version in force at its commit with no extra read (see group_commit.rs).
CREATE TABLE preferences (
    user_id    TEXT        PRIMARY KEY NOT NULL,
    version    BIGINT      NOT NULL,
    document   TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

ALTER TABLE user_cursors ADD COLUMN prefs_version BIGINT;
