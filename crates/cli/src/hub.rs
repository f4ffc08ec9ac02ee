//! The hub's admin client: `edgemlops --hub URL --token T` with `device`, `model push|list|show|
//! alias`, `deploy`, `rollback`, `command`, `alarm` and `asset` ([`asset`]). Every command is a call
//! of the hub's REST API ([`client::HubClient`]); `--json` prints the API's JSON instead of a table.

pub mod asset;
pub mod client;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use proto::DeviceId;
use proto::api::{
    AlarmRecord, AliasChange, AliasSet, CommandInfo, DeployRequest, DeviceCreate, DeviceCredentials,
    DeviceDetail, DeviceSummary, ModelDetail, ModelSummary, PackagePushed, RollbackRequest, TelemetryQuery,
};
use proto::command::ModuleAction;
use proto::edgemlops::ModelRef;
use serde::Serialize;

use self::client::{HUB_ENV, HubClient, TOKEN_ENV, encode};

/// Where the hub is and who is asking (global options).
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Hub URL (default: $EDGEMLOPS_HUB).
    #[arg(long, global = true, value_name = "URL")]
    pub hub: Option<String>,
    /// API token (default: $EDGEMLOPS_TOKEN).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

impl HubArgs {
    /// A client from the options or the environment.
    pub fn client(&self) -> Result<HubClient> {
        let hub = self
            .hub
            .clone()
            .or_else(|| std::env::var(HUB_ENV).ok())
            .with_context(|| format!("no hub given: pass --hub URL or set {HUB_ENV}"))?;
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var(TOKEN_ENV).ok())
            .with_context(|| format!("no API token given: pass --token TOKEN or set {TOKEN_ENV}"))?;
        HubClient::new(&hub, &token)
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn or_dash(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

// ------------------------------------------------------------------------------------------------
// device

/// `edgemlops device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device and print its MQTT token (shown once).
    #[command(
        after_help = "Examples:\n  edgemlops device add pole-cam-17 --name 'Pole camera 17'\n  \
                            edgemlops device add pole-cam-17 --json   # {\"id\": ..., \"token\": ...}"
    )]
    Add(DeviceAddArgs),
    /// List devices.
    List(JsonArgs),
    /// Show a device with its entities, twin, capabilities and installed software.
    Show(DeviceShowArgs),
    /// Issue a new token for a device (the old one stops working), or revoke it.
    #[command(after_help = "Examples:\n  edgemlops device token pole-cam-17\n  \
                            edgemlops device token pole-cam-17 --revoke")]
    Token(DeviceTokenArgs),
}

/// Only `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `device add`
#[derive(Debug, Args)]
pub struct DeviceAddArgs {
    /// Device id (MQTT client id and user name).
    pub id: DeviceId,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the id and the token as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `device show`
#[derive(Debug, Args)]
pub struct DeviceShowArgs {
    /// Device id.
    pub id: DeviceId,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `device token`
#[derive(Debug, Args)]
pub struct DeviceTokenArgs {
    /// Device id.
    pub id: DeviceId,
    /// Revoke the token (the device is disconnected and cannot connect until a new one is issued).
    #[arg(long)]
    pub revoke: bool,
    /// Print the id and the token as JSON.
    #[arg(long)]
    pub json: bool,
}

fn print_credentials(c: &DeviceCredentials, json: bool) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({ "id": c.device.id, "token": c.token }));
    }
    println!("device: {}", c.device.id);
    println!("token:  {}", c.token);
    eprintln!(
        "The token is shown only now; the device uses it as its MQTT password (user name = client id = device id)."
    );
    Ok(())
}

