-- The pending rows of one order, for the hand-over check: the outbox insert returns, for each
-- row, the pending rows of its order written before it (see the relay's `handover` module).
CREATE INDEX IF NOT EXISTS outbox_pending_order_idx
    ON outbox (order_hash, seq) WHERE published_at IS NULL AND parked_at IS NULL;
