//! Commands to devices: `software_update` (install or remove a model version), `software_list`,
//! rollback (install the version a device had before its current one), and `log_upload` (the
//! device PUTs the selected lines of one of its logs to a URL the caller gives; the hub does not
//! store uploaded logs).
//!
//! A command is a row first: created in `init`, with every state transition stored with its time
//! (`command_transitions`). Delivery is the te/ retained-command convention on the device's
//! prefix (`devices/<id>/te/device/main///cmd/<op>/<id>`, retain flag set): the hub hands a
//! command to the device's connection when it is created and again whenever the device
//! subscribes to a matching filter (which it does on every connect), until the device reports a
//! state. A download URL in a re-sent command carries a fresh token. When the device reports
//! `successful` or `failed`, the hub clears the topic with an empty retained message (the
//! requester's duty in te/) — see `ingest`.

use proto::api::{CommandInfo, CommandTransition, DeployRequest, RollbackRequest};
use proto::command::{CommandOp, CommandState, CommandStatus, LogUpload, ModuleAction, SoftwareList};
use proto::edgemlops::{ModelRef, install_model, remove_model};
use proto::topic::{Channel, TeTopic};
use proto::{DeviceId, DeviceTopic};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::auth::Caller;
use crate::devices;
use crate::error::{DbContext, HubError};
use crate::registry::download_url;
use crate::state::Hub;
use crate::stdx::{new_id, now_ms, ts};
use crate::transport::{Outbound, filter_matches};

/// The absolute topic of a command on the main device.
pub fn command_topic(device: &DeviceId, operation: &CommandOp, cmd_id: &str) -> Result<String, HubError> {
    let topic = TeTopic::main(Channel::Command {
        operation: operation.clone(),
        cmd_id: cmd_id.to_owned(),
    })
    .map_err(|e| HubError::BadRequest(e.to_string()))?;
    Ok(DeviceTopic::new(device.clone(), topic).to_string())
}

/// What to store for a new command.
struct NewCommand<'a> {
    device: &'a DeviceId,
    operation: CommandOp,
    model: Option<&'a str>,
    version: Option<&'a str>,
    action: Option<ModuleAction>,
    hardware_class: Option<&'a str>,
    package_sha256: Option<&'a str>,
    /// The te/ payload, for commands whose payload is fixed at creation (`log_upload`).
    request: Option<String>,
}

fn action_str(a: ModuleAction) -> &'static str {
    match a {
        ModuleAction::Install => "install",
        ModuleAction::Remove => "remove",
    }
}

/// The te/ payload of a command, built at each send (a fresh download token each time).
fn payload(hub: &Hub, row: &SqliteRow) -> Result<Vec<u8>, HubError> {
    let device: String = row.get("device_id");
    let operation = CommandOp::from(row.get::<&str, _>("operation"));
    match operation {
        CommandOp::SoftwareUpdate => {
            let model = ModelRef::new(
                row.get::<Option<String>, _>("model").unwrap_or_default(),
                row.get::<Option<String>, _>("version").unwrap_or_default(),
            );
            let state = match row.get::<Option<&str>, _>("action") {
                Some("remove") => remove_model(&model),
                _ => {
                    let sha: String = row.get::<Option<String>, _>("package_sha256").unwrap_or_default();
                    let url =
                        download_url(&hub.signer, &hub.public_url, &sha, &device, hub.download_ttl_secs);
                    install_model(&model, url.url)
                }
            };
            Ok(state.to_json())
        }
        CommandOp::SoftwareList => Ok(CommandState::request(SoftwareList::default()).to_json()),
        // Fixed at creation (and rewritten unchanged at each send).
        CommandOp::LogUpload => Ok(row.get::<String, _>("request").into_bytes()),
        other => Err(HubError::BadRequest(format!(
            "the hub does not create {other} commands"
        ))),
    }
}

