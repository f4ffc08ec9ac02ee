//! The operations actor: executes te/ commands (`software_list`, `software_update`, `restart`,
//! `log_upload`) one at a time and reports their states through the outbox (retained, highest
//! priority), so a final state reaches the hub even across disconnects and restarts.
//!
//! `software_update` modules of type `onnx` go through the [`Installer`]; other types through
//! external sm-plugins. Every command that reports `executing` is recorded first
//! (`command.json`, [`RunningCommand`]), and its final state is recorded before it is queued, so
//! after a crash the agent ([`OpsMsg::Resume`]) either reports the decided state again or runs the
//! command again (an install resumes from its journal), at most [`MAX_COMMAND_ATTEMPTS`] times:
//! a command never stays `executing` at the hub because the agent restarted.

use std::collections::HashSet;
use std::path::PathBuf;

use proto::DeviceId;
use proto::command::{
    CommandOp, CommandState, CommandStatus, GenericCommand, LogUpload, ModuleAction, SoftwareFailureGroup,
    SoftwareList, SoftwareListGroup, SoftwareModule, SoftwareModuleFailure, SoftwareUpdate,
};
use proto::edgemlops::SOFTWARE_TYPE;
use tokio::sync::mpsc;

use crate::fault;
use crate::install::{Installer, PackageSource};
use crate::outbox::{Outbox, Priority};
use crate::plugin::{ExternalPlugin, discover};
use crate::store::{PendingCommand, RunningCommand};

/// How many times a command is started (restarts included) before it is reported failed.
pub const MAX_COMMAND_ATTEMPTS: u32 = 3;

/// Messages to the operations actor.
#[derive(Debug)]
pub enum OpsMsg {
    /// A command publish from the hub.
    Command {
        /// Full topic.
        topic: String,
        /// Operation.
        operation: CommandOp,
        /// Command id.
        cmd_id: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Finish what the install journal says was in progress (sent once at start).
    Resume,
}

/// The operations actor's state.
#[derive(Debug)]
pub struct Operations {
    installer: Installer,
    outbox: Outbox,
    plugins_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    seen: HashSet<String>,
    /// Set while a recorded command runs again after a restart: its earlier attempts.
    resuming: Option<u32>,
}

impl Operations {
    /// A new actor; `log_file` is the agent's own log (`log_upload`), `None` when it is off.
    pub fn new(
        installer: Installer,
        outbox: Outbox,
        plugins_dir: Option<PathBuf>,
        log_file: Option<PathBuf>,
        _device: DeviceId,
    ) -> Self {
        Self {
            installer,
            outbox,
            plugins_dir,
            log_file,
            seen: HashSet::new(),
            resuming: None,
        }
    }

    fn plugins(&self) -> Vec<ExternalPlugin> {
        self.plugins_dir.as_deref().map(discover).unwrap_or_default()
    }

    /// Software types `software_update` handles.
    pub fn software_types(&self) -> Vec<String> {
        std::iter::once(SOFTWARE_TYPE.to_owned())
            .chain(self.plugins().into_iter().map(|p| p.software_type))
            .collect()
    }

