-- Dispatch: couriers, the waybills it assigns, and cancellations that arrived before a waybill.
--
-- Positions are indexed by their H3 cell at a fixed resolution (see src/domain.rs), stored as
-- bigint, so every replica finds the same candidates with `cell = ANY($cells)`.

CREATE TABLE couriers (
    courier_id     text PRIMARY KEY,
    lat            double precision NOT NULL,
    lon            double precision NOT NULL,
    cell           bigint NOT NULL,
    live_waybills  integer NOT NULL DEFAULT 0 CHECK (live_waybills >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX couriers_by_cell ON couriers (cell);

CREATE TABLE waybills (
    waybill_id         uuid PRIMARY KEY,
    order_id           uuid NOT NULL UNIQUE,
    pickup_lat         double precision NOT NULL,
    pickup_lon         double precision NOT NULL,
    pickup_cell        bigint NOT NULL,
    status             text NOT NULL CHECK (status IN ('waiting', 'assigned', 'failed', 'delivered')),
    courier_id         text,
    distance_km        double precision,
    deadline           timestamptz NOT NULL,
    failure_reason     text CHECK (failure_reason IN ('no_courier', 'customer', 'deadline')),
    -- the `waybill_created` event, so timer-born events can name their cause and trace
    cause_event_id     uuid NOT NULL,
    cause_traceparent  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('assigned', 'delivered')) = (courier_id IS NOT NULL)),
    CHECK ((courier_id IS NULL) = (distance_km IS NULL)),
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
);
CREATE INDEX waybills_waiting_by_cell ON waybills (pickup_cell) WHERE status = 'waiting';
CREATE INDEX waybills_waiting_by_deadline ON waybills (deadline) WHERE status = 'waiting';

-- An `order.cancel_requested` that arrived before the order's `waybill_created`.
CREATE TABLE cancel_tombstones (
    order_id        uuid PRIMARY KEY,
    reason          text NOT NULL CHECK (reason IN ('customer', 'deadline')),
    cause_event_id  uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
