//! Stored telemetry, queryable by device, type and time range: measurements, events, and alarms
//! (active and cleared). Storing is `ingest`'s job.

use proto::api::{AlarmRecord, EventRecord, MeasurementRecord, TelemetryQuery};
use proto::telemetry::Severity;
use proto::{DeviceId, Timestamp};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::db::Pool;
use crate::error::{DbContext, HubError};
use crate::stdx::ts;

/// Default number of records returned.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Most records returned.
pub const MAX_LIMIT: u32 = 10_000;

/// A validated query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    device: Option<String>,
    kind: Option<String>,
    from: i64,
    to: i64,
    active: Option<bool>,
    limit: i64,
}

impl Filter {
    /// Checks the query parameters.
    pub fn new(q: &TelemetryQuery) -> Result<Self, HubError> {
        let time = |name: &str, s: &Option<String>, default: i64| -> Result<i64, HubError> {
            match s {
                None => Ok(default),
                Some(s) => Timestamp::parse_rfc3339(s)
                    .map(Timestamp::unix_millis)
                    .map_err(|e| HubError::BadRequest(format!("query parameter {name}: {e}"))),
            }
        };
        if let Some(d) = &q.device {
            DeviceId::new(d.as_str()).map_err(|e| HubError::BadRequest(e.to_string()))?;
        }
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(HubError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        let filter = Self {
            device: q.device.clone(),
            kind: q.kind.clone(),
            from: time("from", &q.from, i64::MIN)?,
            to: time("to", &q.to, i64::MAX)?,
            active: q.active,
            limit: i64::from(limit),
        };
        if filter.from > filter.to {
            return Err(HubError::BadRequest("from is after to".into()));
        }
        Ok(filter)
    }
}

fn device_of(r: &SqliteRow) -> DeviceId {
    DeviceId::new(r.get::<String, _>("device_id"))
        .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id"))
}

fn json(r: &SqliteRow, col: &str) -> serde_json::Value {
    serde_json::from_str(r.get::<&str, _>(col)).unwrap_or(serde_json::Value::Null)
}

/// Measurements, newest first.
pub async fn measurements(pool: &Pool, f: &Filter) -> Result<Vec<MeasurementRecord>, HubError> {
    let rows = sqlx::query(
        "SELECT device_id, topic_id, measurement_type, time, payload FROM measurements \
         WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR measurement_type = $2) \
         AND time >= $3 AND time < $4 ORDER BY time DESC LIMIT $5",
    )
    .bind(&f.device)
    .bind(&f.kind)
    .bind(f.from)
    .bind(f.to)
    .bind(f.limit)
    .fetch_all(pool)
    .await
    .db("querying measurements")?;
    Ok(rows
        .iter()
        .map(|r| MeasurementRecord {
            device: device_of(r),
            topic_id: r.get("topic_id"),
            measurement_type: r.get("measurement_type"),
            time: ts(r.get("time")),
            payload: json(r, "payload"),
        })
        .collect())
}

/// Number of stored measurements (for the metrics endpoint and tests).
pub async fn measurement_count(pool: &Pool) -> Result<i64, HubError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM measurements")
        .fetch_one(pool)
        .await
        .db("counting measurements")
}

/// Events, newest first.
pub async fn events(pool: &Pool, f: &Filter) -> Result<Vec<EventRecord>, HubError> {
    let rows = sqlx::query(
        "SELECT device_id, topic_id, event_type, time, text, payload FROM events \
         WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR event_type = $2) \
         AND time >= $3 AND time < $4 ORDER BY time DESC LIMIT $5",
    )
    .bind(&f.device)
    .bind(&f.kind)
    .bind(f.from)
    .bind(f.to)
    .bind(f.limit)
    .fetch_all(pool)
    .await
    .db("querying events")?;
    Ok(rows
        .iter()
        .map(|r| EventRecord {
            device: device_of(r),
            topic_id: r.get("topic_id"),
            event_type: r.get("event_type"),
            time: ts(r.get("time")),
            text: r.get("text"),
            payload: json(r, "payload"),
        })
        .collect())
}

/// Alarms raised in the time range, newest first; `active` selects open or cleared ones.
pub async fn alarms(pool: &Pool, f: &Filter) -> Result<Vec<AlarmRecord>, HubError> {
    let rows = sqlx::query(
        "SELECT device_id, topic_id, alarm_type, severity, text, payload, raised_at, cleared_at, asset_id FROM alarms \
         WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR alarm_type = $2) \
         AND raised_at >= $3 AND raised_at < $4 \
         AND ($5 IS NULL OR ($5 = 1 AND cleared_at IS NULL) OR ($5 = 0 AND cleared_at IS NOT NULL)) \
         ORDER BY raised_at DESC LIMIT $6",
    )
    .bind(&f.device)
    .bind(&f.kind)
    .bind(f.from)
    .bind(f.to)
    .bind(f.active.map(i64::from))
    .bind(f.limit)
    .fetch_all(pool)
    .await
    .db("querying alarms")?;
    Ok(rows
        .iter()
        .map(|r| AlarmRecord {
            device: device_of(r),
            topic_id: r.get("topic_id"),
            alarm_type: r.get("alarm_type"),
            severity: r.get::<&str, _>("severity").parse().unwrap_or(Severity::Minor),
            text: r.get("text"),
            raised_at: ts(r.get("raised_at")),
            cleared_at: r.get::<Option<i64>, _>("cleared_at").map(ts),
            payload: json(r, "payload"),
            asset: r.get("asset_id"),
        })
        .collect())
}
