-- Stock per SKU. `on_hand` is what the warehouse holds, `reserved` the part of it promised to
-- orders that are not shipped yet, `shipped` what left with a courier (committed reservations).
CREATE TABLE IF NOT EXISTS stock (
    sku        text        PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    on_hand    bigint      NOT NULL CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    shipped    bigint      NOT NULL DEFAULT 0 CHECK (shipped >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

-- One row per order inventory has heard of. `release_requested` is a tombstone: dispatch.failed
-- arrived before payment.authorized, so the late reservation is skipped.
CREATE TABLE IF NOT EXISTS order_reservations (
    order_id   uuid        PRIMARY KEY,
    state      text        NOT NULL
        CHECK (state IN ('release_requested', 'reserved', 'rejected', 'released', 'committed')),
    -- the order lines as received with payment.authorized (null for a tombstone)
    items      jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT order_reservations_tombstone_has_no_items
        CHECK ((state = 'release_requested') = (items IS NULL))
);

-- The quantity of each SKU reserved for an order (duplicate order lines merged).
CREATE TABLE IF NOT EXISTS reservations (
    order_id   uuid        NOT NULL REFERENCES order_reservations (order_id),
    sku        text        NOT NULL REFERENCES stock (sku),
    qty        bigint      NOT NULL CHECK (qty > 0),
    state      text        NOT NULL CHECK (state IN ('reserved', 'released', 'committed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, sku)
);
