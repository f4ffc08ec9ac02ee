//! Commands to devices: `software_update` (install or remove a model version), `software_list`,
//! rollback (install the version a device had before its current one), and `log_upload` (the
//! device PUTs the selected lines of one of its logs to a URL the caller gives; the hub does not
//! store uploaded logs).
//!
//! A command is a row first ([`store`]): created in `init`, with every state transition stored
//! with its time. Delivery is the te/ retained-command convention on the device's prefix
//! (`devices/<id>/te/device/main///cmd/<op>/<id>`, retain flag set): the hub hands a command to
//! the device's connection when it is created and again whenever the device subscribes to a
//! matching filter (which it does on every connect), until the device reports a state. With
//! several hub nodes the device may be connected to another node than the one that created the
//! command: the creating node signals the others ([`crate::cluster::Signal::CommandCreated`]) and
//! the node holding the connection delivers. A download URL in a re-sent command carries a fresh
//! token. When the device reports `successful` or `failed`, the hub clears the topic with an empty
//! retained message (the requester's duty in te/) — see `ingest`. A command with no final state
//! after `commands.expire_after_secs` is failed by the once-per-fleet expiry.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use proto::api::{CommandInfo, DeployRequest, RollbackRequest};
use proto::command::{CommandOp, CommandState, LogUpload, ModuleAction, SoftwareList};
use proto::edgemlops::{ModelRef, install_model, remove_model};
use proto::topic::{Channel, TeTopic};
use proto::{DeviceId, DeviceTopic};

pub use self::store::{CommandRecord, CommandStore, Expired, NewCommand, StateApplied};
use crate::auth::Caller;
use crate::cluster::{Cluster, Signal};
use crate::devices::{Devices, MAIN_ENTITY};
use crate::error::{DbContext, HubError};
use crate::metrics::Metrics;
use crate::registry::{DownloadLinks, Registry};
use crate::stdx::{new_id, now_ms, ts};
use crate::transport::{Connections, DeviceTransport, Outbound, filter_matches};

/// The absolute topic of a command on the main device.
pub fn command_topic(device: &DeviceId, operation: &CommandOp, cmd_id: &str) -> Result<String, HubError> {
    let topic = TeTopic::main(Channel::Command {
        operation: operation.clone(),
        cmd_id: cmd_id.to_owned(),
    })
    .map_err(|e| HubError::BadRequest(e.to_string()))?;
    Ok(DeviceTopic::new(device.clone(), topic).to_string())
}

/// The message that clears a command's retained topic (te/: the requester does it at the end).
pub fn clear_message(device: &DeviceId, operation: &CommandOp, cmd_id: &str) -> Option<Outbound> {
    command_topic(device, operation, cmd_id)
        .ok()
        .map(|topic| Outbound::Publish {
            topic,
            payload: Vec::new(),
            retain: true,
        })
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

/// The command service.
#[derive(Clone, Debug)]
pub struct Commands {
    store: CommandStore,
    registry: Registry,
    devices: Devices,
    links: DownloadLinks,
    connections: Arc<Connections>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    expire_after: Duration,
}

/// What a new command is, before it has an id.
struct Request<'a> {
    device: &'a DeviceId,
    operation: CommandOp,
    model: Option<&'a str>,
    version: Option<&'a str>,
    action: Option<ModuleAction>,
    hardware_class: Option<&'a str>,
    package_sha256: Option<&'a str>,
    request: Option<String>,
}