async fn create(hub: &Hub, caller: &Caller, new: NewCommand<'_>) -> Result<CommandInfo, HubError> {
    devices::ensure_exists(&hub.pool, new.device).await?;
    let id = new_id("c-");
    let now = now_ms();
    let topic_id = devices::MAIN_ENTITY;
    let mut tx = crate::db::begin_write(&hub.pool).await.db("creating a command")?;
    sqlx::query(
        "INSERT INTO commands (id, device_id, topic_id, operation, status, model, version, action, \
         hardware_class, package_sha256, request, created_by, created_at, updated_at, sent_count) \
         VALUES ($1, $2, $3, $4, 'init', $5, $6, $7, $8, $9, $10, $11, $12, $12, 0)",
    )
    .bind(&id)
    .bind(new.device.as_str())
    .bind(topic_id)
    .bind(new.operation.as_str())
    .bind(new.model)
    .bind(new.version)
    .bind(new.action.map(action_str))
    .bind(new.hardware_class)
    .bind(new.package_sha256)
    .bind(new.request.as_deref().unwrap_or("{}"))
    .bind(&caller.user)
    .bind(now)
    .execute(&mut *tx)
    .await
    .db("creating a command")?;
    sqlx::query("INSERT INTO command_transitions (command_id, seq, status, at) VALUES ($1, 1, 'init', $2)")
        .bind(&id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .db("creating a command")?;
    tx.commit().await.db("creating a command")?;
    hub.metrics.commands_created.inc();
    tracing::info!(device = %new.device, cmd_id = %id, operation = %new.operation, by = %caller.user, "command created");
    send(hub, &id).await?;
    get(hub, &id).await
}

/// Hands command `id` to the device's connection if it is online; counts the send.
async fn send(hub: &Hub, id: &str) -> Result<bool, HubError> {
    let row = sqlx::query("SELECT * FROM commands WHERE id = $1")
        .bind(id)
        .fetch_one(&hub.pool)
        .await
        .db("reading a command")?;
    let device =
        DeviceId::new(row.get::<String, _>("device_id")).map_err(|e| HubError::BadRequest(e.to_string()))?;
    if !hub.transport().is_online(&device) {
        return Ok(false);
    }
    let message = outbound(hub, &row)?;
    let Outbound::Publish { payload, .. } = &message else {
        return Ok(false);
    };
    record_send(hub, id, payload).await?;
    Ok(hub.transport().send(&device, message))
}

fn outbound(hub: &Hub, row: &SqliteRow) -> Result<Outbound, HubError> {
    let device =
        DeviceId::new(row.get::<String, _>("device_id")).map_err(|e| HubError::BadRequest(e.to_string()))?;
    let operation = CommandOp::from(row.get::<&str, _>("operation"));
    Ok(Outbound::Publish {
        topic: command_topic(&device, &operation, row.get("id"))?,
        payload: payload(hub, row)?,
        retain: true,
    })
}

async fn record_send(hub: &Hub, id: &str, payload: &[u8]) -> Result<(), HubError> {
    sqlx::query(
        "UPDATE commands SET sent_count = sent_count + 1, last_sent_at = $1, request = $2 WHERE id = $3",
    )
    .bind(now_ms())
    .bind(String::from_utf8_lossy(payload).as_ref())
    .bind(id)
    .execute(&hub.pool)
    .await
    .db("recording a command send")?;
    hub.metrics.commands_sent.inc();
    Ok(())
}

/// The commands a device has not reported on yet whose topics match one of `filters`, as
/// messages to publish, counted as sent. Called when the device subscribes.
pub async fn pending_for(
    hub: &Hub,
    device: &DeviceId,
    filters: &[String],
) -> Result<Vec<Outbound>, HubError> {
    let rows = sqlx::query(
        "SELECT * FROM commands WHERE device_id = $1 AND status = 'init' ORDER BY created_at, id",
    )
    .bind(device.as_str())
    .fetch_all(&hub.pool)
    .await
    .db("reading pending commands")?;
    let mut out = Vec::new();
    for row in rows {
        let message = outbound(hub, &row)?;
        let Outbound::Publish { topic, payload, .. } = &message else {
            continue;
        };
        if filters.iter().any(|f| filter_matches(f, topic)) {
            record_send(hub, row.get("id"), payload).await?;
            out.push(message);
        }
    }
    Ok(out)
}

/// `software_update`: install or remove a model version on a device.
pub async fn software_update(
    hub: &Hub,
    caller: &Caller,
    req: &DeployRequest,
) -> Result<CommandInfo, HubError> {
    devices::ensure_exists(&hub.pool, &req.device).await?;
    let version = hub.registry.resolve_version(&req.model, &req.version).await?;
    let chosen = match req.action {
        ModuleAction::Install => {
            let class = devices::hardware_class(&hub.pool, &req.device).await?;
            Some(
                hub.registry
                    .choose_variant(
                        &req.model,
                        &version,
                        class.as_ref(),
                        req.hardware_class.as_deref(),
                    )
                    .await?,
            )
        }
        ModuleAction::Remove => None,
    };
    create(
        hub,
        caller,
        NewCommand {
            device: &req.device,
            operation: CommandOp::SoftwareUpdate,
            model: Some(&req.model),
            version: Some(&version),
            action: Some(req.action),
            hardware_class: chosen.as_ref().map(|c| c.hardware_class.as_str()),
            package_sha256: chosen.as_ref().map(|c| c.sha256.as_str()),
            request: None,
        },
    )
    .await
}

/// `software_list`: ask the device what it has installed.
pub async fn software_list(hub: &Hub, caller: &Caller, device: &DeviceId) -> Result<CommandInfo, HubError> {
    create(
        hub,
        caller,
        NewCommand {
            device,
            operation: CommandOp::SoftwareList,
            model: None,
            version: None,
            action: None,
            hardware_class: None,
            package_sha256: None,
            request: None,
        },
    )
    .await
}

/// `POST /commands/log_upload`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogUploadRequest {
    /// Target device.
    pub device: DeviceId,
    /// Log type (one the device announced in its `log_upload` capability).
    #[serde(rename = "type")]
    pub log_type: String,
    /// Start of the range (RFC 3339, or unix seconds).
    pub date_from: proto::Timestamp,
    /// End of the range.
    pub date_to: proto::Timestamp,
    /// Only lines containing this text.
    #[serde(default)]
    pub search_text: Option<String>,
    /// At most this many lines (the newest).
    #[serde(default)]
    pub lines: Option<u32>,
    /// Where the device PUTs the log (`tedgeUrl`); the hub does not store uploaded logs.
    pub upload_url: String,
}

