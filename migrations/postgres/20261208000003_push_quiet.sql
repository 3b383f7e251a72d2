-- Issue 25 on Web Push: users whose pushes their quiet hours hold back, and until when; the
-- same shape and use as `mqtt_quiet`, one table per bridge channel so each bridge releases
-- only its own holds. Written in the commit that held a notification back (instead of its
-- Web Push rows); at `until` the bridge writes the newest unread notification (which carries
-- the unread count, the badge) to the outbox and deletes the row. Additive: a new table that
-- a previous release never reads.
CREATE TABLE push_quiet (
    user_id TEXT        PRIMARY KEY NOT NULL,
    until   TIMESTAMPTZ NOT NULL
);
CREATE INDEX push_quiet_until ON push_quiet (until);
