-- What intake admission reads (src/admission.rs): the open orders and the orders that finished
-- recently, each through a small partial index, so a sample costs the same however many orders
-- the table holds.

-- when the order reached its first terminal status (database clock); NULL while it is open and for
-- orders that finished before this migration (admission only looks at the last seconds)
ALTER TABLE orders ADD COLUMN IF NOT EXISTS finished_at timestamptz;

-- the open orders, oldest first. The status list is the complement of the terminal statuses
-- (domain::OrderStatus::is_terminal) and must match the probe's query literally.
CREATE INDEX IF NOT EXISTS orders_open_created_idx
    ON orders (created_at)
    WHERE status IN ('pending', 'paid', 'reserved', 'waybill_created');

CREATE INDEX IF NOT EXISTS orders_finished_idx
    ON orders (finished_at)
    WHERE finished_at IS NOT NULL;
