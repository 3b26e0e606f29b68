-- The order service's own tables: orders (ingest + status read model), their timelines and the
-- idempotency keys of `POST /v1/orders`.

CREATE TABLE IF NOT EXISTS orders (
    order_id            uuid             PRIMARY KEY,
    -- the JWT `sub` of whoever placed the order
    customer_id         text             NOT NULL,
    status              text             NOT NULL CHECK (status IN (
                            'pending', 'paid', 'reserved', 'waybill_created', 'dispatched',
                            'delivered', 'rejected', 'cancelled')),
    -- why the order was cancelled; only set while status = 'cancelled'
    reason              text             CHECK (reason IN (
                            'out_of_stock', 'no_courier', 'customer', 'deadline')),
    amount_cents        bigint           NOT NULL CHECK (amount_cents >= 0),
    items               jsonb            NOT NULL,
    pickup_lat          double precision NOT NULL,
    pickup_lon          double precision NOT NULL,
    dropoff_lat         double precision NOT NULL,
    dropoff_lon         double precision NOT NULL,
    waybill_id          uuid,
    courier_id          text,
    deadline            timestamptz      NOT NULL,
    -- set once, by the customer's cancel or the deadline timer, when order.cancel_requested is emitted
    cancel_requested_at timestamptz,
    cancel_reason       text             CHECK (cancel_reason IN ('customer', 'deadline')),
    created_at          timestamptz      NOT NULL,
    updated_at          timestamptz      NOT NULL,
    CHECK ((status = 'cancelled') = (reason IS NOT NULL)),
    CHECK ((cancel_requested_at IS NULL) = (cancel_reason IS NULL))
);

-- the deadline timer's scan: open orders without a cancel request, by deadline. The status list
-- is the complement of the terminal statuses (domain::OrderStatus::is_terminal) and must match
-- the timer's query literally for the planner to use this index.
CREATE INDEX IF NOT EXISTS orders_open_deadline_idx
    ON orders (deadline)
    WHERE cancel_requested_at IS NULL
      AND status IN ('pending', 'paid', 'reserved', 'waybill_created');

-- every event of an order, once (keyed by event id, so redeliveries do not duplicate)
CREATE TABLE IF NOT EXISTS order_timeline (
    event_id   uuid        PRIMARY KEY,
    order_id   uuid        NOT NULL REFERENCES orders (order_id),
    event_type text        NOT NULL,
    event_time timestamptz NOT NULL,
    source     text        NOT NULL
);

CREATE INDEX IF NOT EXISTS order_timeline_order_idx
    ON order_timeline (order_id, event_time, event_id);

-- `Idempotency-Key` of POST /v1/orders, per customer: the request's fingerprint and the response
-- it got, replayed for a repeat of the same request
CREATE TABLE IF NOT EXISTS idempotency_keys (
    customer_id     text        NOT NULL,
    idempotency_key text        NOT NULL,
    -- sha256 of the canonical JSON of the request body
    request_hash    bytea       NOT NULL,
    order_id        uuid        NOT NULL REFERENCES orders (order_id) DEFERRABLE INITIALLY DEFERRED,
    response_status integer     NOT NULL,
    response_body   text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, idempotency_key)
);
