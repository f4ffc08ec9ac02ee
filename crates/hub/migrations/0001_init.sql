-- The hub's schema, version 1.
--
-- Portable SQL: it runs unchanged on SQLite (the embedded default) and PostgreSQL. Times are
-- BIGINT milliseconds since the unix epoch, JSON documents are TEXT, flags are BIGINT 0/1, and
-- every key is chosen by the application (no AUTOINCREMENT / SERIAL).

CREATE TABLE hub_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name),
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT,
    token_hash TEXT,
    created_at BIGINT NOT NULL,
    token_changed_at BIGINT NOT NULL,
    last_seen BIGINT
);

CREATE TABLE entities (
    device_id TEXT NOT NULL REFERENCES devices (id),
    topic_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    registration TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, topic_id)
);

-- Retained per-entity values: twin fragments (kind 'twin'), capabilities ('cmd'), health ('health').
CREATE TABLE entity_values (
    device_id TEXT NOT NULL REFERENCES devices (id),
    topic_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, topic_id, kind, name)
);

CREATE TABLE measurements (
    device_id TEXT NOT NULL,
    topic_id TEXT NOT NULL,
    measurement_type TEXT NOT NULL,
    time BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX measurements_by_device_type_time ON measurements (device_id, measurement_type, time);
CREATE INDEX measurements_by_time ON measurements (time);

CREATE TABLE events (
    device_id TEXT NOT NULL,
    topic_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    time BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    text TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX events_by_device_type_time ON events (device_id, event_type, time);
CREATE INDEX events_by_time ON events (time);

-- One row per raise; a clear closes the open row of the same (device, entity, type).
CREATE TABLE alarms (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    topic_id TEXT NOT NULL,
    alarm_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    text TEXT,
    payload TEXT NOT NULL,
    raised_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    cleared_at BIGINT
);
CREATE INDEX alarms_by_device_type ON alarms (device_id, topic_id, alarm_type, cleared_at);
CREATE INDEX alarms_by_time ON alarms (raised_at);

CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES models (name),
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE TABLE variants (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    hardware_class TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs (sha256),
    size BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (model, version, hardware_class),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

CREATE TABLE aliases (
    model TEXT NOT NULL REFERENCES models (name),
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model, alias)
);

CREATE TABLE alias_history (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    previous TEXT,
    version TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    changed_by TEXT NOT NULL
);
CREATE INDEX alias_history_by_model ON alias_history (model, changed_at);

CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id),
    topic_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    model TEXT,
    version TEXT,
    action TEXT,
    hardware_class TEXT,
    package_sha256 TEXT,
    request TEXT NOT NULL,
    response TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_count BIGINT NOT NULL,
    last_sent_at BIGINT,
    cleared_at BIGINT
);
CREATE INDEX commands_by_device ON commands (device_id, created_at);
CREATE INDEX commands_pending ON commands (device_id, status);

CREATE TABLE command_transitions (
    command_id TEXT NOT NULL REFERENCES commands (id),
    seq BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL,
    PRIMARY KEY (command_id, seq)
);

-- What the hub knows a device has installed: the last software_list result, kept current by
-- successful software_update commands.
CREATE TABLE installed_software (
    device_id TEXT NOT NULL REFERENCES devices (id),
    software_type TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, software_type, name)
);

-- Every successful model install, for rollback to the previous version.
CREATE TABLE model_installs (
    device_id TEXT NOT NULL REFERENCES devices (id),
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    command_id TEXT NOT NULL,
    installed_at BIGINT NOT NULL
);
CREATE INDEX model_installs_by_device ON model_installs (device_id, model, installed_at);
