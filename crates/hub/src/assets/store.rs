//! The asset register as stored: assets with their current condition, every inspection result,
//! the condition history, and the `asset_condition` alarms (rows of the `alarms` table with an
//! asset id). [`AssetStore`] serves the API; the `write_*`/[`lock_asset`] functions run inside a
//! writing transaction (the ingest writer's, or a repair's).

use proto::api::{
    ASSET_CONDITION_ALARM, AssetCreate, AssetSummary, AssetType, ConditionChange, ConditionSource,
    InspectionOutcome, InspectionQuery, InspectionRecord,
};
use proto::pipeline::Condition;
use proto::{DeviceId, Timestamp};
use sqlx::Row as _;

use super::rule::{self, AlarmAction, ConditionState};
use crate::db::{Db, Row, Tx, is_unique_violation};
use crate::stdx::{new_id, ts};

fn condition_of(s: Option<String>) -> Option<Condition> {
    s.and_then(|s| s.parse().ok())
}

const SUMMARY_COLUMNS: &str = "id, name, asset_type, site, latitude, longitude, metadata, created_at, \
     condition, condition_observed_at, condition_changed_at, last_inspection_at, inspection_count, \
     CASE WHEN EXISTS (SELECT 1 FROM alarms WHERE alarms.asset_id = assets.id AND alarms.cleared_at IS NULL) \
     THEN 1 ELSE 0 END AS alarm_active";

fn summary(r: &Row) -> AssetSummary {
    AssetSummary {
        id: r.get("id"),
        name: r.get("name"),
        // Stored only after validation; an unreadable value would be a corrupt database.
        asset_type: r
            .get::<String, _>("asset_type")
            .parse()
            .unwrap_or(AssetType::Pole),
        site: r.get("site"),
        latitude: r.get("latitude"),
        longitude: r.get("longitude"),
        metadata: serde_json::from_str(&r.get::<String, _>("metadata")).unwrap_or_default(),
        condition: condition_of(r.get("condition")),
        condition_observed_at: r.get::<Option<i64>, _>("condition_observed_at").map(ts),
        condition_changed_at: r.get::<Option<i64>, _>("condition_changed_at").map(ts),
        last_inspection_at: r.get::<Option<i64>, _>("last_inspection_at").map(ts),
        inspection_count: u64::try_from(r.get::<i64, _>("inspection_count")).unwrap_or(0),
        alarm_active: r.get::<i64, _>("alarm_active") != 0,
        created_at: ts(r.get("created_at")),
    }
}

/// `GET /assets` filters, checked.
#[derive(Clone, Debug, Default)]
pub struct AssetFilter {
    /// Asset type.
    pub asset_type: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Condition.
    pub condition: Option<Condition>,
    /// Only assets without a condition.
    pub never_judged: bool,
    /// Most rows.
    pub limit: i64,
}

/// What an import found wrong (nothing was stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportConflicts(pub Vec<String>);

/// An asset as the condition rule needs it, locked for the rest of the transaction.
#[derive(Clone, Debug)]
pub struct LockedAsset {
    /// Display name.
    pub name: String,
    /// Registered type.
    pub asset_type: String,
    /// Current condition.
    pub state: ConditionState,
}

/// The asset register's rows.
#[derive(Clone, Debug)]
pub struct AssetStore {
    db: Db,
}

async fn insert(tx: &mut Tx, a: &AssetCreate, now: i64) -> Result<(), sqlx::Error> {
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

impl AssetStore {
    /// The store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database (for transactions of the domain that span several writes).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Registers an asset; false when the id exists.
    pub async fn insert(&self, a: &AssetCreate, now: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        match insert(&mut tx, a, now).await {
            Err(e) if is_unique_violation(&e) => return Ok(false),
            r => r?,
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Registers every asset (with its line number), or none when any id exists already.
    pub async fn import(
        &self,
        assets: &[(usize, AssetCreate)],
        now: i64,
    ) -> Result<Result<(), ImportConflicts>, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let mut problems = Vec::new();
        for (line, a) in assets {
            let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM assets WHERE id = $1")
                .bind(&a.id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                problems.push(format!("line {line}: asset '{}' already exists", a.id));
            }
        }
        if !problems.is_empty() {
            return Ok(Err(ImportConflicts(problems)));
        }
        for (line, a) in assets {
            match insert(&mut tx, a, now).await {
                // Registered by someone else since the check: the transaction is dropped, nothing stays.
                Err(e) if is_unique_violation(&e) => {
                    return Ok(Err(ImportConflicts(vec![format!(
                        "line {line}: asset '{}' already exists",
                        a.id
                    )])));
                }
                r => r?,
            }
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Assets matching `f`, by id.
    pub async fn list(&self, f: &AssetFilter) -> Result<Vec<AssetSummary>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM assets WHERE ($1 IS NULL OR asset_type = $1) \
             AND ($2 IS NULL OR site = $2) AND ($3 IS NULL OR condition = $3) \
             AND ($4 = 0 OR condition IS NULL) ORDER BY id LIMIT $5"
        ))
        .bind(&f.asset_type)
        .bind(&f.site)
        .bind(f.condition.map(Condition::as_str))
        .bind(i64::from(f.never_judged))
        .bind(f.limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(summary).collect())
    }

    /// Every asset (the maintenance list orders them).
    pub async fn all(&self) -> Result<Vec<AssetSummary>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {SUMMARY_COLUMNS} FROM assets"))
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(summary).collect())
    }

    /// One asset.
    pub async fn summary(&self, id: &str) -> Result<Option<AssetSummary>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {SUMMARY_COLUMNS} FROM assets WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(summary))
    }

    /// The newest `limit` condition changes of an asset, newest first.
    pub async fn history(&self, id: &str, limit: i64) -> Result<Vec<ConditionChange>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT condition, previous, observed_at, changed_at, source, inspection_id, changed_by \
             FROM asset_conditions WHERE asset_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| ConditionChange {
                condition: condition_of(r.get("condition")).unwrap_or(Condition::Good),
                previous: condition_of(r.get("previous")),
                observed_at: ts(r.get("observed_at")),
                changed_at: ts(r.get("changed_at")),
                source: if r.get::<String, _>("source") == "repaired" {
                    ConditionSource::Repaired
                } else {
                    ConditionSource::Inspection
                },
                inspection: r.get("inspection_id"),
                by: r.get("changed_by"),
            })
            .collect())
    }

    /// Inspection results, newest observation first.
    pub async fn inspections(
        &self,
        q: &InspectionQuery,
        limit: i64,
    ) -> Result<Vec<InspectionRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, asset_id, linked, device_id, observed_at, received_at, model, label, confidence, \
             asset_type, condition, outcome FROM inspections \
             WHERE ($1 IS NULL OR asset_id = $1) AND ($2 IS NULL OR device_id = $2) AND ($3 IS NULL OR linked = $3) \
             ORDER BY observed_at DESC, received_at DESC LIMIT $4",
        )
        .bind(&q.asset)
        .bind(&q.device)
        .bind(q.linked.map(i64::from))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
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
                    .get::<String, _>("outcome")
                    .parse()
                    .unwrap_or(InspectionOutcome::NoCondition),
            })
            .collect())
    }
}

