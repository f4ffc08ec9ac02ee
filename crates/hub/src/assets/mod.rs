//! The asset register of visual inspection: assets, the inspection results devices report about
//! them (`e/inspection`), each asset's condition with its history, the `asset_condition` alarm,
//! and the maintenance list.
//!
//! The rules (condition update, alarm, maintenance order) are pure functions in [`rule`];
//! [`csv`] is the import format; [`store`] holds the rows. [`record_inspection`] runs inside the
//! ingest writer's transaction (so a QoS 1 inspection event is acknowledged only once the result,
//! the condition change and the alarm are committed together); [`Assets`] serves the API.

pub mod csv;
pub mod rule;
pub mod store;

use std::str::FromStr;

use proto::api::{
    AssetCreate, AssetDetail, AssetImport, AssetQuery, AssetSummary, AssetType, ConditionSource,
    InspectionOutcome, InspectionQuery, InspectionRecord, MaintenanceItem,
};
use proto::edgemlops::InspectionEvent;
use proto::pipeline::Condition;
use proto::{DeviceId, Timestamp};

pub use self::rule::AssetRules;
use self::rule::{MaintenanceKey, ResultFacts, Verdict};
pub use self::store::AssetStore;
use self::store::{AssetFilter, Change, ImportConflicts, NewInspection};
use crate::db::Tx;
use crate::error::{DbContext, HubError};
use crate::stdx::{new_id, now_ms};

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

/// The asset register.
#[derive(Clone, Debug)]
pub struct Assets {
    store: AssetStore,
}

fn refuse_import(problems: Vec<String>) -> HubError {
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
}

fn limit(l: Option<u32>) -> Result<i64, HubError> {
    match l {
        None => Ok(1000),
        Some(n) if (1..=10_000).contains(&n) => Ok(i64::from(n)),
        Some(_) => Err(HubError::BadRequest("limit must be 1 to 10000".into())),
    }
}

impl Assets {
    /// The register over its store.
    pub fn new(store: AssetStore) -> Self {
        Self { store }
    }

    /// Registers an asset (409 if the id exists).
    pub async fn create(&self, a: &AssetCreate) -> Result<AssetSummary, HubError> {
        validate(a).map_err(HubError::BadRequest)?;
        if !self.store.insert(a, now_ms()).await.db("registering an asset")? {
            return Err(HubError::Conflict(format!("asset '{}' already exists", a.id)));
        }
        self.summary_of(&a.id).await
    }

    /// Registers every asset of a CSV file ([`csv`]), or none: any bad line, or an id that is
    /// already registered, refuses the whole file with every problem and its line number.
    pub async fn import(&self, text: &str) -> Result<AssetImport, HubError> {
        let assets = csv::parse(text).map_err(refuse_import)?;
        if assets.len() > MAX_IMPORT_ROWS {
            return Err(refuse_import(vec![format!(
                "{} assets, at most {MAX_IMPORT_ROWS} per import",
                assets.len()
            )]));
        }
        match self
            .store
            .import(&assets, now_ms())
            .await
            .db("importing assets")?
        {
            Ok(()) => Ok(AssetImport {
                created: assets.into_iter().map(|(_, a)| a.id).collect(),
            }),
            Err(ImportConflicts(problems)) => Err(refuse_import(problems)),
        }
    }

    /// Checks `GET /assets` parameters and lists matching assets by id.
    pub async fn list(&self, q: &AssetQuery) -> Result<Vec<AssetSummary>, HubError> {
        if let Some(t) = &q.asset_type {
            AssetType::from_str(t).map_err(HubError::BadRequest)?;
        }
        let (condition, never_judged) = match q.condition.as_deref() {
            None => (None, false),
            Some("none") => (None, true),
            Some(c) => (
                Some(Condition::from_str(c).map_err(|e| HubError::BadRequest(format!("{e} or none")))?),
                false,
            ),
        };
        let filter = AssetFilter {
            asset_type: q.asset_type.clone(),
            site: q.site.clone(),
            condition,
            never_judged,
            limit: limit(q.limit)?,
        };
        self.store.list(&filter).await.db("listing assets")
    }

    async fn summary_of(&self, id: &str) -> Result<AssetSummary, HubError> {
        self.store
            .summary(id)
            .await
            .db("reading an asset")?
            .ok_or_else(|| HubError::not_found("asset", id))
    }

