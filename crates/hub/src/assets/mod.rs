//! The asset register of visual inspection: assets, the inspection results devices report about
//! them (`e/inspection`), each asset's condition with its history, the `asset_condition` alarm,
//! and the maintenance list.
//!
//! The rules (condition update, alarm, maintenance order) are pure functions in [`rule`];
//! [`csv`] is the import format. This module stores: [`record_inspection`] runs inside the
//! ingest writer's transaction (so a QoS 1 inspection event is acknowledged only once the result,
//! the condition change and the alarm are committed together), the rest are API operations.

pub mod csv;
pub mod rule;

use std::str::FromStr;

use proto::api::{
    ASSET_CONDITION_ALARM, AssetCreate, AssetDetail, AssetImport, AssetQuery, AssetSummary, AssetType,
    ConditionChange, ConditionSource, InspectionOutcome, InspectionQuery, InspectionRecord, MaintenanceItem,
};
use proto::edgemlops::InspectionEvent;
use proto::pipeline::Condition;
use proto::{DeviceId, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

pub use self::rule::AssetRules;
use self::rule::{AlarmAction, ConditionState, MaintenanceKey, ResultFacts, Verdict};
use crate::db::Pool;
use crate::error::{DbContext, HubError};
use crate::stdx::{new_id, now_ms, ts};

/// Largest CSV import, bytes.
pub const MAX_IMPORT_BYTES: usize = 4 << 20;
/// Most assets in one import.
pub const MAX_IMPORT_ROWS: usize = 10_000;
/// Largest metadata object, bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 16 << 10;
/// Condition changes shown with an asset.
const HISTORY_SHOWN: i64 = 100;
/// Inspection results shown with an asset.
const INSPECTIONS_SHOWN: i64 = 50;

fn text_ok(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= 200 && !s.chars().any(char::is_control)
}

/// Checks an asset's fields (ids are safe path segments and MQTT payload values).
pub fn validate(a: &AssetCreate) -> Result<(), String> {
    let id_ok = !a.id.is_empty()
        && a.id.len() <= 64
        && !a.id.starts_with('.')
        && a.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        return Err(format!(
            "invalid asset id '{}': use 1 to 64 letters, digits, '.', '_' or '-' (not starting with '.')",
            a.id
        ));
    }
    if !text_ok(&a.name) {
        return Err(format!(
            "asset '{}': the name must be 1 to 200 characters without control characters",
            a.id
        ));
    }
    if a.site.as_deref().is_some_and(|s| !text_ok(s)) {
        return Err(format!(
            "asset '{}': the site must be 1 to 200 characters without control characters",
            a.id
        ));
    }
    match (a.latitude, a.longitude) {
        (None, None) => {}
        (Some(lat), Some(lon)) => {
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                return Err(format!("asset '{}': latitude {lat} is not within -90..90", a.id));
            }
            if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                return Err(format!(
                    "asset '{}': longitude {lon} is not within -180..180",
                    a.id
                ));
            }
        }
        _ => {
            return Err(format!(
                "asset '{}': give both latitude and longitude, or neither",
                a.id
            ));
        }
    }
    let meta = serde_json::to_string(&a.metadata).map_err(|e| e.to_string())?;
    if meta.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "asset '{}': metadata is {} bytes, at most {MAX_METADATA_BYTES}",
            a.id,
            meta.len()
        ));
    }
    Ok(())
}

fn condition_of(s: Option<&str>) -> Option<Condition> {
    s.and_then(|s| Condition::from_str(s).ok())
}

const SUMMARY_COLUMNS: &str = "id, name, asset_type, site, latitude, longitude, metadata, created_at, \
     condition, condition_observed_at, condition_changed_at, last_inspection_at, inspection_count, \
     EXISTS (SELECT 1 FROM alarms WHERE alarms.asset_id = assets.id AND alarms.cleared_at IS NULL) AS alarm_active";

