-- Schema version 3: the asset register of visual inspection.
--
-- Portable SQL as in 0001 (BIGINT ms times, TEXT JSON, application-chosen keys); DOUBLE PRECISION
-- has REAL affinity in SQLite.

-- The register. `condition` is NULL until an inspection result or a repair sets it;
-- `condition_observed_at` is the observation time of what set it (the update rule compares
-- against it, so a result observed earlier never overwrites a later one).
CREATE TABLE assets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    asset_type TEXT NOT NULL,
    site TEXT,
    latitude DOUBLE PRECISION,
    longitude DOUBLE PRECISION,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    condition TEXT,
    condition_observed_at BIGINT,
    condition_changed_at BIGINT,
    last_inspection_at BIGINT,
    inspection_count BIGINT NOT NULL
);
CREATE INDEX assets_by_site ON assets (site);

-- Every inspection result a device reported, linked or not. `asset_id` is the id the device
-- named (no foreign key: unknown ids are kept), `linked` whether it was registered at the time.
CREATE TABLE inspections (
    id TEXT PRIMARY KEY,
    asset_id TEXT,
    linked BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    topic_id TEXT NOT NULL,
    observed_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    model TEXT NOT NULL,
    label TEXT,
    confidence DOUBLE PRECISION,
    asset_type TEXT,
    condition TEXT,
    outcome TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX inspections_by_asset ON inspections (asset_id, observed_at);
CREATE INDEX inspections_by_device ON inspections (device_id, observed_at);

-- Condition changes per asset, in order.
CREATE TABLE asset_conditions (
    asset_id TEXT NOT NULL REFERENCES assets (id),
    seq BIGINT NOT NULL,
    condition TEXT NOT NULL,
    previous TEXT,
    observed_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    source TEXT NOT NULL,
    inspection_id TEXT,
    changed_by TEXT NOT NULL,
    PRIMARY KEY (asset_id, seq)
);

-- Alarms the hub raises about an asset (type `asset_condition`) carry its id; device alarms
-- leave it NULL, and device raises and clears never touch rows with an asset id.
ALTER TABLE alarms ADD COLUMN asset_id TEXT;
CREATE INDEX alarms_by_asset ON alarms (asset_id, cleared_at);
