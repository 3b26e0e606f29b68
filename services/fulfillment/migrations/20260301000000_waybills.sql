-- Fulfillment's waybills (运单): one per order.
--
-- A row created by a `dispatch.failed` that arrived before `inventory.reserved` is a tombstone:
-- status `cancelled`, no pickup/dropoff yet. The late reservation fills those in and creates
-- nothing live.
CREATE TABLE waybills (
    waybill_id   uuid PRIMARY KEY,
    order_id     uuid NOT NULL UNIQUE,
    status       text NOT NULL CHECK (status IN ('open', 'assigned', 'cancelled', 'delivered')),
    courier_id   text,
    pickup_lat   double precision,
    pickup_lon   double precision,
    dropoff_lat  double precision,
    dropoff_lon  double precision,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((pickup_lat IS NULL) = (pickup_lon IS NULL)),
    CHECK ((dropoff_lat IS NULL) = (dropoff_lon IS NULL)),
    CHECK (status <> 'open' OR pickup_lat IS NOT NULL),
    CHECK (status NOT IN ('assigned', 'delivered') OR courier_id IS NOT NULL)
);
