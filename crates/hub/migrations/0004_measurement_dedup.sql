-- Schema version 4: a measurement that carries its own time is stored once.
--
-- Devices store-and-forward measurements and may send one again after a lost acknowledgement.
-- A measurement with its own `time` is identified by (device, entity, type, that time), kept in
-- the new column `sent_time`; a second copy is a no-op (`ON CONFLICT DO NOTHING` in ingest).
-- Measurements without a time of their own get their reception time in `time` and NULL in
-- `sent_time`: NULLs never conflict in a unique index (SQLite and PostgreSQL alike), so they are
-- all kept, as are the rows stored before this version. Portable SQL as in 0001.

ALTER TABLE measurements ADD COLUMN sent_time BIGINT;
CREATE UNIQUE INDEX measurements_once ON measurements (device_id, topic_id, measurement_type, sent_time);
