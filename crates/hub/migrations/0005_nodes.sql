-- Schema version 5: several hub nodes share one database (PostgreSQL).
--
-- Every running node has a row and refreshes its heartbeat; a node whose heartbeat is older than
-- the cluster's node timeout (or that stopped) is gone. Which node a device is connected to is a
-- row of `device_sessions` (one per device: a newer connection on any node replaces it), so any
-- node can tell whether a device is online. Portable SQL as in 0001.

CREATE TABLE hub_nodes (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT,
    http TEXT,
    mqtt TEXT
);

CREATE TABLE device_sessions (
    device_id TEXT PRIMARY KEY REFERENCES devices (id),
    node_id TEXT NOT NULL,
    connection BIGINT NOT NULL,
    connected_at BIGINT NOT NULL
);
CREATE INDEX device_sessions_by_node ON device_sessions (node_id);

-- Commands the hub gave up on (no final state within commands.expire_after_secs) are failed by
-- the once-per-fleet expiry, which finds them by creation time.
CREATE INDEX commands_open ON commands (status, created_at);
