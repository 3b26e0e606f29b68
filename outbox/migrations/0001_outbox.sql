-- Transactional outbox: events written in the same transaction as the state change that caused
-- them, published to the broker by the relay in `seq` order.
CREATE TABLE IF NOT EXISTS outbox (
    seq          bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    headers      jsonb       NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    -- set when the broker rejected the row for good (e.g. larger than max_payload);
    -- a parked row is no longer retried until an operator clears this column
    parked_at    timestamptz,
    published_at timestamptz
);

-- the relay's claim: pending rows in seq order
CREATE INDEX IF NOT EXISTS outbox_pending_idx
    ON outbox (seq) WHERE published_at IS NULL AND parked_at IS NULL;

-- retention: published rows by age
CREATE INDEX IF NOT EXISTS outbox_published_at_idx
    ON outbox (published_at) WHERE published_at IS NOT NULL;