/// Runs `device ...`.
pub fn device(hub: &HubArgs, command: &DeviceCommand) -> Result<()> {
    let client = hub.client()?;
    match command {
        DeviceCommand::Add(a) => {
            let created: DeviceCredentials = client.post(
                "registering the device",
                "/api/v1/devices",
                &DeviceCreate {
                    id: a.id.clone(),
                    name: a.name.clone(),
                },
            )?;
            print_credentials(&created, a.json)
        }
        DeviceCommand::List(a) => {
            let devices: Vec<DeviceSummary> = client.get("listing devices", "/api/v1/devices")?;
            if a.json {
                return print_json(&devices);
            }
            let rows: Vec<Vec<String>> = devices
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        or_dash(d.name.as_deref()).to_owned(),
                        if d.online { "online" } else { "offline" }.to_owned(),
                        or_dash(d.hardware_class.as_deref()).to_owned(),
                        d.last_seen.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                        if d.has_token { "yes" } else { "revoked" }.to_owned(),
                    ]
                })
                .collect();
            table(&["ID", "NAME", "STATE", "HARDWARE", "LAST SEEN", "TOKEN"], &rows);
            Ok(())
        }
        DeviceCommand::Show(a) => {
            let d: DeviceDetail = client.get("reading the device", &format!("/api/v1/devices/{}", a.id))?;
            if a.json {
                return print_json(&d);
            }
            let s = &d.summary;
            println!("device:    {}", s.id);
            println!("name:      {}", or_dash(s.name.as_deref()));
            println!("state:     {}", if s.online { "online" } else { "offline" });
            println!("hardware:  {}", or_dash(s.hardware_class.as_deref()));
            println!(
                "last seen: {}",
                s.last_seen.map_or_else(|| "-".to_owned(), |t| t.to_string())
            );
            println!("token:     {}", if s.has_token { "valid" } else { "revoked" });
            println!("entities:");
            for e in &d.entities {
                println!("  {} ({})", e.topic_id, e.entity_type);
            }
            println!("capabilities:");
            for c in &d.capabilities {
                println!("  {} on {}", c.name, c.topic_id);
            }
            println!("health:");
            for h in &d.health {
                println!(
                    "  {}: {}",
                    h.topic_id,
                    h.value.get("status").and_then(|v| v.as_str()).unwrap_or("?")
                );
            }
            println!("twin:");
            for t in &d.twin {
                println!("  {} {}: {}", t.topic_id, t.name, t.value);
            }
            println!("software:");
            for m in &d.software {
                println!(
                    "  {} {} {}",
                    m.software_type,
                    m.name,
                    or_dash(m.version.as_deref())
                );
            }
            Ok(())
        }
        DeviceCommand::Token(a) => {
            if a.revoke {
                client.delete("revoking the token", &format!("/api/v1/devices/{}/token", a.id))?;
                if a.json {
                    return print_json(&serde_json::json!({ "id": a.id, "revoked": true }));
                }
                println!("token of {} revoked", a.id);
                return Ok(());
            }
            let c: DeviceCredentials = client.post(
                "issuing a token",
                &format!("/api/v1/devices/{}/token", a.id),
                &serde_json::json!({}),
            )?;
            print_credentials(&c, a.json)
        }
    }
}

// ------------------------------------------------------------------------------------------------
// model push | list | show | alias

/// `model push`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  edgemlops model push vqi-1.2.0-x86_64.emp\n\n\
                        The hub verifies the signature against its trusted publisher keys and stores the \
                        package as a variant of MODEL@VERSION for the manifest's hardware class. Pushing the \
                        same file again is a no-op.")]
pub struct PushArgs {
    /// The package file (.emp).
    pub file: PathBuf,
    /// Print the hub's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `model show`
#[derive(Debug, Args)]
pub struct ModelShowArgs {
    /// Model name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `model alias`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  edgemlops model alias vqi production 1.2.0\n  \
                        edgemlops deploy vqi@production --device pole-cam-17")]
pub struct AliasArgs {
    /// Model name.
    pub name: String,
    /// Alias (lowercase, starts with a letter: production, canary).
    pub alias: String,
    /// The version it should point to.
    pub version: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `model push`.
pub fn push(hub: &HubArgs, a: &PushArgs) -> Result<()> {
    let client = hub.client()?;
    let file = std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let len = file
        .metadata()
        .with_context(|| a.file.display().to_string())?
        .len();
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("uploading {}", a.file.display()));
    let pushed: PackagePushed = client.upload(
        "pushing the package",
        "/api/v1/packages",
        bar.wrap_read(file),
        len,
    )?;
    bar.finish_and_clear();
    if a.json {
        return print_json(&pushed);
    }
    println!(
        "{} {}@{} ({}) sha256 {} ({})",
        if pushed.created {
            "stored"
        } else {
            "already stored:"
        },
        pushed.model,
        pushed.version,
        pushed.hardware_class,
        pushed.sha256,
        crate::fmt::bytes(pushed.size)
    );
    Ok(())
}

/// Runs `model list`.
pub fn list_models(hub: &HubArgs, a: &JsonArgs) -> Result<()> {
    let models: Vec<ModelSummary> = hub.client()?.get("listing models", "/api/v1/models")?;
    if a.json {
        return print_json(&models);
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let aliases: Vec<String> = m.aliases.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                m.name.clone(),
                m.task.clone(),
                m.versions.join(", "),
                if aliases.is_empty() {
                    "-".into()
                } else {
                    aliases.join(", ")
                },
            ]
        })
        .collect();
    table(&["MODEL", "TASK", "VERSIONS", "ALIASES"], &rows);
    Ok(())
}

