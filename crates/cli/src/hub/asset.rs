//! `edgemlops asset add|list|show|import|maintenance|repaired`: the hub's asset register (visual
//! inspection). Every command is one call of `/api/v1/assets`; `--json` prints the API's JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use proto::api::{
    ASSET_CSV_CONTENT_TYPE, AssetCreate, AssetDetail, AssetImport, AssetQuery, AssetSummary, AssetType,
    ConditionSource, MaintenanceItem,
};
use proto::pipeline::Condition;

use super::client::encode;
use super::{HubArgs, or_dash, print_json, table};

/// `edgemlops asset ...`
#[derive(Debug, Subcommand)]
pub enum AssetCommand {
    /// Register an asset.
    #[command(
        after_help = "Examples:\n  edgemlops asset add P-17 --name 'Pole 17' --type pole --site 'Feeder 4' \
                            --lat 47.37 --lon 8.54 --meta material=wood --meta height_m=12"
    )]
    Add(AssetAddArgs),
    /// List assets with their condition.
    #[command(after_help = "Examples:\n  edgemlops asset list\n  \
                            edgemlops asset list --type tower --condition critical --json")]
    List(AssetListArgs),
    /// Show an asset with its condition history and latest inspection results.
    Show(AssetIdArgs),
    /// Register the assets of a CSV file: all of them, or none (every bad line is named).
    #[command(
        after_help = "The file has a header row; columns (any order): id, name, type (required), site, \
                            latitude, longitude, metadata (a JSON object).\n\n\
                            Examples:\n  edgemlops asset import assets.csv"
    )]
    Import(AssetImportArgs),
    /// The maintenance list: critical first, then the longest since an inspection.
    #[command(after_help = "Examples:\n  edgemlops asset maintenance\n  edgemlops asset maintenance --json")]
    Maintenance(super::JsonArgs),
    /// Mark an asset repaired: condition good from now on, its alarm cleared.
    #[command(after_help = "Examples:\n  edgemlops asset repaired P-17")]
    Repaired(AssetIdArgs),
}