/// `log_upload`: the device uploads the selected lines of one of its logs to `upload_url`.
pub async fn log_upload(hub: &Hub, caller: &Caller, req: &LogUploadRequest) -> Result<CommandInfo, HubError> {
    if !(req.upload_url.starts_with("http://") || req.upload_url.starts_with("https://")) {
        return Err(HubError::BadRequest(format!(
            "upload_url '{}' is not an http(s) URL",
            req.upload_url
        )));
    }
    if req.log_type.is_empty() {
        return Err(HubError::BadRequest("type must name a log type".into()));
    }
    if req.date_from > req.date_to {
        return Err(HubError::BadRequest(format!(
            "date_from {} is after date_to {}",
            req.date_from, req.date_to
        )));
    }
    let state = CommandState::request(LogUpload {
        upload_url: req.upload_url.clone(),
        log_type: req.log_type.clone(),
        date_from: req.date_from,
        date_to: req.date_to,
        search_text: req.search_text.clone(),
        lines: req.lines,
        extras: Default::default(),
    });
    create(
        hub,
        caller,
        NewCommand {
            device: &req.device,
            operation: CommandOp::LogUpload,
            model: None,
            version: None,
            action: None,
            hardware_class: None,
            package_sha256: None,
            request: Some(String::from_utf8_lossy(&state.to_json()).into_owned()),
        },
    )
    .await
}

