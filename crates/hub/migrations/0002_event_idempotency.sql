-- Devices store-and-forward events and may send one again after a lost acknowledgement; an
-- idempotency key in the payload (`idempotency_key`) makes the second copy a no-op. Events without
-- a key (NULL) are never deduplicated: NULLs are distinct in a unique index (SQLite and PostgreSQL).
ALTER TABLE events ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX events_by_device_idempotency_key ON events (device_id, idempotency_key);
