//! The device registry's storage: devices and their token hashes, the inventory devices publish
//! (entities, twin fragments, capabilities, health, installed software) and which hub node each
//! connected device is on. Reads go through [`DeviceStore`]; the writes that device messages cause
//! run inside the ingest writer's transaction ([`write_entity`], [`write_entity_value`],
//! [`write_session`]).

use proto::DeviceId;
use proto::api::{EntityInfo, InstalledSoftware, RetainedValue};
use sqlx::Row as _;

use crate::db::{Db, Row, Tx};
use crate::stdx::ts;

/// Kind of a retained per-entity value in `entity_values`: a twin fragment.
pub const KIND_TWIN: &str = "twin";
/// Capability (`cmd/<op>`).
pub const KIND_CMD: &str = "cmd";
/// Health (`status/health`).
pub const KIND_HEALTH: &str = "health";

/// The main device's entity topic id.
pub const MAIN_ENTITY: &str = "device/main//";

/// A registered device as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its id.
    pub id: DeviceId,
    /// Display name.
    pub name: Option<String>,
    /// Registration time, ms.
    pub created_at: i64,
    /// Last connect or disconnect, ms.
    pub last_seen: Option<i64>,
    /// Whether a token is set (not revoked).
    pub has_token: bool,
    /// The `twin/edgemlops` fragment (device facts), as received.
    pub facts: Option<String>,
    /// Whether a live hub node holds a connection of it.
    pub connected: bool,
}

/// What the registry knows a device published about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    /// Registered entities.
    pub entities: Vec<EntityInfo>,
    /// Twin fragments.
    pub twin: Vec<RetainedValue>,
    /// Capabilities.
    pub capabilities: Vec<RetainedValue>,
    /// Health.
    pub health: Vec<RetainedValue>,
    /// Installed software.
    pub software: Vec<InstalledSoftware>,
}

/// A connection's start or end, written by the ingest writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// The device connected to `node` (connection `connection`): it is online there.
    Connected {
        /// Hub node.
        node: String,
        /// Connection id on that node.
        connection: u64,
    },
    /// That connection ended (a newer one, on any node, is left alone).
    Disconnected {
        /// Hub node.
        node: String,
        /// Connection id on that node.
        connection: u64,
    },
}

