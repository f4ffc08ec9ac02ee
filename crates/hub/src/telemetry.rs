//! Telemetry: measurements, events and device alarms (active and cleared), written by the ingest
//! writer inside its transaction ([`write_measurements`], [`write_event`], [`write_alarm`]) and
//! queried by device, type and time range ([`Telemetry`]).

use proto::api::{AlarmRecord, EventRecord, MeasurementRecord, TelemetryQuery};
use proto::telemetry::Severity;
use proto::{DeviceId, Timestamp};
use sqlx::Row as _;

use crate::db::{Db, Row, Tx};
use crate::error::{DbContext, HubError};
use crate::stdx::{new_id, ts};

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

fn device_of(r: &Row) -> DeviceId {
    DeviceId::new(r.get::<String, _>("device_id"))
        .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id"))
}

fn json(r: &Row, col: &str) -> serde_json::Value {
    serde_json::from_str(&r.get::<String, _>(col)).unwrap_or(serde_json::Value::Null)
}

/// The telemetry queries.
#[derive(Clone, Debug)]
pub struct Telemetry {
    db: Db,
}

impl Telemetry {
    /// The telemetry in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Measurements, newest first.
    pub async fn measurements(&self, f: &Filter) -> Result<Vec<MeasurementRecord>, HubError> {
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
        .fetch_all(self.db.pool())
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
    pub async fn measurement_count(&self) -> Result<i64, HubError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM measurements")
            .fetch_one(self.db.pool())
            .await
            .db("counting measurements")
    }

    /// Events, newest first.
    pub async fn events(&self, f: &Filter) -> Result<Vec<EventRecord>, HubError> {
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
        .fetch_all(self.db.pool())
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
    pub async fn alarms(&self, f: &Filter) -> Result<Vec<AlarmRecord>, HubError> {
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
    .fetch_all(self.db.pool())
    .await
    .db("querying alarms")?;
        Ok(rows
            .iter()
            .map(|r| AlarmRecord {
                device: device_of(r),
                topic_id: r.get("topic_id"),
                alarm_type: r.get("alarm_type"),
                severity: r.get::<String, _>("severity").parse().unwrap_or(Severity::Minor),
                text: r.get("text"),
                raised_at: ts(r.get("raised_at")),
                cleared_at: r.get::<Option<i64>, _>("cleared_at").map(ts),
                payload: json(r, "payload"),
                asset: r.get("asset_id"),
            })
            .collect())
    }
}

/// A measurement to store.
#[derive(Clone, Copy, Debug)]
pub struct NewMeasurement<'a> {
    /// Device id.
    pub device: &'a str,
    /// Entity topic id.
    pub topic_id: &'a str,
    /// Measurement type.
    pub measurement_type: &'a str,
    /// Measurement time, ms.
    pub time: i64,
    /// The device's own time, which identifies the measurement (a repeat is dropped); `None` when
    /// it sent none (never deduplicated).
    pub sent_time: Option<i64>,
    /// JSON as received.
    pub payload: &'a str,
}

/// Rows per multi-row `INSERT` of measurements, largest first. Fixed sizes keep the number of
/// distinct statements (and so prepared statements per connection) small.
const MEASUREMENT_CHUNKS: [usize; 4] = [256, 64, 8, 1];

/// Stores measurements in as few statements as fixed chunk sizes allow (one round trip per chunk
/// instead of per row, which is what makes group commit pay on PostgreSQL). A measurement with
/// its own time is identified by (device, entity, type, that time): `sent_time` is unique per
/// device, entity and type (migration 0004), so a copy sent again after a lost acknowledgement is
/// dropped here but still acknowledged. Without a time it gets its reception time and a NULL
/// `sent_time`, which never conflicts: such measurements cannot be told apart from repeats, so all
/// are kept.
pub async fn write_measurements(
    tx: &mut Tx,
    rows: &[NewMeasurement<'_>],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    for size in MEASUREMENT_CHUNKS {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            insert_measurements(tx, chunk, now).await?;
            rest = tail;
        }
    }
    Ok(())
}

async fn insert_measurements(tx: &mut Tx, rows: &[NewMeasurement<'_>], now: i64) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO measurements (device_id, topic_id, measurement_type, time, sent_time, received_at, payload) \
         VALUES {} ON CONFLICT DO NOTHING",
        crate::db::value_rows(tx, rows.len(), 7)
    );
    let mut q = sqlx::query(&sql);
    for m in rows {
        q = q
            .bind(m.device)
            .bind(m.topic_id)
            .bind(m.measurement_type)
            .bind(m.time)
            .bind(m.sent_time)
            .bind(now)
            .bind(m.payload);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// An event to store.
#[derive(Clone, Copy, Debug)]
pub struct NewEvent<'a> {
    /// Device id.
    pub device: &'a str,
    /// Entity topic id.
    pub topic_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Event time, ms.
    pub time: i64,
    /// Text.
    pub text: Option<&'a str>,
    /// The sender's idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// JSON as received.
    pub payload: &'a str,
}

/// Stores an event; false when it repeats one already stored (same device and idempotency key),
/// which is then dropped but still acknowledged: the sender only needs to know it is stored.
pub async fn write_event(tx: &mut Tx, e: &NewEvent<'_>, now: i64) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query(
        "INSERT INTO events (device_id, topic_id, event_type, time, received_at, text, payload, \
         idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(e.device)
    .bind(e.topic_id)
    .bind(e.event_type)
    .bind(e.time)
    .bind(now)
    .bind(e.text)
    .bind(e.payload)
    .bind(e.idempotency_key)
    .execute(&mut **tx)
    .await?;
    Ok(stored.rows_affected() > 0)
}

/// A device alarm raised (`Some`) or cleared (`None`).
#[derive(Clone, Copy, Debug)]
pub struct AlarmRaise<'a> {
    /// Severity.
    pub severity: &'a str,
    /// Text.
    pub text: Option<&'a str>,
    /// Raise time, ms.
    pub time: i64,
    /// JSON as received.
    pub payload: &'a str,
}

/// A device alarm raised or cleared. A raise of an alarm that is already active updates it
/// (thin-edge republishes retained alarms on reconnect); otherwise it opens a new row. A clear
/// closes the open row. Device raises and clears never touch the hub's asset alarms.
pub async fn write_alarm(
    tx: &mut Tx,
    device: &str,
    topic_id: &str,
    alarm_type: &str,
    raise: Option<&AlarmRaise<'_>>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let Some(a) = raise else {
        sqlx::query(
            "UPDATE alarms SET cleared_at = $1, updated_at = $1 \
             WHERE device_id = $2 AND topic_id = $3 AND alarm_type = $4 AND cleared_at IS NULL \
             AND asset_id IS NULL",
        )
        .bind(now)
        .bind(device)
        .bind(topic_id)
        .bind(alarm_type)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    };
    let updated = sqlx::query(
        "UPDATE alarms SET severity = $1, text = $2, payload = $3, updated_at = $4 \
         WHERE device_id = $5 AND topic_id = $6 AND alarm_type = $7 AND cleared_at IS NULL \
         AND asset_id IS NULL",
    )
    .bind(a.severity)
    .bind(a.text)
    .bind(a.payload)
    .bind(now)
    .bind(device)
    .bind(topic_id)
    .bind(alarm_type)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO alarms (id, device_id, topic_id, alarm_type, severity, text, payload, raised_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(new_id("a-"))
        .bind(device)
        .bind(topic_id)
        .bind(alarm_type)
        .bind(a.severity)
        .bind(a.text)
        .bind(a.payload)
        .bind(a.time)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