    /// An asset with its condition history and its latest inspection results.
    pub async fn get(&self, id: &str) -> Result<AssetDetail, HubError> {
        let asset = self.summary_of(id).await?;
        let history = self
            .store
            .history(id, HISTORY_SHOWN)
            .await
            .db("reading an asset's condition history")?;
        let inspections = self
            .inspections(&InspectionQuery {
                asset: Some(id.to_owned()),
                linked: Some(true),
                limit: Some(INSPECTIONS_SHOWN as u32),
                ..InspectionQuery::default()
            })
            .await?;
        Ok(AssetDetail {
            asset,
            history,
            inspections,
        })
    }

    /// Inspection results, newest observation first.
    pub async fn inspections(&self, q: &InspectionQuery) -> Result<Vec<InspectionRecord>, HubError> {
        if let Some(d) = &q.device {
            DeviceId::new(d.as_str()).map_err(|e| HubError::BadRequest(e.to_string()))?;
        }
        self.store
            .inspections(q, limit(q.limit)?)
            .await
            .db("listing inspection results")
    }

    /// The maintenance list (order: [`rule::maintenance_order`]).
    pub async fn maintenance(&self) -> Result<Vec<MaintenanceItem>, HubError> {
        let mut assets = self.store.all().await.db("listing assets for maintenance")?;
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

    /// The manual "repaired" action: the asset is good from now on (photos taken before now are
    /// stale), and its alarm is cleared.
    pub async fn repaired(&self, id: &str, user: &str) -> Result<AssetDetail, HubError> {
        let now = now_ms();
        let mut tx = self
            .store
            .db()
            .begin_write()
            .await
            .db("marking an asset repaired")?;
        let asset = store::lock_asset(&mut tx, id, now)
            .await
            .db("marking an asset repaired")?
            .ok_or_else(|| HubError::not_found("asset", id))?;
        store::write_condition(
            &mut tx,
            &Change {
                asset: id,
                asset_name: &asset.name,
                asset_type: &asset.asset_type,
                previous: asset.state.condition,
                condition: Condition::Good,
                // The later of now and the current observation (which a device clock may have
                // put in the future, within MAX_CLOCK_AHEAD_MS; anything stored further ahead by
                // an earlier version is brought back to now).
                observed_at: asset
                    .state
                    .observed_at
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
        self.get(id).await
    }
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

/// Stores an `e/inspection` result of `device` (parsed once, by the gateway) and applies it to
/// the asset it names, inside the ingest writer's transaction. An unknown or missing asset id is
/// stored unlinked.
pub async fn record_inspection(
    tx: &mut Tx,
    rules: &AssetRules,
    device: &str,
    topic_id: &str,
    event: &InspectionEvent,
    payload: &str,
    now: i64,
) -> Result<InspectionOutcome, sqlx::Error> {
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
        Some(a) => store::lock_asset(tx, a, now).await?.map(|l| (a.as_str(), l)),
    };
    let outcome = match (&event.asset_id, &asset) {
        (None, _) => InspectionOutcome::NoAsset,
        (Some(a), None) => {
            tracing::warn!(device, asset = %a, "inspection result for an unregistered asset stored unlinked");
            InspectionOutcome::UnknownAsset
        }
        (Some(_), Some((asset_id, locked))) => {
            let registered = AssetType::from_str(&locked.asset_type).unwrap_or(AssetType::Pole);
            let verdict = rule::judge(rules, registered, &locked.state, &facts);
            store::count_inspection(tx, asset_id, observed_at).await?;
            match verdict {
                Verdict::Keep(outcome) => outcome,
                Verdict::Apply(condition) => {
                    let detail = format!(
                        "{} {:.0}% by {} on {device}",
                        top.map_or("?", |p| p.label.as_str()),
                        top.map_or(0.0, |p| p.score * 100.0),
                        event.model
                    );
                    store::write_condition(
                        tx,
                        &Change {
                            asset: asset_id,
                            asset_name: &locked.name,
                            asset_type: &locked.asset_type,
                            previous: locked.state.condition,
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
    store::write_inspection(
        tx,
        &NewInspection {
            id: &id,
            asset_id: event.asset_id.as_deref(),
            linked: asset.is_some(),
            device,
            topic_id,
            observed_at,
            model: &event.model.to_string(),
            label: top.map(|p| p.label.as_str()),
            confidence: top.map(|p| p.score),
            asset_type: event.asset_type.as_deref(),
            condition: event.condition,
            outcome,
            payload,
        },
        now,
    )
    .await?;
    Ok(outcome)
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
