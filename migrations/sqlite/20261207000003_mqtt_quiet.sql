-- Issue 25: users whose MQTT delivery their quiet hours hold back, and until when (see the
-- Postgres migration). Additive: a previous release never reads it.
CREATE TABLE mqtt_quiet (
    user_id TEXT PRIMARY KEY NOT NULL,
    until   TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX mqtt_quiet_until ON mqtt_quiet (until);
