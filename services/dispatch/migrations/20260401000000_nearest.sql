-- Nearest-neighbour search for couriers and waiting waybills (issue #11): a GiST index over a
-- planar projection of each position answers `ORDER BY plane <-> origin LIMIT k` by walking
-- only the few nearest entries, however many rows there are. Built-in `point` type; no
-- extension needed.
--
-- The plane is the spherical Mercator projection in radians: x = lon, y = asinh(tan(lat)),
-- latitude clamped to ±89°, exactly as `domain::plane_of` computes search origins. It is a
-- generated column, so existing rows get it when this migration runs and every writer, old
-- or new, keeps it in step with lat/lon. Dispatch re-ranks what the index returns by exact
-- (haversine) distance and applies the radius itself; `domain::PlanarSearch` bounds the
-- projection's distortion so that the search stays exact.

ALTER TABLE couriers
    ADD COLUMN plane point NOT NULL GENERATED ALWAYS AS (
        point(radians(lon), asinh(tan(radians(least(greatest(lat, -89.0), 89.0)))))
    ) STORED,
    -- The highest capacity (JWL_COURIER_CAPACITY) a dispatch replica configured with has
    -- written to the row: every location update raises it to the writer's, and so does each
    -- replica for every row at start-up. Only the index's predicate uses it: a courier with
    -- fewer live waybills than the configured capacity always has fewer than this, so it is
    -- always in the index; searches still compare with the configured capacity. (After
    -- lowering the capacity, `UPDATE couriers SET capacity = <new>` shrinks the index again.)
    ADD COLUMN capacity integer NOT NULL DEFAULT 1;

-- Couriers with spare capacity only: a full courier is never walked by the search.
CREATE INDEX couriers_available_nearest ON couriers USING gist (plane)
    WHERE live_waybills < capacity;

ALTER TABLE waybills
    ADD COLUMN pickup_plane point NOT NULL GENERATED ALWAYS AS (
        point(radians(pickup_lon),
              asinh(tan(radians(least(greatest(pickup_lat, -89.0), 89.0)))))
    ) STORED;

CREATE INDEX waybills_waiting_nearest ON waybills USING gist (pickup_plane)
    WHERE status = 'waiting';