/// The asset `id` as the rule needs it, with its row locked until the transaction ends (a write
/// comes first: on PostgreSQL that takes the row lock, so two nodes applying results to one asset
/// take turns; SQLite's writer already holds the database's write lock). `None`: not registered.
pub async fn lock_asset(tx: &mut Tx, id: &str, now: i64) -> Result<Option<LockedAsset>, sqlx::Error> {
    let touched = sqlx::query("UPDATE assets SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if touched.rows_affected() == 0 {
        return Ok(None);
    }
    let r =
        sqlx::query("SELECT name, asset_type, condition, condition_observed_at FROM assets WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Some(LockedAsset {
        name: r.get("name"),
        asset_type: r.get("asset_type"),
        state: ConditionState {
            condition: condition_of(r.get("condition")),
            observed_at: r.get("condition_observed_at"),
        },
    }))
}

/// Counts an inspection of the asset observed at `observed_at`.
pub async fn count_inspection(tx: &mut Tx, id: &str, observed_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE assets SET inspection_count = inspection_count + 1, \
         last_inspection_at = CASE WHEN last_inspection_at IS NULL OR last_inspection_at < $1 \
         THEN $1 ELSE last_inspection_at END WHERE id = $2",
    )
    .bind(observed_at)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An inspection result to store.
#[derive(Clone, Debug)]
pub struct NewInspection<'a> {
    /// Its id.
    pub id: &'a str,
    /// The asset id the device named.
    pub asset_id: Option<&'a str>,
    /// Whether that asset is registered.
    pub linked: bool,
    /// Device.
    pub device: &'a str,
    /// Entity topic id.
    pub topic_id: &'a str,
    /// Observation time, ms.
    pub observed_at: i64,
    /// Model (`name@version`).
    pub model: &'a str,
    /// Top label.
    pub label: Option<&'a str>,
    /// Top score.
    pub confidence: Option<f32>,
    /// Predicted asset type.
    pub asset_type: Option<&'a str>,
    /// Predicted condition.
    pub condition: Option<Condition>,
    /// What it did to the asset.
    pub outcome: InspectionOutcome,
    /// The event as received.
    pub payload: &'a str,
}

/// Stores an inspection result.
pub async fn write_inspection(tx: &mut Tx, i: &NewInspection<'_>, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inspections (id, asset_id, linked, device_id, topic_id, observed_at, received_at, model, \
         label, confidence, asset_type, condition, outcome, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(i.id)
    .bind(i.asset_id)
    .bind(i64::from(i.linked))
    .bind(i.device)
    .bind(i.topic_id)
    .bind(i.observed_at)
    .bind(now)
    .bind(i.model)
    .bind(i.label)
    .bind(i.confidence.map(f64::from))
    .bind(i.asset_type)
    .bind(i.condition.map(Condition::as_str))
    .bind(i.outcome.as_str())
    .bind(i.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A condition change to write: the asset row, the history entry and the alarm.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    /// Asset id.
    pub asset: &'a str,
    /// Its name (alarm text).
    pub asset_name: &'a str,
    /// Its type (alarm text).
    pub asset_type: &'a str,
    /// Condition before.
    pub previous: Option<Condition>,
    /// Condition now.
    pub condition: Condition,
    /// Observation time of what set it.
    pub observed_at: i64,
    /// Inspection or repair.
    pub source: ConditionSource,
    /// The inspection result that set it.
    pub inspection: Option<&'a str>,
    /// Device or user.
    pub by: &'a str,
    /// Device and entity an alarm raised now is filed under.
    pub device_topic: Option<(&'a str, &'a str)>,
    /// Why (alarm text).
    pub detail: String,
}

/// Writes a condition change and raises, updates or clears the asset's alarm
/// ([`rule::alarm_action`]).
pub async fn write_condition(tx: &mut Tx, c: &Change<'_>, now: i64) -> Result<(), sqlx::Error> {
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