impl Commands {
    /// The service; `expire_after`: how long a command may stay without a final state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: CommandStore,
        registry: Registry,
        devices: Devices,
        links: DownloadLinks,
        connections: Arc<Connections>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        expire_after: Duration,
    ) -> Self {
        Self {
            store,
            registry,
            devices,
            links,
            connections,
            cluster,
            metrics,
            expire_after,
        }
    }

    /// The te/ payload of a command, built at each send (a fresh download token each time).
    fn payload(&self, c: &CommandRecord) -> Result<Vec<u8>, HubError> {
        match &c.operation {
            CommandOp::SoftwareUpdate => {
                let model = ModelRef::new(
                    c.model.clone().unwrap_or_default(),
                    c.version.clone().unwrap_or_default(),
                );
                let state = match c.action {
                    Some(ModuleAction::Remove) => remove_model(&model),
                    _ => {
                        let sha = c.package_sha256.as_deref().unwrap_or_default();
                        install_model(&model, self.links.url(sha, c.device.as_str()).url)
                    }
                };
                Ok(state.to_json())
            }
            CommandOp::SoftwareList => Ok(CommandState::request(SoftwareList::default()).to_json()),
            // Fixed at creation (and rewritten unchanged at each send).
            CommandOp::LogUpload => Ok(c.request.clone().into_bytes()),
            other => Err(HubError::BadRequest(format!(
                "the hub does not create {other} commands"
            ))),
        }
    }

    fn outbound(&self, c: &CommandRecord) -> Result<Outbound, HubError> {
        Ok(Outbound::Publish {
            topic: command_topic(&c.device, &c.operation, &c.id)?,
            payload: self.payload(c)?,
            retain: true,
        })
    }

    async fn create(&self, caller: &Caller, new: Request<'_>) -> Result<CommandInfo, HubError> {
        self.devices.ensure_exists(new.device).await?;
        let id = new_id("c-");
        self.store
            .insert(
                &NewCommand {
                    id: &id,
                    device: new.device,
                    topic_id: MAIN_ENTITY,
                    operation: &new.operation,
                    model: new.model,
                    version: new.version,
                    action: new.action,
                    hardware_class: new.hardware_class,
                    package_sha256: new.package_sha256,
                    request: new.request.as_deref(),
                    created_by: &caller.user,
                },
                now_ms(),
            )
            .await
            .db("creating a command")?;
        self.metrics.commands_created.inc();
        tracing::info!(device = %new.device, cmd_id = %id, operation = %new.operation, by = %caller.user, "command created");
        if !self.deliver(&id).await? {
            // Not connected here: the node it is connected to (if any) delivers it.
            self.cluster.publish(Signal::CommandCreated {
                device: new.device.clone(),
                command: id.clone(),
            });
        }
        self.get(&id).await
    }

    /// Hands command `id` to the device's connection if it is connected to this node and the
    /// command still waits for it; counts the send.
    pub async fn deliver(&self, id: &str) -> Result<bool, HubError> {
        let Some(c) = self.store.get(id).await.db("reading a command")? else {
            return Ok(false);
        };
        if !self.connections.is_online(&c.device) || c.status != proto::command::CommandStatus::Init {
            return Ok(false);
        }
        self.send(&c).await
    }

    async fn send(&self, c: &CommandRecord) -> Result<bool, HubError> {
        let message = self.outbound(c)?;
        let Outbound::Publish { payload, .. } = &message else {
            return Ok(false);
        };
        self.record_send(&c.id, payload).await?;
        Ok(self.connections.send(&c.device, message))
    }

    async fn record_send(&self, id: &str, payload: &[u8]) -> Result<(), HubError> {
        self.store
            .record_send(id, &String::from_utf8_lossy(payload), now_ms())
            .await
            .db("recording a command send")?;
        self.metrics.commands_sent.inc();
        Ok(())
    }

    /// The commands a device has not reported on yet whose topics match one of `filters`, as
    /// messages to publish, counted as sent. Called when the device subscribes.
    pub async fn pending_for(
        &self,
        device: &DeviceId,
        filters: &[String],
    ) -> Result<Vec<Outbound>, HubError> {
        let pending = self
            .store
            .pending(Some(device))
            .await
            .db("reading pending commands")?;
        let mut out = Vec::new();
        for c in pending {
            let message = self.outbound(&c)?;
            let Outbound::Publish { topic, payload, .. } = &message else {
                continue;
            };
            if filters.iter().any(|f| filter_matches(f, topic)) {
                self.record_send(&c.id, payload).await?;
                out.push(message);
            }
        }
        Ok(out)
    }

    /// Delivers every pending command of the devices connected to this node (after signals may
    /// have been missed, e.g. while the listener reconnected).
    pub async fn deliver_all_pending(&self) -> Result<usize, HubError> {
        let pending = self.store.pending(None).await.db("reading pending commands")?;
        let mut sent = 0;
        for c in pending.iter().filter(|c| self.connections.is_online(&c.device)) {
            if self.send(c).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Fails every command older than `commands.expire_after_secs` without a final state and
    /// clears the topics of those whose device is connected (here, or through a signal, on its
    /// node). Once-per-fleet work.
    pub async fn expire(&self) -> Result<usize, HubError> {
        let after_ms = i64::try_from(self.expire_after.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let reason = format!(
            "expired: no final state within {} s (commands.expire_after_secs)",
            self.expire_after.as_secs()
        );
        let expired = self
            .store
            .expire(now.saturating_sub(after_ms), &reason, now)
            .await
            .db("expiring commands")?;
        for e in &expired {
            tracing::info!(device = %e.device, cmd_id = %e.id, operation = %e.operation, "command expired");
            if !self.clear_expired(e) {
                self.cluster.publish(Signal::CommandExpired {
                    device: e.device.clone(),
                    command: e.id.clone(),
                });
            }
        }
        Ok(expired.len())
    }

    /// Clears an expired command's topic if its device is connected here.
    fn clear_expired(&self, e: &Expired) -> bool {
        clear_message(&e.device, &e.operation, &e.id).is_some_and(|m| self.connections.send(&e.device, m))
    }

    /// Another node expired command `id`: clear its topic if the device is connected here.
    pub async fn expired_elsewhere(&self, id: &str) -> Result<(), HubError> {
        if let Some(c) = self.store.get(id).await.db("reading a command")? {
            self.clear_expired(&Expired {
                id: c.id,
                device: c.device,
                operation: c.operation,
            });
        }
        Ok(())
    }

    /// `software_update`: install or remove a model version on a device.
    pub async fn software_update(
        &self,
        caller: &Caller,
        req: &DeployRequest,
    ) -> Result<CommandInfo, HubError> {
        self.devices.ensure_exists(&req.device).await?;
        let version = self.registry.resolve_version(&req.model, &req.version).await?;
        let chosen = match req.action {
            ModuleAction::Install => {
                let class = self.devices.hardware_class(&req.device).await?;
                Some(
                    self.registry
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
        self.create(
            caller,
            Request {
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
    pub async fn software_list(&self, caller: &Caller, device: &DeviceId) -> Result<CommandInfo, HubError> {
        self.create(
            caller,
            Request {
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

    /// `log_upload`: the device uploads the selected lines of one of its logs to `upload_url`.
    pub async fn log_upload(&self, caller: &Caller, req: &LogUploadRequest) -> Result<CommandInfo, HubError> {
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
        self.create(
            caller,
            Request {
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

    /// Rollback: install the version of the model that the device had installed before its
    /// current one.
    pub async fn rollback(&self, caller: &Caller, req: &RollbackRequest) -> Result<CommandInfo, HubError> {
        self.devices.ensure_exists(&req.device).await?;
        let installs = self
            .store
            .installed_versions(&req.device, &req.model)
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
        self.software_update(
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

    async fn info(&self, c: CommandRecord) -> Result<CommandInfo, HubError> {
        let history = self.store.history(&c.id).await.db("reading command history")?;
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        Ok(CommandInfo {
            request: json(Some(c.request)).unwrap_or(serde_json::Value::Null),
            response: json(c.response),
            id: c.id,
            device: c.device,
            operation: c.operation,
            status: c.status,
            reason: c.reason,
            model: c.model,
            version: c.version,
            created_by: c.created_by,
            created_at: ts(c.created_at),
            updated_at: ts(c.updated_at),
            sent_count: u32::try_from(c.sent_count).unwrap_or(u32::MAX),
            history,
        })
    }

    /// One command with its history.
    pub async fn get(&self, id: &str) -> Result<CommandInfo, HubError> {
        let c = self
            .store
            .get(id)
            .await
            .db("reading a command")?
            .ok_or_else(|| HubError::not_found("command", id))?;
        self.info(c).await
    }

    /// Commands, newest first: of one device (its command history) or of all.
    pub async fn list(&self, device: Option<&DeviceId>, limit: u32) -> Result<Vec<CommandInfo>, HubError> {
        if let Some(d) = device {
            self.devices.ensure_exists(d).await?;
        }
        let rows = self.store.list(device, limit).await.db("listing commands")?;
        let mut out = Vec::with_capacity(rows.len());
        for c in rows {
            out.push(self.info(c).await?);
        }
        Ok(out)
    }
}
