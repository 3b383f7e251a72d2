-- Web Push (issue 24): the browsers' push subscriptions, and the outbox their pushes are
-- sent from. Both tables are new: a previous release never reads them.
--
-- An endpoint belongs to one user (unique): re-subscribing it under another user moves it.
-- `retry_at` and `failures` are the subscription's backoff after a 429 or a 5xx, kept here
-- so every replica honours it.
CREATE TABLE push_subscriptions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    endpoint TEXT NOT NULL UNIQUE,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    expiration_time BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    retry_at TIMESTAMPTZ,
    failures INT NOT NULL DEFAULT 0
);
CREATE INDEX push_subscriptions_user_id ON push_subscriptions (user_id);

-- The MQTT outbox's rows (a kind and a JSON payload, written in the committing
-- transaction), fanned out per subscription at commit: each subscription is its own
-- ordered queue, so a slow or dead one holds up nobody else. A removed subscription's rows
-- are deleted with it. No foreign key: a publish would then lock the subscriptions it
-- fans out to, and fail outright when one is deleted under it; a row that races past a
-- deletion is never leased (leases start from the subscriptions) and goes at its TTL.
CREATE TABLE webpush_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'unread')),
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webpush_outbox_subscription_id ON webpush_outbox (subscription_id, id);
