-- Scheduled notifications (`deliver_at`, issue 26): the publish request as the service sent it
-- (validated, without `deliver_at`), kept until its time. At the time one replica leases the
-- row (`leased_until`, `leased_by`) and publishes it; the publish's own transaction sets
-- `delivered_at` (and for a topic, `topic_after`: how far the fan-out got), so a crash never
-- doubles or loses it. A delivered row is kept for a day only, to answer a late cancel with 409.
-- Additive: a new table, which the previous release neither reads nor writes.
CREATE TABLE scheduled (
    id           UUID        PRIMARY KEY,
    service      TEXT        NOT NULL,
    deliver_at   TIMESTAMPTZ NOT NULL,
    request      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    leased_until TIMESTAMPTZ,
    leased_by    UUID,
    topic_after  TEXT,
    delivered_at TIMESTAMPTZ
);
-- The scheduler's pick (due, pending), and the purge of delivered rows.
CREATE INDEX scheduled_due ON scheduled (deliver_at) WHERE delivered_at IS NULL;
CREATE INDEX scheduled_delivered ON scheduled (delivered_at) WHERE delivered_at IS NOT NULL;
-- A service's list (by id: UUIDv7, creation order) and its cap on pending rows.
CREATE INDEX scheduled_service ON scheduled (service, id) WHERE delivered_at IS NULL;
