-- Relay work shared by partition (`JWL_OUTBOX_PARTITIONS`). Each outbox row carries a stable,
-- non-negative hash of its order (the CloudEvents subject, else the broker subject), written
-- by `enqueue`; a relay of `n` partitions publishes partition `order_hash % n`, so all of an
-- order's rows go through one partition, in `seq` order. The hash does not depend on `n`: the
-- partition count can change without rewriting rows. NULL (a row written by a binary older than
-- this migration) counts as partition 0.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS order_hash integer;

-- rows still to publish get their hash now (published ones are never claimed again)
UPDATE outbox
SET order_hash = hashtext(coalesce(
        (SELECT h ->> 1 FROM jsonb_array_elements(headers) AS h
         WHERE h ->> 0 = 'ce-subject' LIMIT 1),
        subject)) & 2147483647
WHERE published_at IS NULL AND order_hash IS NULL;

-- No index of its own: a partition's claim walks `outbox_pending_idx` (pending rows in `seq`
-- order) and skips the other partitions' rows, about `partitions` × batch rows per claim, and an
-- index on `order_hash % n` would have to know `n`.

-- The partition count the schema's relays run with. A relay leads a partition only when its
-- own count is the recorded one; a relay of another count records its own once it holds every
-- partition lease of the recorded count (no relay of that count is active any more), so relays
-- of two counts never publish at the same time and no order's rows are split between them.
CREATE TABLE IF NOT EXISTS outbox_relay_partitions (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions integer NOT NULL CHECK (partitions >= 1)
);
INSERT INTO outbox_relay_partitions (partitions) VALUES (1) ON CONFLICT DO NOTHING;

-- Relay processes of the schema and how many partitions each leads, refreshed every standby
-- retry; a process leading more than its share gives one up when another leads less.
CREATE TABLE IF NOT EXISTS outbox_relay_members (
    member     uuid        PRIMARY KEY,
    partitions integer     NOT NULL,
    led        integer     NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