fn summary(r: &SqliteRow) -> AssetSummary {
    AssetSummary {
        id: r.get("id"),
        name: r.get("name"),
        // Stored only after validation; an unreadable value would be a corrupt database.
        asset_type: r.get::<&str, _>("asset_type").parse().unwrap_or(AssetType::Pole),
        site: r.get("site"),
        latitude: r.get("latitude"),
        longitude: r.get("longitude"),
        metadata: serde_json::from_str(r.get::<&str, _>("metadata")).unwrap_or_default(),
        condition: condition_of(r.get("condition")),
        condition_observed_at: r.get::<Option<i64>, _>("condition_observed_at").map(ts),
        condition_changed_at: r.get::<Option<i64>, _>("condition_changed_at").map(ts),
        last_inspection_at: r.get::<Option<i64>, _>("last_inspection_at").map(ts),
        inspection_count: u64::try_from(r.get::<i64, _>("inspection_count")).unwrap_or(0),
        alarm_active: r.get::<i64, _>("alarm_active") != 0,
        created_at: ts(r.get("created_at")),
    }
}

async fn insert(tx: &mut Transaction<'_, Sqlite>, a: &AssetCreate, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO assets (id, name, asset_type, site, latitude, longitude, metadata, created_at, \
         updated_at, inspection_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 0)",
    )
    .bind(&a.id)
    .bind(a.name.trim())
    .bind(a.asset_type.as_str())
    .bind(a.site.as_deref().map(str::trim))
    .bind(a.latitude)
    .bind(a.longitude)
    .bind(serde_json::Value::Object(a.metadata.clone()).to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Registers an asset (409 if the id exists).
pub async fn create(pool: &Pool, a: &AssetCreate) -> Result<AssetSummary, HubError> {
    validate(a).map_err(HubError::BadRequest)?;
    let mut tx = crate::db::begin_write(pool).await.db("registering an asset")?;
    match insert(&mut tx, a, now_ms()).await {
        Err(e) if is_unique_violation(&e) => {
            return Err(HubError::Conflict(format!("asset '{}' already exists", a.id)));
        }
        r => r.db("registering an asset")?,
    }
    tx.commit().await.db("registering an asset")?;
    summary_of(pool, &a.id).await
}

/// Registers every asset of a CSV file ([`csv`]), or none: any bad line, or an id that is
/// already registered, refuses the whole file with every problem and its line number.
pub async fn import(pool: &Pool, text: &str) -> Result<AssetImport, HubError> {
    let refuse = |problems: Vec<String>| {
        const SHOWN: usize = 20;
        let n = problems.len();
        let mut listed = problems.into_iter().take(SHOWN).collect::<Vec<_>>().join("; ");
        if n > SHOWN {
            listed.push_str(&format!("; and {} more", n - SHOWN));
        }
        HubError::BadRequest(format!(
            "CSV import refused, nothing was imported ({n} problem{}): {listed}",
            if n == 1 { "" } else { "s" }
        ))
    };
    let assets = csv::parse(text).map_err(refuse)?;
    if assets.len() > MAX_IMPORT_ROWS {
        return Err(refuse(vec![format!(
            "{} assets, at most {MAX_IMPORT_ROWS} per import",
            assets.len()
        )]));
    }
    let mut tx = crate::db::begin_write(pool).await.db("importing assets")?;
    let mut problems = Vec::new();
    for (line, a) in &assets {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM assets WHERE id = $1")
            .bind(&a.id)
            .fetch_optional(&mut *tx)
            .await
            .db("importing assets")?;
        if exists.is_some() {
            problems.push(format!("line {line}: asset '{}' already exists", a.id));
        }
    }
    if !problems.is_empty() {
        return Err(refuse(problems));
    }
    let now = now_ms();
    for (line, a) in &assets {
        match insert(&mut tx, a, now).await {
            // Registered by someone else since the check: the transaction is dropped, nothing stays.
            Err(e) if is_unique_violation(&e) => {
                return Err(refuse(vec![format!(
                    "line {line}: asset '{}' already exists",
                    a.id
                )]));
            }
            r => r.db("importing assets")?,
        }
    }
    tx.commit().await.db("importing assets")?;
    Ok(AssetImport {
        created: assets.into_iter().map(|(_, a)| a.id).collect(),
    })
}

/// Checks `GET /assets` parameters and lists matching assets by id.
pub async fn list(pool: &Pool, q: &AssetQuery) -> Result<Vec<AssetSummary>, HubError> {
    if let Some(t) = &q.asset_type {
        AssetType::from_str(t).map_err(HubError::BadRequest)?;
    }
    let (condition, never) = match q.condition.as_deref() {
        None => (None, false),
        Some("none") => (None, true),
        Some(c) => (
            Some(Condition::from_str(c).map_err(|e| HubError::BadRequest(format!("{e} or none")))?),
            false,
        ),
    };
    let limit = limit(q.limit)?;
    let rows = sqlx::query(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM assets WHERE ($1 IS NULL OR asset_type = $1) \
         AND ($2 IS NULL OR site = $2) AND ($3 IS NULL OR condition = $3) \
         AND ($4 = 0 OR condition IS NULL) ORDER BY id LIMIT $5"
    ))
    .bind(&q.asset_type)
    .bind(&q.site)
    .bind(condition.map(Condition::as_str))
    .bind(i64::from(never))
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("listing assets")?;
    Ok(rows.iter().map(summary).collect())
}

