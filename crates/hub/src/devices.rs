//! The device registry: devices and their credentials, and the inventory the hub knows from what
//! they publish (entities, twin, capabilities, health, installed software).

use proto::DeviceId;
use proto::api::{
    DeviceCredentials, DeviceDetail, DeviceSummary, EntityInfo, InstalledSoftware, RetainedValue,
};
use proto::edgemlops::{DEVICE_FACTS_FRAGMENT, DeviceFacts, HardwareClass};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::auth::DEVICE_TOKEN_PREFIX;
use crate::db::Pool;
use crate::error::{DbContext, HubError};
use crate::ingest::{KIND_CMD, KIND_HEALTH, KIND_TWIN};
use crate::stdx::{new_secret, now_ms, sha256_hex, ts};
use crate::transport::DeviceTransport;

/// The main device's entity topic id.
pub const MAIN_ENTITY: &str = "device/main//";

const SUMMARY_COLUMNS: &str = "d.id, d.name, d.created_at, d.last_seen, d.token_hash IS NOT NULL, \
     (SELECT value FROM entity_values v WHERE v.device_id = d.id AND v.topic_id = 'device/main//' \
      AND v.kind = 'twin' AND v.name = 'edgemlops')";

fn summary(row: &SqliteRow, transport: &dyn DeviceTransport) -> DeviceSummary {
    let id = DeviceId::new(row.get::<String, _>(0))
        .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id"));
    let facts: Option<String> = row.get(5);
    DeviceSummary {
        online: transport.is_online(&id),
        id,
        name: row.get(1),
        created_at: ts(row.get(2)),
        last_seen: row.get::<Option<i64>, _>(3).map(ts),
        has_token: row.get::<bool, _>(4),
        hardware_class: facts
            .and_then(|f| DeviceFacts::parse(f.as_bytes()).ok())
            .map(|f| f.hardware_class.to_string()),
    }
}

/// Registers a device and returns it with its token (shown once).
pub async fn create(
    pool: &Pool,
    transport: &dyn DeviceTransport,
    id: &DeviceId,
    name: Option<&str>,
) -> Result<DeviceCredentials, HubError> {
    let token = new_secret(DEVICE_TOKEN_PREFIX);
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO devices (id, name, token_hash, created_at, token_changed_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(name)
    .bind(sha256_hex(token.as_bytes()))
    .bind(now)
    .execute(pool)
    .await
    .db("registering a device")?;
    if done.rows_affected() == 0 {
        return Err(HubError::Conflict(format!(
            "device '{id}' already exists (issue a new token with POST /devices/{id}/token)"
        )));
    }
    Ok(DeviceCredentials {
        device: get_summary(pool, transport, id).await?,
        token,
    })
}

/// Every device.
pub async fn list(pool: &Pool, transport: &dyn DeviceTransport) -> Result<Vec<DeviceSummary>, HubError> {
    let rows = sqlx::query(&format!("SELECT {SUMMARY_COLUMNS} FROM devices d ORDER BY d.id"))
        .fetch_all(pool)
        .await
        .db("listing devices")?;
    Ok(rows.iter().map(|r| summary(r, transport)).collect())
}

/// One device.
pub async fn get_summary(
    pool: &Pool,
    transport: &dyn DeviceTransport,
    id: &DeviceId,
) -> Result<DeviceSummary, HubError> {
    let row = sqlx::query(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM devices d WHERE d.id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await
    .db("reading a device")?
    .ok_or_else(|| HubError::not_found("device", id.as_str()))?;
    Ok(summary(&row, transport))
}

/// Fails with 404 unless the device is registered.
pub async fn ensure_exists(pool: &Pool, id: &DeviceId) -> Result<(), HubError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .db("reading a device")?;
    found
        .map(|_| ())
        .ok_or_else(|| HubError::not_found("device", id.as_str()))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// One device with its inventory.
pub async fn get(
    pool: &Pool,
    transport: &dyn DeviceTransport,
    id: &DeviceId,
) -> Result<DeviceDetail, HubError> {
    let summary = get_summary(pool, transport, id).await?;
    let entities = sqlx::query(
        "SELECT topic_id, entity_type, registration, updated_at FROM entities WHERE device_id = $1 ORDER BY topic_id",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await
    .db("reading entities")?;
    let values = sqlx::query(
        "SELECT kind, topic_id, name, value, updated_at FROM entity_values WHERE device_id = $1 \
         ORDER BY kind, topic_id, name",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await
    .db("reading twin and capabilities")?;
    let software = sqlx::query(
        "SELECT software_type, name, version FROM installed_software WHERE device_id = $1 ORDER BY software_type, name",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await
    .db("reading installed software")?;
    let of_kind = |kind: &str| -> Vec<RetainedValue> {
        values
            .iter()
            .filter(|r| r.get::<&str, _>(0) == kind)
            .map(|r| RetainedValue {
                topic_id: r.get(1),
                name: r.get(2),
                value: json(r.get::<&str, _>(3)),
                updated_at: ts(r.get(4)),
            })
            .collect()
    };
    Ok(DeviceDetail {
        summary,
        entities: entities
            .iter()
            .map(|r| EntityInfo {
                topic_id: r.get(0),
                entity_type: r.get(1),
                registration: json(r.get::<&str, _>(2)),
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

/// Issues a new token for the device (the old one stops working) and returns it (shown once).
pub async fn rotate_token(
    pool: &Pool,
    transport: &dyn DeviceTransport,
    id: &DeviceId,
) -> Result<DeviceCredentials, HubError> {
    let token = new_secret(DEVICE_TOKEN_PREFIX);
    let done = sqlx::query("UPDATE devices SET token_hash = $1, token_changed_at = $2 WHERE id = $3")
        .bind(sha256_hex(token.as_bytes()))
        .bind(now_ms())
        .bind(id.as_str())
        .execute(pool)
        .await
        .db("issuing a device token")?;
    if done.rows_affected() == 0 {
        return Err(HubError::not_found("device", id.as_str()));
    }
    Ok(DeviceCredentials {
        device: get_summary(pool, transport, id).await?,
        token,
    })
}

/// Revokes the device's token: it can no longer connect until a new one is issued.
pub async fn revoke_token(pool: &Pool, id: &DeviceId) -> Result<(), HubError> {
    let done = sqlx::query("UPDATE devices SET token_hash = NULL, token_changed_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id.as_str())
        .execute(pool)
        .await
        .db("revoking a device token")?;
    if done.rows_affected() == 0 {
        return Err(HubError::not_found("device", id.as_str()));
    }
    Ok(())
}

/// The device's hardware class from its device facts twin fragment, if it published one.
pub async fn hardware_class(pool: &Pool, id: &DeviceId) -> Result<Option<HardwareClass>, HubError> {
    let facts: Option<String> = sqlx::query_scalar(
        "SELECT value FROM entity_values WHERE device_id = $1 AND topic_id = $2 AND kind = $3 AND name = $4",
    )
    .bind(id.as_str())
    .bind(MAIN_ENTITY)
    .bind(KIND_TWIN)
    .bind(DEVICE_FACTS_FRAGMENT)
    .fetch_optional(pool)
    .await
    .db("reading device facts")?;
    Ok(facts
        .and_then(|f| DeviceFacts::parse(f.as_bytes()).ok())
        .map(|f| f.hardware_class))
}

/// Records that the device was seen now.
pub async fn touch(pool: &Pool, id: &DeviceId) -> Result<(), HubError> {
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id.as_str())
        .execute(pool)
        .await
        .db("recording device activity")?;
    Ok(())
}