/// Runs `model show`.
pub fn show_model(hub: &HubArgs, a: &ModelShowArgs) -> Result<()> {
    let m: ModelDetail = hub.client()?.get(
        "reading the model",
        &format!("/api/v1/models/{}", encode(&a.name)),
    )?;
    if a.json {
        return print_json(&m);
    }
    println!("model: {} ({})", m.name, m.task);
    println!("versions:");
    for v in &m.versions {
        println!("  {} (pushed {})", v.version, v.created_at);
        for var in &v.variants {
            println!(
                "    {:<16} {} {}",
                var.hardware_class,
                crate::fmt::bytes(var.size),
                var.sha256
            );
        }
    }
    println!("aliases:");
    for (k, v) in &m.aliases {
        println!("  {k} -> {v}");
    }
    if !m.alias_history.is_empty() {
        println!("alias history:");
        for h in &m.alias_history {
            println!(
                "  {} {}: {} -> {} by {}",
                h.changed_at,
                h.alias,
                or_dash(h.previous.as_deref()),
                h.version,
                h.changed_by
            );
        }
    }
    Ok(())
}

/// Runs `model alias`.
pub fn alias(hub: &HubArgs, a: &AliasArgs) -> Result<()> {
    let change: AliasChange = hub.client()?.put(
        "setting the alias",
        &format!("/api/v1/models/{}/aliases/{}", encode(&a.name), encode(&a.alias)),
        &AliasSet {
            version: a.version.clone(),
        },
    )?;
    if a.json {
        return print_json(&change);
    }
    println!(
        "{}: {} -> {} (was {})",
        a.name,
        change.alias,
        change.version,
        or_dash(change.previous.as_deref())
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// deploy | rollback | command | alarm

/// `deploy`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops deploy vqi@1.2.0 --device pole-cam-17\n  \
                        edgemlops deploy vqi@production --device pole-cam-17 --hardware-class aarch64\n  \
                        edgemlops deploy vqi@1.1.0 --device pole-cam-17 --remove\n\n\
                        The variant is the best one for the hardware class in the device's twin (twin/edgemlops) \
                        unless --hardware-class picks one. The command is queued until the device is online."
)]
pub struct DeployArgs {
    /// MODEL@VERSION (the version may be an alias).
    pub model: ModelRef,
    /// Target device.
    #[arg(long)]
    pub device: DeviceId,
    /// Use the variant of this hardware class.
    #[arg(long)]
    pub hardware_class: Option<String>,
    /// Remove this version instead of installing it.
    #[arg(long)]
    pub remove: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rollback`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops rollback --device pole-cam-17 --model vqi\n\n\
                        Installs the version of the model that the device had before its current one."
)]
pub struct RollbackArgs {
    /// Target device.
    #[arg(long)]
    pub device: DeviceId,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edgemlops command ...`
#[derive(Debug, Subcommand)]
pub enum CommandCommand {
    /// List commands, newest first.
    List(CommandListArgs),
    /// Show a command with every state and its time.
    Show(CommandShowArgs),
}

/// `command list`
#[derive(Debug, Args)]
pub struct CommandListArgs {
    /// Only this device's commands.
    #[arg(long)]
    pub device: Option<DeviceId>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `command show`
#[derive(Debug, Args)]
pub struct CommandShowArgs {
    /// Command id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `edgemlops alarm ...`
#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// List alarms, newest first.
    #[command(
        after_help = "Examples:\n  edgemlops alarm list --active\n  edgemlops alarm list --device pole-cam-17 --json"
    )]
    List(AlarmListArgs),
}

