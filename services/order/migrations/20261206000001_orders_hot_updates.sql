-- An open order is one without `finished_at`, so that the read model's updates of an open order
-- (pending → paid → reserved → waybill_created: about two per saga) can be HOT updates: the
-- partial indexes no longer name `status`, no column an index reads changes until the order
-- finishes, and each page keeps room for the new row versions. Before, every one of those
-- updates wrote a new entry into the primary key and into both partial indexes of open orders
-- (whose entries then piled up dead until a vacuum, under the admission probe's scan).

-- orders that finished before `finished_at` existed get it now, so that "open" and "without
-- finished_at" are the same thing for every row, which the constraint below keeps true
UPDATE orders SET finished_at = updated_at
WHERE finished_at IS NULL AND status NOT IN ('pending', 'paid', 'reserved', 'waybill_created');

ALTER TABLE orders ADD CONSTRAINT orders_finished_iff_terminal
    CHECK ((finished_at IS NULL) = (status IN ('pending', 'paid', 'reserved', 'waybill_created')));

-- the deadline timer's scan and admission's open orders, as before, by the new predicate (the
-- queries must repeat it literally for the planner to use these indexes)
CREATE INDEX IF NOT EXISTS orders_unfinished_deadline_idx
    ON orders (deadline)
    WHERE cancel_requested_at IS NULL AND finished_at IS NULL;
CREATE INDEX IF NOT EXISTS orders_unfinished_created_idx
    ON orders (created_at)
    WHERE finished_at IS NULL;
DROP INDEX IF EXISTS orders_open_deadline_idx;
DROP INDEX IF EXISTS orders_open_created_idx;

-- room on each page for an order's next versions (a HOT update needs it on the same page);
-- applies to pages written from now on
ALTER TABLE orders SET (fillfactor = 70);
