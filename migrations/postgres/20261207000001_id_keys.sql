-- The key of the notification id permutation (see `domain::IdKey`): random, made once here
-- so that every replica reads the same, never in configuration. Ids of messages from
-- `since_message` on are encrypted with it; those handed out before stay as they were.
-- Additive: a previous release ignores this table and keeps handing out plain ids, which
-- still resolve.
CREATE TABLE id_keys (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    key           BYTEA    NOT NULL,
    since_message BIGINT   NOT NULL
);
-- gen_random_uuid() draws from a cryptographic generator: two give 244 random bits.
INSERT INTO id_keys (id, key, since_message)
SELECT 1,
       decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'),
       COALESCE((SELECT max(id) FROM messages), 0) + 1;
