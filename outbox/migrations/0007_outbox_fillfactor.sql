-- Room on each page for the relay's mark. A row is inserted once and updated once (published_at
-- set by the relay); with pages half full the new version lands on the same page, and
-- PostgreSQL then logs only the bytes that changed instead of the whole row (~1 KB of headers
-- and payload): about 6 times less WAL per mark. Applies to pages written from now on.
ALTER TABLE outbox SET (fillfactor = 50);