fn limit(l: Option<u32>) -> Result<i64, HubError> {
    match l {
        None => Ok(1000),
        Some(n) if (1..=10_000).contains(&n) => Ok(i64::from(n)),
        Some(_) => Err(HubError::BadRequest("limit must be 1 to 10000".into())),
    }
}

async fn summary_of(pool: &Pool, id: &str) -> Result<AssetSummary, HubError> {
    sqlx::query(&format!("SELECT {SUMMARY_COLUMNS} FROM assets WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .db("reading an asset")?
        .map(|r| summary(&r))
        .ok_or_else(|| HubError::not_found("asset", id))
}

/// An asset with its condition history and its latest inspection results.
pub async fn get(pool: &Pool, id: &str) -> Result<AssetDetail, HubError> {
    let asset = summary_of(pool, id).await?;
    let history = sqlx::query(
        "SELECT condition, previous, observed_at, changed_at, source, inspection_id, changed_by \
         FROM asset_conditions WHERE asset_id = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(id)
    .bind(HISTORY_SHOWN)
    .fetch_all(pool)
    .await
    .db("reading an asset's condition history")?
    .iter()
    .map(|r| ConditionChange {
        condition: condition_of(r.get("condition")).unwrap_or(Condition::Good),
        previous: condition_of(r.get("previous")),
        observed_at: ts(r.get("observed_at")),
        changed_at: ts(r.get("changed_at")),
        source: if r.get::<&str, _>("source") == "repaired" {
            ConditionSource::Repaired
        } else {
            ConditionSource::Inspection
        },
        inspection: r.get("inspection_id"),
        by: r.get("changed_by"),
    })
    .collect();
    let inspections = inspections(
        pool,
        &InspectionQuery {
            asset: Some(id.to_owned()),
            linked: Some(true),
            limit: Some(INSPECTIONS_SHOWN as u32),
            ..InspectionQuery::default()
        },
    )
    .await?;
    Ok(AssetDetail {
        asset,
        history,
        inspections,
    })
}

/// Inspection results, newest observation first.
pub async fn inspections(pool: &Pool, q: &InspectionQuery) -> Result<Vec<InspectionRecord>, HubError> {
    if let Some(d) = &q.device {
        DeviceId::new(d.as_str()).map_err(|e| HubError::BadRequest(e.to_string()))?;
    }
    let rows = sqlx::query(
        "SELECT id, asset_id, linked, device_id, observed_at, received_at, model, label, confidence, \
         asset_type, condition, outcome FROM inspections \
         WHERE ($1 IS NULL OR asset_id = $1) AND ($2 IS NULL OR device_id = $2) AND ($3 IS NULL OR linked = $3) \
         ORDER BY observed_at DESC, received_at DESC LIMIT $4",
    )
    .bind(&q.asset)
    .bind(&q.device)
    .bind(q.linked.map(i64::from))
    .bind(limit(q.limit)?)
    .fetch_all(pool)
    .await
    .db("listing inspection results")?;
    Ok(rows
        .iter()
        .map(|r| InspectionRecord {
            id: r.get("id"),
            asset_id: r.get("asset_id"),
            linked: r.get::<i64, _>("linked") != 0,
            device: DeviceId::new(r.get::<String, _>("device_id"))
                .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id")),
            observed_at: ts(r.get("observed_at")),
            received_at: ts(r.get("received_at")),
            model: r.get("model"),
            label: r.get("label"),
            confidence: r.get::<Option<f64>, _>("confidence").map(|c| c as f32),
            asset_type: r.get("asset_type"),
            condition: condition_of(r.get("condition")),
            outcome: r
                .get::<&str, _>("outcome")
                .parse()
                .unwrap_or(InspectionOutcome::NoCondition),
        })
        .collect())
}

/// The maintenance list (order: [`rule::maintenance_order`]).
pub async fn maintenance(pool: &Pool) -> Result<Vec<MaintenanceItem>, HubError> {
    let rows = sqlx::query(&format!("SELECT {SUMMARY_COLUMNS} FROM assets"))
        .fetch_all(pool)
        .await
        .db("listing assets for maintenance")?;
    let mut assets: Vec<AssetSummary> = rows.iter().map(summary).collect();
    fn key(a: &AssetSummary) -> MaintenanceKey<'_> {
        MaintenanceKey {
            id: &a.id,
            condition: a.condition,
            last_inspection_at: a.last_inspection_at.map(Timestamp::unix_millis),
        }
    }
    assets.sort_by(|a, b| rule::maintenance_order(&key(a), &key(b)));
    let now = now_ms();
    Ok(assets
        .into_iter()
        .enumerate()
        .map(|(i, asset)| MaintenanceItem {
            rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
            never_inspected: asset.last_inspection_at.is_none(),
            since_inspection_secs: asset
                .last_inspection_at
                .map(|t| (now - t.unix_millis()).max(0) / 1000),
            asset,
        })
        .collect())
}

/// Writes a condition change: the asset row, the history entry and the alarm.
struct Change<'a> {
    asset: &'a str,
    asset_name: &'a str,
    asset_type: &'a str,
    previous: Option<Condition>,
    condition: Condition,
    observed_at: i64,
    source: ConditionSource,
    inspection: Option<&'a str>,
    by: &'a str,
    /// Device and entity an alarm raised now is filed under.
    device_topic: Option<(&'a str, &'a str)>,
    detail: String,
}

async fn change_condition(
    tx: &mut Transaction<'_, Sqlite>,
    c: &Change<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let changed = c.previous != Some(c.condition);
    sqlx::query(
        "UPDATE assets SET condition = $1, condition_observed_at = $2, updated_at = $3, \
         condition_changed_at = CASE WHEN $4 = 1 THEN $3 ELSE condition_changed_at END WHERE id = $5",
    )
    .bind(c.condition.as_str())
    .bind(c.observed_at)
    .bind(now)
    .bind(i64::from(changed))
    .bind(c.asset)
    .execute(&mut **tx)
    .await?;
    if !changed && c.source == ConditionSource::Inspection {
        // A confirmation: only the observation time moved.
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO asset_conditions (asset_id, seq, condition, previous, observed_at, changed_at, source, \
         inspection_id, changed_by) SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
         FROM asset_conditions WHERE asset_id = $1",
    )
    .bind(c.asset)
    .bind(c.condition.as_str())
    .bind(c.previous.map(Condition::as_str))
    .bind(c.observed_at)
    .bind(now)
    .bind(match c.source {
        ConditionSource::Inspection => "inspection",
        ConditionSource::Repaired => "repaired",
    })
    .bind(c.inspection)
    .bind(c.by)
    .execute(&mut **tx)
    .await?;
    let action = match (c.source, rule::alarm_action(c.previous, c.condition)) {
        // A repair clears whatever is active, even if the condition was already good.
        (ConditionSource::Repaired, _) => AlarmAction::Clear,
        (_, a) => a,
    };
    match action {
        AlarmAction::None => {}
        AlarmAction::Clear => {
            sqlx::query(
                "UPDATE alarms SET cleared_at = $1, updated_at = $1 WHERE asset_id = $2 AND cleared_at IS NULL",
            )
            .bind(now)
            .bind(c.asset)
            .execute(&mut **tx)
            .await?;
        }
        AlarmAction::Raise(severity) | AlarmAction::Update(severity) => {
            let was = c.previous.map_or("unknown", Condition::as_str);
            let text = format!(
                "{} {} ({}) is {} (was {was}): {}",
                c.asset_type, c.asset, c.asset_name, c.condition, c.detail
            );
            let payload = serde_json::json!({
                "text": text,
                "severity": severity.as_str(),
                "time": Timestamp::from_unix_millis(now).unwrap_or(Timestamp::UNIX_EPOCH),
                "asset_id": c.asset,
                "condition": c.condition,
                "previous": c.previous,
                "observed_at": Timestamp::from_unix_millis(c.observed_at).unwrap_or(Timestamp::UNIX_EPOCH),
                "inspection": c.inspection,
            })
            .to_string();
            let updated = sqlx::query(
                "UPDATE alarms SET severity = $1, text = $2, payload = $3, updated_at = $4 \
                 WHERE asset_id = $5 AND cleared_at IS NULL",
            )
            .bind(severity.as_str())
            .bind(&text)
            .bind(&payload)
            .bind(now)
            .bind(c.asset)
            .execute(&mut **tx)
            .await?;
            if updated.rows_affected() == 0 {
                let (device, topic) = c.device_topic.unwrap_or(("hub", "asset"));
                sqlx::query(
                    "INSERT INTO alarms (id, device_id, topic_id, alarm_type, severity, text, payload, \
                     raised_at, updated_at, asset_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
                )
                .bind(new_id("a-"))
                .bind(device)
                .bind(topic)
                .bind(ASSET_CONDITION_ALARM)
                .bind(severity.as_str())
                .bind(&text)
                .bind(&payload)
                .bind(now)
                .bind(c.asset)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}

/// How far ahead of the hub's clock a device's photo time is believed (device clocks drift; one
/// that is unset or wrong by years must not freeze an asset's condition in the future).
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1000;

/// The observation time of a result taken at `time` (device clock) and stored at `now` (hub
/// clock): the device's time, unless it is more than [`MAX_CLOCK_AHEAD_MS`] ahead of the hub's,
/// then the time the hub received it.
pub fn observation_time(time: i64, now: i64) -> i64 {
    if time > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
        now
    } else {
        time
    }
}

/// Stores an `e/inspection` event of `device` and applies it to the asset it names (inside the
/// ingest writer's transaction). An unknown or missing asset id is stored unlinked; a payload that
/// is not an inspection event (the gateway refuses those before) is skipped with a warning.
pub async fn record_inspection(
    tx: &mut Transaction<'_, Sqlite>,
    rules: &AssetRules,
    device: &str,
    topic_id: &str,
    payload: &str,
    now: i64,
) -> Result<Option<InspectionOutcome>, sqlx::Error> {
    let event = match InspectionEvent::parse(payload.as_bytes()) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(device, error = %e, "inspection event not understood; stored as a plain event");
            return Ok(None);
        }
    };
    let observed_at = observation_time(event.time.unix_millis(), now);
    let top = event.top();
    let facts = ResultFacts {
        observed_at,
        condition: event.condition,
        asset_type: event.asset_type.clone(),
        confidence: top.map(|p| p.score),
        low_confidence: event.low_confidence,
    };
    let id = new_id("i-");
    let asset = match &event.asset_id {
        None => None,
        Some(a) => {
            sqlx::query("SELECT name, asset_type, condition, condition_observed_at FROM assets WHERE id = $1")
                .bind(a)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| {
                    (
                        a.clone(),
                        r.get::<String, _>("name"),
                        r.get::<String, _>("asset_type"),
                        ConditionState {
                            condition: condition_of(r.get("condition")),
                            observed_at: r.get("condition_observed_at"),
                        },
                    )
                })
        }
    };
    let outcome = match (&event.asset_id, &asset) {
        (None, _) => InspectionOutcome::NoAsset,
        (Some(a), None) => {
            tracing::warn!(device, asset = %a, "inspection result for an unregistered asset stored unlinked");
            InspectionOutcome::UnknownAsset
        }
        (Some(_), Some((asset_id, name, asset_type, state))) => {
            let registered = AssetType::from_str(asset_type).unwrap_or(AssetType::Pole);
            let verdict = rule::judge(rules, registered, state, &facts);
            sqlx::query(
                "UPDATE assets SET inspection_count = inspection_count + 1, \
                 last_inspection_at = CASE WHEN last_inspection_at IS NULL OR last_inspection_at < $1 \
                 THEN $1 ELSE last_inspection_at END WHERE id = $2",
            )
            .bind(observed_at)
            .bind(asset_id)
            .execute(&mut **tx)
            .await?;
            match verdict {
                Verdict::Keep(outcome) => outcome,
                Verdict::Apply(condition) => {
                    let detail = format!(
                        "{} {:.0}% by {} on {device}",
                        top.map_or("?", |p| p.label.as_str()),
                        top.map_or(0.0, |p| p.score * 100.0),
                        event.model
                    );
                    change_condition(
                        tx,
                        &Change {
                            asset: asset_id,
                            asset_name: name,
                            asset_type,
                            previous: state.condition,
                            condition,
                            observed_at,
                            source: ConditionSource::Inspection,
                            inspection: Some(&id),
                            by: device,
                            device_topic: Some((device, topic_id)),
                            detail,
                        },
                        now,
                    )
                    .await?;
                    InspectionOutcome::Applied
                }
            }
        }
    };
    sqlx::query(
        "INSERT INTO inspections (id, asset_id, linked, device_id, topic_id, observed_at, received_at, model, \
         label, confidence, asset_type, condition, outcome, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&id)
    .bind(&event.asset_id)
    .bind(i64::from(asset.is_some()))
    .bind(device)
    .bind(topic_id)
    .bind(observed_at)
    .bind(now)
    .bind(event.model.to_string())
    .bind(top.map(|p| p.label.as_str()))
    .bind(top.map(|p| f64::from(p.score)))
    .bind(&event.asset_type)
    .bind(event.condition.map(Condition::as_str))
    .bind(outcome.as_str())
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(Some(outcome))
}

/// The manual "repaired" action: the asset is good from now on (photos taken before now are
/// stale), and its alarm is cleared.
pub async fn repaired(pool: &Pool, id: &str, user: &str) -> Result<AssetDetail, HubError> {
    let now = now_ms();
    let mut tx = crate::db::begin_write(pool)
        .await
        .db("marking an asset repaired")?;
    // A write first, so the transaction holds SQLite's write lock before it reads.
    let touched = sqlx::query("UPDATE assets SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .db("marking an asset repaired")?;
    if touched.rows_affected() == 0 {
        return Err(HubError::not_found("asset", id));
    }
    let r =
        sqlx::query("SELECT name, asset_type, condition, condition_observed_at FROM assets WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .db("marking an asset repaired")?;
    let name: String = r.get("name");
    let asset_type: String = r.get("asset_type");
    let observed: Option<i64> = r.get("condition_observed_at");
    change_condition(
        &mut tx,
        &Change {
            asset: id,
            asset_name: &name,
            asset_type: &asset_type,
            previous: condition_of(r.get("condition")),
            condition: Condition::Good,
            // The later of now and the current observation (which a device clock may have put
            // in the future, within MAX_CLOCK_AHEAD_MS; anything stored further ahead by an
            // earlier version is brought back to now).
            observed_at: observed
                .map_or(now, |o| o.max(now))
                .min(now.saturating_add(MAX_CLOCK_AHEAD_MS)),
            source: ConditionSource::Repaired,
            inspection: None,
            by: user,
            device_topic: None,
            detail: format!("marked repaired by {user}"),
        },
        now,
    )
    .await
    .db("marking an asset repaired")?;
    tx.commit().await.db("marking an asset repaired")?;
    tracing::info!(asset = id, by = user, "asset marked repaired");
    get(pool, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(id: &str) -> AssetCreate {
        AssetCreate {
            id: id.into(),
            name: "Pole 1".into(),
            asset_type: AssetType::Pole,
            site: None,
            latitude: None,
            longitude: None,
            metadata: serde_json::Map::new(),
        }
    }

    #[test]
    fn asset_fields_are_checked() {
        assert!(validate(&asset("P-17.a_b")).is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(
                validate(&asset(bad)).unwrap_err().contains("invalid asset id"),
                "{bad}"
            );
        }
        let mut a = asset("P");
        a.name = " ".into();
        assert!(validate(&a).unwrap_err().contains("name"));
        a = asset("P");
        a.latitude = Some(10.0);
        assert!(validate(&a).unwrap_err().contains("both"));
        a.longitude = Some(181.0);
        assert!(validate(&a).unwrap_err().contains("longitude"));
        a.longitude = Some(f64::NAN);
        assert!(validate(&a).is_err());
        a = asset("P");
        a.metadata
            .insert("blob".into(), "x".repeat(MAX_METADATA_BYTES).into());
        assert!(validate(&a).unwrap_err().contains("metadata"));
    }
}
