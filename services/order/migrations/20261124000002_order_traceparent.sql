-- The W3C traceparent of the request that created the order, so that events the order service
-- emits later for it (a customer cancel, the deadline timer) stay in the order's one trace.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS traceparent text;
