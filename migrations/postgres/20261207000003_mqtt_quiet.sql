-- Issue 25: users whose MQTT delivery their quiet hours hold back, and until when. Written in
-- the commit that held a notification back (instead of its outbox rows); at `until` the
-- bridge writes one badge update and the newest unread notification to the outbox and
-- deletes the row. Additive: a previous release never reads it.
CREATE TABLE mqtt_quiet (
    user_id TEXT        PRIMARY KEY NOT NULL,
    until   TIMESTAMPTZ NOT NULL
);
CREATE INDEX mqtt_quiet_until ON mqtt_quiet (until);