    /// Runs until the channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<OpsMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                OpsMsg::Resume => self.resume().await,
                OpsMsg::Command {
                    topic,
                    operation,
                    cmd_id,
                    payload,
                } => {
                    let span = tracing::info_span!("command", op = %operation, id = %cmd_id);
                    let _e = span.enter();
                    self.command(topic, operation, &payload).await;
                }
            }
        }
    }

    async fn resume(&mut self) {
        let record = self.installer.store.running_command().unwrap_or_else(|e| {
            tracing::error!(error = %e, "unreadable command record; discarding it");
            let _ = self.installer.store.clear_running_command();
            None
        });
        if let Some(r) = record {
            self.resume_command(r).await;
            self.resuming = None;
            return;
        }
        let journal = match self.installer.store.journal() {
            Ok(Some(j)) => j,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "unreadable install journal; discarding it");
                let _ = self.installer.store.clear_journal();
                return;
            }
        };
        tracing::info!(model = %journal.model, version = %journal.version, step = ?journal.step, "resuming an interrupted install");
        match journal.command {
            Some(cmd) => {
                let op = command_op(&cmd.topic);
                let payload = serde_json::to_vec(&cmd.payload).unwrap_or_default();
                match op {
                    Some(op) => self.command(cmd.topic, op, &payload).await,
                    None => {
                        let _ = self.installer.store.clear_journal();
                    }
                }
            }
            None => {
                // An install without a command (sm-plugin mode): thin-edge retries it itself.
                let _ = self.installer.store.clear_journal();
            }
        }
    }

    /// Finishes the command recorded when the agent stopped.
    async fn resume_command(&mut self, r: RunningCommand) {
        if let Some(outcome) = r.outcome {
            // Decided before the restart (maybe not yet queued): report it again, do not run again.
            tracing::info!(topic = %r.topic, "reporting the final state of a command decided before the restart");
            let bytes = serde_json::to_vec(&outcome).unwrap_or_default();
            if let Err(e) = self.outbox.push(&r.topic, &bytes, true, Priority::Command).await {
                tracing::error!(error = %e, "cannot queue a command state");
            }
            self.end_command();
            return;
        }
        let payload = serde_json::to_vec(&r.payload).unwrap_or_default();
        let op = command_op(&r.topic);
        let journal_pending = self.installer.store.journal().ok().flatten().is_some();
        match op {
            // An install in progress runs again: its journal counts attempts and rolls back.
            Some(op) if r.attempts < MAX_COMMAND_ATTEMPTS || journal_pending => {
                tracing::info!(topic = %r.topic, attempts = r.attempts, "running a command interrupted by a restart again");
                self.resuming = Some(r.attempts);
                self.command(r.topic, op, &payload).await;
            }
            Some(_) => {
                let reason = format!(
                    "interrupted by {} restarts of the agent; not run again",
                    r.attempts
                );
                tracing::warn!(topic = %r.topic, %reason, "giving up a command");
                match GenericCommand::parse(&payload).map(|c| c.value()) {
                    Ok(Some(generic)) => self.finish(&r.topic, &generic.failed(reason)).await,
                    _ => self.end_command(),
                }
            }
            None => self.end_command(),
        }
    }

    /// Records the command as running, before `executing` is reported.
    fn record_start(&mut self, topic: &str, payload: &[u8]) {
        let record = RunningCommand {
            topic: topic.to_owned(),
            payload: serde_json::from_slice(payload).unwrap_or_default(),
            attempts: self.resuming.take().unwrap_or(0) + 1,
            outcome: None,
        };
        if let Err(e) = self.installer.store.write_running_command(&record) {
            tracing::error!(error = %e, "cannot record the running command");
        }
    }

    /// Reports a command's final state: recorded first, then queued, then the install journal
    /// and the record end.
    async fn finish<T: serde::Serialize>(&self, topic: &str, state: &CommandState<T>) {
        let json = state.to_json();
        match self.installer.store.running_command() {
            Ok(Some(mut r)) if r.topic == topic => {
                r.outcome = serde_json::from_slice(&json).ok();
                if let Err(e) = self.installer.store.write_running_command(&r) {
                    tracing::error!(error = %e, "cannot record the command's final state");
                }
            }
            _ => {}
        }
        self.report(topic, state).await;
        fault::point("report-sent");
        self.end_command();
    }

    /// Ends the recorded command and its install journal.
    fn end_command(&self) {
        if let Err(e) = self.installer.store.clear_journal() {
            tracing::error!(error = %e, "cannot clear the install journal");
        }
        fault::point("journal-cleared");
        if let Err(e) = self.installer.store.clear_running_command() {
            tracing::error!(error = %e, "cannot clear the command record");
        }
    }

    /// Reads a request of a typed operation: a malformed one is reported failed with the reason,
    /// an empty (cleared) one is ignored; a valid one is reported `executing` and returned.
    async fn begin<T>(
        &mut self,
        topic: &str,
        generic: GenericCommand,
        payload: &[u8],
        operation: &str,
    ) -> Option<CommandState<T>>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + Clone,
    {
        match CommandState::<T>::parse(payload).map(|r| r.value()) {
            Ok(Some(request)) => {
                self.record_start(topic, payload);
                self.report(topic, &request.clone().with_status(CommandStatus::Executing))
                    .await;
                Some(request)
            }
            Ok(None) => None,
            Err(e) => {
                self.report(topic, &generic.failed(format!("malformed {operation}: {e}")))
                    .await;
                None
            }
        }
    }

    async fn report<T: serde::Serialize>(&self, topic: &str, state: &CommandState<T>) {
        if let Err(e) = self
            .outbox
            .push(topic, &state.to_json(), true, Priority::Command)
            .await
        {
            tracing::error!(error = %e, "cannot queue a command state");
        }
    }

    async fn command(&mut self, topic: String, op: CommandOp, payload: &[u8]) {
        let generic = match GenericCommand::parse(payload) {
            Ok(p) => match p.value() {
                Some(c) => c,
                None => return,
            },
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed command");
                return;
            }
        };
        // Our own state updates come back through the subscription; only requests are acted on.
        if generic.status != CommandStatus::Init {
            return;
        }
        if !self.seen.insert(topic.clone()) {
            tracing::debug!("command already handled");
            return;
        }
        match op {
            CommandOp::SoftwareList => {
                let cmd = CommandState::<SoftwareList> {
                    status: CommandStatus::Init,
                    reason: None,
                    payload: SoftwareList {
                        current_software_list: Vec::new(),
                        extras: generic.payload,
                    },
                };
                let installer = self.installer.clone();
                let plugins = self.plugins();
                let list = tokio::task::spawn_blocking(move || software_list(&installer, &plugins))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match list {
                    Ok(groups) => {
                        let mut done = cmd.with_status(CommandStatus::Successful);
                        done.payload.current_software_list = groups;
                        self.report(&topic, &done).await;
                    }
                    Err(reason) => self.report(&topic, &cmd.failed(reason)).await,
                }
            }
            CommandOp::SoftwareUpdate => {
                let Some(request) = self
                    .begin::<SoftwareUpdate>(&topic, generic, payload, "software_update")
                    .await
                else {
                    return;
                };
                let pending = PendingCommand {
                    topic: topic.clone(),
                    payload: serde_json::from_slice(payload).unwrap_or_default(),
                };
                let installer = self.installer.clone();
                let plugins = self.plugins();
                let update = request.payload.clone();
                let failures = tokio::task::spawn_blocking(move || {
                    software_update(&installer, &plugins, &update, &pending)
                })
                .await
                .unwrap_or_else(|e| {
                    vec![(
                        SOFTWARE_TYPE.to_owned(),
                        SoftwareModuleFailure {
                            name: "?".into(),
                            version: None,
                            action: None,
                            reason: Some(format!("the installer crashed: {e}")),
                        },
                    )]
                });
                let done = if failures.is_empty() {
                    request.with_status(CommandStatus::Successful)
                } else {
                    let reason = failures
                        .iter()
                        .map(|(_, f)| {
                            format!(
                                "{}{}: {}",
                                f.name,
                                f.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default(),
                                f.reason.as_deref().unwrap_or("failed")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    let mut failed = request.failed(reason);
                    for (t, f) in failures {
                        match failed.payload.failures.iter_mut().find(|g| g.software_type == t) {
                            Some(g) => g.modules.push(f),
                            None => failed.payload.failures.push(SoftwareFailureGroup {
                                software_type: t,
                                modules: vec![f],
                            }),
                        }
                    }
                    failed
                };
                self.finish(&topic, &done).await;
            }
            CommandOp::Restart => {
                self.record_start(&topic, payload);
                self.report(&topic, &generic.clone().with_status(CommandStatus::Executing))
                    .await;
                let installer = self.installer.clone();
                let result = tokio::task::spawn_blocking(move || installer.load_installed())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match result {
                    Ok(problems) if problems.is_empty() => {
                        self.finish(&topic, &generic.with_status(CommandStatus::Successful))
                            .await;
                    }
                    Ok(problems) => self.finish(&topic, &generic.failed(problems.join("; "))).await,
                    Err(e) => self.finish(&topic, &generic.failed(e)).await,
                }
            }
            CommandOp::LogUpload => {
                let Some(request) = self
                    .begin::<LogUpload>(&topic, generic, payload, "log_upload")
                    .await
                else {
                    return;
                };
                let downloader = self.installer.downloader.clone();
                let log_file = self.log_file.clone();
                let upload = request.payload.clone();
                let result = tokio::task::spawn_blocking(move || {
                    // On the blocking pool: a fault that pauses here leaves the runtime running.
                    fault::point("log-upload-start");
                    upload_log(&downloader, log_file.as_deref(), &upload)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the log upload crashed: {e}")));
                match result {
                    Ok(lines) => {
                        tracing::info!(lines, "log uploaded");
                        self.finish(&topic, &request.with_status(CommandStatus::Successful))
                            .await;
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "log upload failed");
                        self.finish(&topic, &request.failed(reason)).await;
                    }
                }
            }
            other => {
                let failed = generic_failed(
                    generic,
                    format!("operation {other} is not supported by this agent"),
                );
                self.report(&topic, &failed).await;
            }
        }
    }
}

/// The operation of a command topic (as recorded in the journal or `command.json`).
fn command_op(topic: &str) -> Option<CommandOp> {
    proto::DeviceTopic::parse(topic)
        .ok()
        .and_then(|t| match t.topic.channel() {
            proto::topic::Channel::Command { operation, .. } => Some(operation.clone()),
            _ => None,
        })
}

fn generic_failed(generic: GenericCommand, reason: String) -> GenericCommand {
    generic.failed(reason)
}

/// `log_upload`: selects the lines of the agent's log and PUTs them; returns the line count.
fn upload_log(
    downloader: &crate::download::Downloader,
    log_file: Option<&std::path::Path>,
    request: &LogUpload,
) -> Result<usize, String> {
    use crate::logfile::{LOG_TYPE, read_and_select};
    if request.log_type != LOG_TYPE {
        return Err(format!(
            "unknown log type '{}' (this agent uploads '{LOG_TYPE}')",
            request.log_type
        ));
    }
    if request.date_from > request.date_to {
        return Err(format!(
            "dateFrom {} is after dateTo {}",
            request.date_from, request.date_to
        ));
    }
    let Some(path) = log_file else {
        return Err("the agent's log file is off (log.max_bytes = 0)".into());
    };
    let text = read_and_select(path, request)?;
    let lines = text.lines().count();
    downloader.put_text(&request.upload_url, text)?;
    Ok(lines)
}

fn software_list(
    installer: &Installer,
    plugins: &[ExternalPlugin],
) -> Result<Vec<SoftwareListGroup>, String> {
    let models = installer
        .store
        .installed()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| SoftwareModule {
            name: m.name,
            version: Some(m.version),
        })
        .collect();
    let mut groups = vec![SoftwareListGroup {
        software_type: SOFTWARE_TYPE.into(),
        modules: models,
    }];
    for p in plugins {
        groups.push(SoftwareListGroup {
            software_type: p.software_type.clone(),
            modules: p.list()?,
        });
    }
    Ok(groups)
}

fn software_update(
    installer: &Installer,
    plugins: &[ExternalPlugin],
    update: &SoftwareUpdate,
    pending: &PendingCommand,
) -> Vec<(String, SoftwareModuleFailure)> {
    let mut failures = Vec::new();
    let fail = |t: &str, m: &proto::command::SoftwareModuleAction, reason: String| {
        (
            t.to_owned(),
            SoftwareModuleFailure {
                name: m.name.clone(),
                version: m.version.clone(),
                action: Some(m.action),
                reason: Some(reason),
            },
        )
    };
    for group in &update.update_list {
        let t = group.software_type.as_str();
        if t == SOFTWARE_TYPE {
            for m in &group.modules {
                let result = match m.action {
                    ModuleAction::Install => match (&m.version, &m.url) {
                        (Some(v), Some(url)) => installer
                            .install(&m.name, v, PackageSource::Url(url), Some(pending.clone()))
                            .map(|done| {
                                tracing::info!(model = %m.name, version = %done.version, previous = ?done.previous,
                                    unchanged = done.unchanged, swap_ms = done.swap_ms, removed = ?done.removed, "installed");
                            })
                            .map_err(|e| e.to_string()),
                        _ => Err("an onnx install needs a version and a url".to_owned()),
                    },
                    ModuleAction::Remove => installer.remove(&m.name).map_err(|e| e.to_string()),
                };
                if let Err(reason) = result {
                    failures.push(fail(t, m, reason));
                }
            }
            continue;
        }
        let Some(plugin) = plugins.iter().find(|p| p.software_type == t) else {
            for m in &group.modules {
                failures.push(fail(t, m, format!("no plugin for software type '{t}'")));
            }
            continue;
        };
        if let Err(reason) = plugin.prepare() {
            for m in &group.modules {
                failures.push(fail(t, m, reason.clone()));
            }
            continue;
        }
        for m in &group.modules {
            let result = match m.action {
                ModuleAction::Install => {
                    let file = match &m.url {
                        Some(url) => {
                            let version = m.version.as_deref().unwrap_or("latest");
                            let base = installer.store.data_dir().join("downloads");
                            let done = base.join(format!("{t}-{}-{version}.bin", m.name));
                            let part = base.join(format!("{t}-{}-{version}.part", m.name));
                            installer
                                .downloader
                                .fetch(url, &part, &done)
                                .map(|_| Some(done))
                                .map_err(|e| e.to_string())
                        }
                        None => Ok(None),
                    };
                    file.and_then(|f| {
                        let r = plugin.install(&m.name, m.version.as_deref(), f.as_deref());
                        if let Some(f) = f {
                            let _ = std::fs::remove_file(f);
                        }
                        r
                    })
                }
                ModuleAction::Remove => plugin.remove(&m.name, m.version.as_deref()),
            };
            if let Err(reason) = result {
                failures.push(fail(t, m, reason));
            }
        }
        if let Err(reason) = plugin.finalize() {
            tracing::warn!(%reason, "plugin finalize failed");
        }
    }
    failures
}
