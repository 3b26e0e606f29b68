-- Idempotency keys expire (JWL_IDEMPOTENCY_TTL) and are pruned by age (src/retention.rs).
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);
