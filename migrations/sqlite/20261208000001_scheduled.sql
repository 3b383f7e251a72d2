-- Scheduled notifications (`deliver_at`, issue 26): the publish request as the service sent it
-- (validated, without `deliver_at`), kept until its time. At the time the scheduler publishes
-- it; the publish's own transaction sets `delivered_at` (and for a topic, `topic_after`: how
-- far the fan-out got), so a crash never doubles or loses it. A delivered row is kept for a
-- day only, to answer a late cancel with 409. Times are RFC 3339 text in UTC, as elsewhere.
-- Additive: a new table, which the previous release neither reads nor writes.
CREATE TABLE scheduled (
    id           TEXT PRIMARY KEY,
    service      TEXT NOT NULL,
    deliver_at   TEXT NOT NULL,
    request      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    leased_until TEXT,
    leased_by    TEXT,
    topic_after  TEXT,
    delivered_at TEXT
);
CREATE INDEX scheduled_due ON scheduled (deliver_at) WHERE delivered_at IS NULL;
CREATE INDEX scheduled_delivered ON scheduled (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX scheduled_service ON scheduled (service, id) WHERE delivered_at IS NULL;
