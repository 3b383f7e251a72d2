-- The MQTT bridge's transactional outbox. When the bridge is on, the transaction that commits
-- a notification (or changes a user's unread count) writes its row here too, so a message
-- for the broker exists if and only if the change committed. Bridge workers publish the rows
-- in id order per user and delete each one after the broker's PUBACK.
--
-- Per user, ids are in commit order: every writer holds the user's user_cursors row lock
-- while it inserts here, until it commits.
CREATE TABLE mqtt_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('notification', 'unread')),
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A worker reads one user's rows in order, and finds each user's oldest row.
CREATE INDEX mqtt_outbox_user_id ON mqtt_outbox (user_id, id);