/// `asset add`
#[derive(Debug, Args)]
pub struct AssetAddArgs {
    /// Asset id (as devices name it in inspection results).
    pub id: String,
    /// Display name (default: the id).
    #[arg(long)]
    pub name: Option<String>,
    /// Asset type: pole, tower, transformer or insulator.
    #[arg(long = "type")]
    pub asset_type: AssetType,
    /// Site (substation, feeder, line).
    #[arg(long)]
    pub site: Option<String>,
    /// Latitude in degrees.
    #[arg(long, requires = "lon", allow_negative_numbers = true)]
    pub lat: Option<f64>,
    /// Longitude in degrees.
    #[arg(long, requires = "lat", allow_negative_numbers = true)]
    pub lon: Option<f64>,
    /// Metadata entry KEY=VALUE (VALUE is read as JSON if it is JSON, else as text); repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `asset list`
#[derive(Debug, Args)]
pub struct AssetListArgs {
    /// Only this asset type.
    #[arg(long = "type")]
    pub asset_type: Option<AssetType>,
    /// Only this site.
    #[arg(long)]
    pub site: Option<String>,
    /// Only this condition (good, minor, major, critical, or none for never set).
    #[arg(long)]
    pub condition: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// An asset id and `--json`.
#[derive(Debug, Args)]
pub struct AssetIdArgs {
    /// Asset id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `asset import`
#[derive(Debug, Args)]
pub struct AssetImportArgs {
    /// The CSV file.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn metadata(entries: &[String]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for e in entries {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--meta '{e}' is not KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--meta '{e}' has an empty key");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        map.insert(k.to_owned(), value);
    }
    Ok(map)
}

fn condition(c: Option<Condition>) -> String {
    c.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
}

fn time(t: Option<proto::Timestamp>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| t.to_string())
}

/// `3d 4h`-style age.
fn age(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, (secs % 86_400) / 3600, (secs % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m")
    }
}

fn location(a: &AssetSummary) -> String {
    match (a.latitude, a.longitude) {
        (Some(lat), Some(lon)) => format!("{lat:.5},{lon:.5}"),
        _ => "-".into(),
    }
}

fn print_detail(d: &AssetDetail, json: bool) -> Result<()> {
    if json {
        return print_json(d);
    }
    let a = &d.asset;
    println!("asset:      {} ({})", a.id, a.name);
    println!("type:       {}", a.asset_type);
    println!("site:       {}", or_dash(a.site.as_deref()));
    println!("location:   {}", location(a));
    if !a.metadata.is_empty() {
        println!("metadata:   {}", serde_json::Value::Object(a.metadata.clone()));
    }
    println!(
        "condition:  {}{}",
        condition(a.condition),
        if a.alarm_active { " (alarm active)" } else { "" }
    );
    println!(
        "inspected:  {} ({} results)",
        time(a.last_inspection_at),
        a.inspection_count
    );
    println!("history:");
    if d.history.is_empty() {
        println!("  (none)");
    }
    for h in &d.history {
        let source = match h.source {
            ConditionSource::Inspection => "inspection",
            ConditionSource::Repaired => "repaired",
        };
        println!(
            "  {}  {} -> {}  {source} by {}",
            h.changed_at,
            condition(h.previous),
            h.condition,
            h.by
        );
    }
    println!("inspections:");
    if d.inspections.is_empty() {
        println!("  (none)");
    }
    for i in &d.inspections {
        println!(
            "  {}  {}  {} {}  {}  {}",
            i.observed_at,
            i.device,
            or_dash(i.label.as_deref()),
            i.confidence
                .map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", c * 100.0)),
            i.model,
            i.outcome.as_str()
        );
    }
    Ok(())
}

/// Runs `asset ...`.
pub fn run(hub: &HubArgs, command: &AssetCommand) -> Result<()> {
    let client = hub.client()?;
    match command {
        AssetCommand::Add(a) => {
            let created: AssetSummary = client.post(
                "registering the asset",
                "/api/v1/assets",
                &AssetCreate {
                    id: a.id.clone(),
                    name: a.name.clone().unwrap_or_else(|| a.id.clone()),
                    asset_type: a.asset_type,
                    site: a.site.clone(),
                    latitude: a.lat,
                    longitude: a.lon,
                    metadata: metadata(&a.meta)?,
                },
            )?;
            if a.json {
                return print_json(&created);
            }
            println!("asset {} ({}) registered", created.id, created.asset_type);
            Ok(())
        }
        AssetCommand::List(a) => {
            let assets: Vec<AssetSummary> = client.get_query(
                "listing assets",
                "/api/v1/assets",
                &AssetQuery {
                    asset_type: a.asset_type.map(|t| t.as_str().to_owned()),
                    site: a.site.clone(),
                    condition: a.condition.clone(),
                    limit: Some(a.limit),
                },
            )?;
            if a.json {
                return print_json(&assets);
            }
            let rows: Vec<Vec<String>> = assets
                .iter()
                .map(|x| {
                    vec![
                        x.id.clone(),
                        x.name.clone(),
                        x.asset_type.to_string(),
                        or_dash(x.site.as_deref()).to_owned(),
                        condition(x.condition),
                        if x.alarm_active { "active" } else { "-" }.to_owned(),
                        time(x.last_inspection_at),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "TYPE",
                    "SITE",
                    "CONDITION",
                    "ALARM",
                    "LAST INSPECTION",
                ],
                &rows,
            );
            Ok(())
        }
        AssetCommand::Show(a) => {
            let d: AssetDetail =
                client.get("reading the asset", &format!("/api/v1/assets/{}", encode(&a.id)))?;
            print_detail(&d, a.json)
        }
        AssetCommand::Import(a) => {
            let text = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
            let imported: AssetImport = client.post_bytes(
                &format!("importing {}", a.file.display()),
                "/api/v1/assets/import",
                ASSET_CSV_CONTENT_TYPE,
                text,
            )?;
            if a.json {
                return print_json(&imported);
            }
            println!("{} assets imported", imported.created.len());
            Ok(())
        }
        AssetCommand::Maintenance(a) => {
            let list: Vec<MaintenanceItem> =
                client.get("reading the maintenance list", "/api/v1/assets/maintenance")?;
            if a.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|m| {
                    vec![
                        m.rank.to_string(),
                        m.asset.id.clone(),
                        m.asset.asset_type.to_string(),
                        or_dash(m.asset.site.as_deref()).to_owned(),
                        if m.never_inspected {
                            "never inspected".to_owned()
                        } else {
                            condition(m.asset.condition)
                        },
                        m.since_inspection_secs.map_or_else(|| "-".to_owned(), age),
                        location(&m.asset),
                    ]
                })
                .collect();
            table(
                &[
                    "#",
                    "ID",
                    "TYPE",
                    "SITE",
                    "CONDITION",
                    "SINCE INSPECTION",
                    "LOCATION",
                ],
                &rows,
            );
            Ok(())
        }
        AssetCommand::Repaired(a) => {
            let d: AssetDetail = client.post(
                "marking the asset repaired",
                &format!("/api/v1/assets/{}/repaired", encode(&a.id)),
                &serde_json::json!({}),
            )?;
            if a.json {
                return print_json(&d);
            }
            println!(
                "asset {} marked repaired: condition good, alarm cleared",
                d.asset.id
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_values_are_json_when_they_parse_and_text_otherwise() {
        let m = metadata(&[
            "h=12".into(),
            "material=wood".into(),
            "tags=[\"a\"]".into(),
            "e=".into(),
        ])
        .unwrap();
        assert_eq!(m["h"], 12);
        assert_eq!(m["material"], "wood");
        assert_eq!(m["tags"][0], "a");
        assert_eq!(m["e"], "");
        assert!(metadata(&["novalue".into()]).is_err());
        assert!(metadata(&["=x".into()]).is_err());
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(age(125), "2m");
    }
}