fn device_id(s: String) -> DeviceId {
    // Stored only after validation; an unreadable id means a corrupt database.
    DeviceId::new(s).unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id"))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// The columns of a [`DeviceRecord`]; `$1` is the oldest heartbeat of a live node.
const COLUMNS: &str = "d.id, d.name, d.created_at, d.last_seen, \
     CASE WHEN d.token_hash IS NOT NULL THEN 1 ELSE 0 END, \
     (SELECT value FROM entity_values v WHERE v.device_id = d.id AND v.topic_id = 'device/main//' \
      AND v.kind = 'twin' AND v.name = 'edgemlops'), \
     CASE WHEN EXISTS (SELECT 1 FROM device_sessions s JOIN hub_nodes n ON n.id = s.node_id \
      WHERE s.device_id = d.id AND n.stopped_at IS NULL AND n.heartbeat_at >= $1) THEN 1 ELSE 0 END";

fn record(r: &Row) -> DeviceRecord {
    DeviceRecord {
        id: device_id(r.get(0)),
        name: r.get(1),
        created_at: r.get(2),
        last_seen: r.get(3),
        has_token: r.get::<i64, _>(4) != 0,
        facts: r.get(5),
        connected: r.get::<i64, _>(6) != 0,
    }
}

/// Reads and API writes of the device registry.
#[derive(Clone, Debug)]
pub struct DeviceStore {
    db: Db,
}

impl DeviceStore {
    /// The store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a device with its token hash; false when the id exists.
    pub async fn insert(
        &self,
        id: &DeviceId,
        name: Option<&str>,
        token_hash: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO devices (id, name, token_hash, created_at, token_changed_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(token_hash)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every device, by id; `live_since`: the oldest heartbeat of a node that counts as live.
    pub async fn list(&self, live_since: i64) -> Result<Vec<DeviceRecord>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM devices d ORDER BY d.id"))
            .bind(live_since)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(record).collect())
    }

    /// One device.
    pub async fn get(&self, id: &DeviceId, live_since: i64) -> Result<Option<DeviceRecord>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices d WHERE d.id = $2"))
            .bind(live_since)
            .bind(id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(record))
    }

    /// Whether the device is registered.
    pub async fn exists(&self, id: &DeviceId) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(found.is_some())
    }

    /// The device's token hash: `None` for an unknown device, `Some(None)` when revoked.
    pub async fn token_hash(&self, id: &DeviceId) -> Result<Option<Option<String>>, sqlx::Error> {
        sqlx::query_scalar("SELECT token_hash FROM devices WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.db.pool())
            .await
    }

    /// Sets (or with `None` revokes) the token hash; false for an unknown device.
    pub async fn set_token_hash(
        &self,
        id: &DeviceId,
        hash: Option<&str>,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE devices SET token_hash = $1, token_changed_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now)
            .bind(id.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A twin fragment of the main device, as received.
    pub async fn twin(&self, id: &DeviceId, fragment: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT value FROM entity_values WHERE device_id = $1 AND topic_id = $2 AND kind = $3 AND name = $4",
        )
        .bind(id.as_str())
        .bind(MAIN_ENTITY)
        .bind(KIND_TWIN)
        .bind(fragment)
        .fetch_optional(self.db.pool())
        .await
    }

    /// Entities, retained values and installed software of a device.
    pub async fn inventory(&self, id: &DeviceId) -> Result<Inventory, sqlx::Error> {
        let pool = self.db.pool();
        let entities = sqlx::query(
            "SELECT topic_id, entity_type, registration, updated_at FROM entities WHERE device_id = $1 ORDER BY topic_id",
        )
        .bind(id.as_str())
        .fetch_all(pool)
        .await?;
        let values = sqlx::query(
            "SELECT kind, topic_id, name, value, updated_at FROM entity_values WHERE device_id = $1 \
             ORDER BY kind, topic_id, name",
        )
        .bind(id.as_str())
        .fetch_all(pool)
        .await?;
        let software = sqlx::query(
            "SELECT software_type, name, version FROM installed_software WHERE device_id = $1 \
             ORDER BY software_type, name",
        )
        .bind(id.as_str())
        .fetch_all(pool)
        .await?;
        let of_kind = |kind: &str| -> Vec<RetainedValue> {
            values
                .iter()
                .filter(|r| r.get::<String, _>(0) == kind)
                .map(|r| RetainedValue {
                    topic_id: r.get(1),
                    name: r.get(2),
                    value: json(&r.get::<String, _>(3)),
                    updated_at: ts(r.get(4)),
                })
                .collect()
        };
        Ok(Inventory {
            entities: entities
                .iter()
                .map(|r| EntityInfo {
                    topic_id: r.get(0),
                    entity_type: r.get(1),
                    registration: json(&r.get::<String, _>(2)),
                    updated_at: ts(r.get(3)),
                })
                .collect(),
            twin: of_kind(KIND_TWIN),
            capabilities: of_kind(KIND_CMD),
            health: of_kind(KIND_HEALTH),
            software: software
                .iter()
                .map(|r| InstalledSoftware {
                    software_type: r.get(0),
                    name: r.get(1),
                    version: r.get(2),
                })
                .collect(),
        })
    }

    /// Removes the sessions of nodes whose heartbeat is older than `live_since` (their devices are
    /// offline); returns how many.
    pub async fn forget_sessions_of_dead_nodes(&self, live_since: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM device_sessions WHERE node_id IN \
             (SELECT id FROM hub_nodes WHERE stopped_at IS NOT NULL OR heartbeat_at < $1)",
        )
        .bind(live_since)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// An entity registration (`Some((type, payload))`) or deregistration, in the writer's transaction.
pub async fn write_entity(
    tx: &mut Tx,
    device: &str,
    topic_id: &str,
    registration: Option<(&str, &str)>,
    now: i64,
) -> Result<(), sqlx::Error> {
    match registration {
        Some((entity_type, payload)) => {
            sqlx::query(
                "INSERT INTO entities (device_id, topic_id, entity_type, registration, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, topic_id) DO UPDATE SET \
                 entity_type = excluded.entity_type, registration = excluded.registration, \
                 updated_at = excluded.updated_at",
            )
            .bind(device)
            .bind(topic_id)
            .bind(entity_type)
            .bind(payload)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM entities WHERE device_id = $1 AND topic_id = $2")
                .bind(device)
                .bind(topic_id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// A retained per-entity value (twin fragment, capability, health) set or cleared, in the
/// writer's transaction.
pub async fn write_entity_value(
    tx: &mut Tx,
    device: &str,
    topic_id: &str,
    kind: &str,
    name: &str,
    value: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    match value {
        Some(value) => {
            sqlx::query(
                "INSERT INTO entity_values (device_id, topic_id, kind, name, value, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, topic_id, kind, name) \
                 DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(device)
            .bind(topic_id)
            .bind(kind)
            .bind(name)
            .bind(value)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query(
                "DELETE FROM entity_values WHERE device_id = $1 AND topic_id = $2 AND kind = $3 AND name = $4",
            )
            .bind(device)
            .bind(topic_id)
            .bind(kind)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// A connection's start or end: the session row and the device's `last_seen`, in the writer's
/// transaction.
pub async fn write_session(
    tx: &mut Tx,
    device: &str,
    change: &SessionChange,
    now: i64,
) -> Result<(), sqlx::Error> {
    let connection = |c: u64| i64::try_from(c).unwrap_or(i64::MAX);
    match change {
        SessionChange::Connected { node, connection: c } => {
            sqlx::query(
                "INSERT INTO device_sessions (device_id, node_id, connection, connected_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET node_id = excluded.node_id, \
                 connection = excluded.connection, connected_at = excluded.connected_at",
            )
            .bind(device)
            .bind(node)
            .bind(connection(*c))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        SessionChange::Disconnected { node, connection: c } => {
            sqlx::query(
                "DELETE FROM device_sessions WHERE device_id = $1 AND node_id = $2 AND connection = $3",
            )
            .bind(device)
            .bind(node)
            .bind(connection(*c))
            .execute(&mut **tx)
            .await?;
        }
    }
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(device)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