/// Rollback: install the version of the model that the device had installed before its current one.
pub async fn rollback(hub: &Hub, caller: &Caller, req: &RollbackRequest) -> Result<CommandInfo, HubError> {
    devices::ensure_exists(&hub.pool, &req.device).await?;
    let installs: Vec<String> = sqlx::query_scalar(
        "SELECT version FROM model_installs WHERE device_id = $1 AND model = $2 ORDER BY installed_at DESC",
    )
    .bind(req.device.as_str())
    .bind(&req.model)
    .fetch_all(&hub.pool)
    .await
    .db("reading install history")?;
    let Some(current) = installs.first() else {
        return Err(HubError::BadRequest(format!(
            "device '{}' has no recorded install of model '{}' to roll back",
            req.device, req.model
        )));
    };
    let previous = installs.iter().find(|v| *v != current).ok_or_else(|| {
        HubError::BadRequest(format!(
            "device '{}' has had only version {current} of model '{}': nothing to roll back to",
            req.device, req.model
        ))
    })?;
    tracing::info!(device = %req.device, model = %req.model, from = %current, to = %previous, "rollback");
    software_update(
        hub,
        caller,
        &DeployRequest {
            device: req.device.clone(),
            model: req.model.clone(),
            version: previous.clone(),
            action: ModuleAction::Install,
            hardware_class: None,
        },
    )
    .await
}

fn info(row: &SqliteRow, history: Vec<CommandTransition>) -> CommandInfo {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    CommandInfo {
        id: row.get("id"),
        device: DeviceId::new(row.get::<String, _>("device_id"))
            .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id")),
        operation: CommandOp::from(row.get::<&str, _>("operation")),
        status: CommandStatus::parse(row.get::<&str, _>("status")),
        reason: row.get("reason"),
        model: row.get("model"),
        version: row.get("version"),
        request: json(Some(row.get("request"))).unwrap_or(serde_json::Value::Null),
        response: json(row.get("response")),
        created_by: row.get("created_by"),
        created_at: ts(row.get("created_at")),
        updated_at: ts(row.get("updated_at")),
        sent_count: u32::try_from(row.get::<i64, _>("sent_count")).unwrap_or(u32::MAX),
        history,
    }
}

async fn history(hub: &Hub, id: &str) -> Result<Vec<CommandTransition>, HubError> {
    let rows =
        sqlx::query("SELECT status, reason, at FROM command_transitions WHERE command_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&hub.pool)
            .await
            .db("reading command history")?;
    Ok(rows
        .iter()
        .map(|r| CommandTransition {
            status: CommandStatus::parse(r.get::<&str, _>(0)),
            reason: r.get(1),
            at: ts(r.get(2)),
        })
        .collect())
}

/// One command with its history.
pub async fn get(hub: &Hub, id: &str) -> Result<CommandInfo, HubError> {
    let row = sqlx::query("SELECT * FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(&hub.pool)
        .await
        .db("reading a command")?
        .ok_or_else(|| HubError::not_found("command", id))?;
    Ok(info(&row, history(hub, id).await?))
}

/// Commands, newest first: of one device (its command history) or of all.
pub async fn list(hub: &Hub, device: Option<&DeviceId>, limit: u32) -> Result<Vec<CommandInfo>, HubError> {
    let rows = match device {
        Some(d) => {
            devices::ensure_exists(&hub.pool, d).await?;
            sqlx::query(
                "SELECT * FROM commands WHERE device_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(d.as_str())
            .bind(i64::from(limit))
            .fetch_all(&hub.pool)
            .await
        }
        None => {
            sqlx::query("SELECT * FROM commands ORDER BY created_at DESC, id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&hub.pool)
                .await
        }
    }
    .db("listing commands")?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get("id");
        out.push(info(&row, history(hub, &id).await?));
    }
    Ok(out)
}
