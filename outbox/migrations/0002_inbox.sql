-- Inbox: one row per (consumer, event) handled, so a redelivered event is recognised and skipped.
CREATE TABLE IF NOT EXISTS inbox (
    consumer   text        NOT NULL,
    event_id   uuid        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- retention: handled rows by age
CREATE INDEX IF NOT EXISTS inbox_handled_at_idx ON inbox (handled_at);