/// `alarm list`
#[derive(Debug, Args)]
pub struct AlarmListArgs {
    /// Only this device.
    #[arg(long)]
    pub device: Option<DeviceId>,
    /// Only this alarm type.
    #[arg(long = "type")]
    pub alarm_type: Option<String>,
    /// Only active alarms.
    #[arg(long, conflicts_with = "cleared")]
    pub active: bool,
    /// Only cleared alarms.
    #[arg(long)]
    pub cleared: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn print_command(c: &CommandInfo, json: bool) -> Result<()> {
    if json {
        return print_json(c);
    }
    println!("command:  {}", c.id);
    println!("device:   {}", c.device);
    println!("op:       {}", c.operation);
    if let (Some(m), Some(v)) = (&c.model, &c.version) {
        println!("model:    {m}@{v}");
    }
    println!("status:   {}", c.status);
    if let Some(r) = &c.reason {
        println!("reason:   {r}");
    }
    println!("sent:     {} time(s)", c.sent_count);
    println!("history:");
    for t in &c.history {
        println!(
            "  {}  {}{}",
            t.at,
            t.status,
            t.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `deploy`.
pub fn deploy(hub: &HubArgs, a: &DeployArgs) -> Result<()> {
    let c: CommandInfo = hub.client()?.post(
        "creating the software_update command",
        "/api/v1/commands/software_update",
        &DeployRequest {
            device: a.device.clone(),
            model: a.model.name.clone(),
            version: a.model.version.clone(),
            action: if a.remove {
                ModuleAction::Remove
            } else {
                ModuleAction::Install
            },
            hardware_class: a.hardware_class.clone(),
        },
    )?;
    print_command(&c, a.json)
}

/// Runs `rollback`.
pub fn rollback(hub: &HubArgs, a: &RollbackArgs) -> Result<()> {
    let c: CommandInfo = hub.client()?.post(
        "creating the rollback",
        "/api/v1/commands/rollback",
        &RollbackRequest {
            device: a.device.clone(),
            model: a.model.clone(),
        },
    )?;
    print_command(&c, a.json)
}

/// Runs `command ...`.
pub fn command(hub: &HubArgs, cmd: &CommandCommand) -> Result<()> {
    let client = hub.client()?;
    match cmd {
        CommandCommand::List(a) => {
            #[derive(Serialize)]
            struct Q<'a> {
                device: Option<&'a str>,
                limit: u32,
            }
            let list: Vec<CommandInfo> = client.get_query(
                "listing commands",
                "/api/v1/commands",
                &Q {
                    device: a.device.as_ref().map(DeviceId::as_str),
                    limit: a.limit,
                },
            )?;
            if a.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.device.to_string(),
                        c.operation.to_string(),
                        match (&c.model, &c.version) {
                            (Some(m), Some(v)) => format!("{m}@{v}"),
                            _ => "-".into(),
                        },
                        c.status.to_string(),
                        c.updated_at.to_string(),
                    ]
                })
                .collect();
            table(
                &["ID", "DEVICE", "OPERATION", "MODEL", "STATUS", "UPDATED"],
                &rows,
            );
            Ok(())
        }
        CommandCommand::Show(a) => {
            let c: CommandInfo = client.get(
                "reading the command",
                &format!("/api/v1/commands/{}", encode(&a.id)),
            )?;
            print_command(&c, a.json)
        }
    }
}

/// Runs `alarm ...`.
pub fn alarm(hub: &HubArgs, cmd: &AlarmCommand) -> Result<()> {
    let AlarmCommand::List(a) = cmd;
    let query = TelemetryQuery {
        device: a.device.as_ref().map(ToString::to_string),
        kind: a.alarm_type.clone(),
        active: if a.active {
            Some(true)
        } else if a.cleared {
            Some(false)
        } else {
            None
        },
        limit: Some(a.limit),
        ..TelemetryQuery::default()
    };
    let alarms: Vec<AlarmRecord> = hub
        .client()?
        .get_query("listing alarms", "/api/v1/alarms", &query)?;
    if a.json {
        return print_json(&alarms);
    }
    let rows: Vec<Vec<String>> = alarms
        .iter()
        .map(|x| {
            vec![
                x.device.to_string(),
                x.alarm_type.clone(),
                x.severity.to_string(),
                x.cleared_at
                    .map_or_else(|| "active".to_owned(), |t| format!("cleared {t}")),
                x.raised_at.to_string(),
                or_dash(x.text.as_deref()).to_owned(),
            ]
        })
        .collect();
    table(&["DEVICE", "TYPE", "SEVERITY", "STATE", "RAISED", "TEXT"], &rows);
    Ok(())
}
