-- Rows the broker rejected for good: counted for the jwl_outbox_parked_rows gauge, listed and
-- un-parked by `jwl outbox ls|retry`.
CREATE INDEX IF NOT EXISTS outbox_parked_idx
    ON outbox (seq) WHERE parked_at IS NOT NULL AND published_at IS NULL;
