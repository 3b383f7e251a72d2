-- Topics: a service-managed audience. A publish to a topic is written into every
-- subscriber's own feed (so each gets a seq and an unread count as usual); `topic` on the
-- notification says where it came from, for STOMP's /topic/<name> subscriptions.
CREATE TABLE topic_subscribers (
    topic      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (topic, user_id)
) WITHOUT ROWID;

ALTER TABLE notifications ADD COLUMN topic TEXT;
