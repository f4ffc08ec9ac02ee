//! te/ commands: operations, the command state machine, and the payloads of the operations the hub
//! and the agent use (`software_list`, `software_update`, `restart`, `log_upload`).
//!
//! A command instance is a retained message on `te/<entity>/cmd/<op>/<id>`: the requester
//! publishes `{"status": "init", ...}`, the device moves it through `scheduled` and `executing`
//! (or states of its own workflow) to `successful` or `failed` (with a `reason`), repeating the
//! request's fields, and the requester clears the topic with an empty retained message at the end.
//! States this build does not know are kept as [`CommandStatus::Unknown`] and ignored by
//! [`CommandStatus::accept`], never rejected: thin-edge workflows may add their own states.
//!
//! Payload structs keep fields they do not know in an `extras` map, so a device that repeats a
//! request (as the protocol asks) does not lose what a newer requester put in it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::payload::{PayloadError, Retained, retained_from_json, to_json};
use crate::time::Timestamp;

/// Unknown JSON fields, kept so a payload survives a parse → serialize round trip.
pub type Extras = serde_json::Map<String, serde_json::Value>;

/// A te/ operation (`cmd/<op>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandOp {
    /// `software_list`: report installed software per type.
    SoftwareList,
    /// `software_update`: install or remove software modules (model deployment uses type `onnx`).
    SoftwareUpdate,
    /// `restart`: restart the entity.
    Restart,
    /// `log_upload`: upload a log file to a URL.
    LogUpload,
    /// `config_snapshot`: upload a configuration file.
    ConfigSnapshot,
    /// `config_update`: download and apply a configuration file.
    ConfigUpdate,
    /// `health`: ask services to report their health (`cmd/health/check`).
    Health,
    /// Any other operation, by name.
    Other(String),
}

impl CommandOp {
    /// The operation's name in topics.
    pub fn as_str(&self) -> &str {
        match self {
            Self::SoftwareList => "software_list",
            Self::SoftwareUpdate => "software_update",
            Self::Restart => "restart",
            Self::LogUpload => "log_upload",
            Self::ConfigSnapshot => "config_snapshot",
            Self::ConfigUpdate => "config_update",
            Self::Health => "health",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for CommandOp {
    fn from(s: &str) -> Self {
        match s {
            "software_list" => Self::SoftwareList,
            "software_update" => Self::SoftwareUpdate,
            "restart" => Self::Restart,
            "log_upload" => Self::LogUpload,
            "config_snapshot" => Self::ConfigSnapshot,
            "config_update" => Self::ConfigUpdate,
            "health" => Self::Health,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for CommandOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CommandOp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CommandOp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

/// The state of a command instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CommandStatus {
    /// Requested, not yet picked up (also what a payload without `status` means).
    #[default]
    Init,
    /// Accepted, waiting to run.
    Scheduled,
    /// Running.
    Executing,
    /// Done (final).
    Successful,
    /// Failed, with a `reason` (final).
    Failed,
    /// A state this build does not know (a custom workflow step): tolerated, never acted on.
    Unknown(String),
}

impl CommandStatus {
    /// The state's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Init => "init",
            Self::Scheduled => "scheduled",
            Self::Executing => "executing",
            Self::Successful => "successful",
            Self::Failed => "failed",
            Self::Unknown(s) => s,
        }
    }

    /// Reads a state name; unknown names become [`CommandStatus::Unknown`].
    pub fn parse(s: &str) -> Self {
        match s {
            "init" => Self::Init,
            "scheduled" => Self::Scheduled,
            "executing" => Self::Executing,
            "successful" => Self::Successful,
            "failed" => Self::Failed,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// Whether the command is finished (`successful` or `failed`).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Successful | Self::Failed)
    }

    /// Position in the life cycle; `None` for unknown states.
    fn stage(&self) -> Option<u8> {
        match self {
            Self::Init => Some(0),
            Self::Scheduled => Some(1),
            Self::Executing => Some(2),
            Self::Successful | Self::Failed => Some(3),
            Self::Unknown(_) => None,
        }
    }

    /// What a reported state means for a command currently in `self`: a step forward (skipping
    /// states is allowed: `init` → `failed` happens when a device refuses a command outright), a
    /// repeat (re-sent after a reconnect), or something to ignore (an unknown state, a step back,
    /// anything after a final state).
    pub fn accept(&self, reported: &CommandStatus) -> StatusChange {
        if self == reported {
            return StatusChange::Repeated;
        }
        match (self.stage(), reported.stage()) {
            (_, None) => StatusChange::Ignored(IgnoreReason::UnknownState),
            (Some(3), _) => StatusChange::Ignored(IgnoreReason::AlreadyFinal),
            (Some(now), Some(next)) if next > now => StatusChange::Advanced,
            // From an unknown state (only reachable if stored as such) any known state is news.
            (None, Some(_)) => StatusChange::Advanced,
            _ => StatusChange::Ignored(IgnoreReason::Backwards),
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CommandStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CommandStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// The outcome of [`CommandStatus::accept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusChange {
    /// The reported state is a step forward: store it.
    Advanced,
    /// The same state again: nothing new.
    Repeated,
    /// Not a transition to act on.
    Ignored(IgnoreReason),
}

/// Why a reported state was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A state this build does not know.
    UnknownState,
    /// The command already reached a final state.
    AlreadyFinal,
    /// An earlier state than the current one (a stale retained message).
    Backwards,
}

/// A command instance's payload: the state, the failure reason, and the operation's fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandState<T> {
    /// The state (`init` when absent, as thin-edge defines).
    #[serde(default)]
    pub status: CommandStatus,
    /// Why the command failed (with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The operation's own fields.
    #[serde(flatten)]
    pub payload: T,
}

/// A command of any operation: the state and reason typed, everything else as JSON. The hub reads
/// status updates with this before it knows or cares about the operation's fields.
pub type GenericCommand = CommandState<Extras>;

impl<T: serde::de::DeserializeOwned> CommandState<T> {
    /// Parses a command topic's retained payload (empty = cleared).
    pub fn parse(payload: &[u8]) -> Result<Retained<Self>, PayloadError> {
        retained_from_json(payload, "command")
    }
}

impl<T: Serialize> CommandState<T> {
    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

impl<T> CommandState<T> {
    /// A new request (`init`).
    pub fn request(payload: T) -> Self {
        Self {
            status: CommandStatus::Init,
            reason: None,
            payload,
        }
    }

    /// The same command in another state (what a device publishes as it works).
    pub fn with_status(mut self, status: CommandStatus) -> Self {
        self.status = status;
        self
    }

    /// The same command, failed for `reason`.
    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.status = CommandStatus::Failed;
        self.reason = Some(reason.into());
        self
    }
}

/// `cmd/<op>` capability (retained metadata): the operation is supported, with the software or
/// log types it handles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandCapability {
    /// Types the operation handles (software types for `software_*`, log types for `log_upload`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl CommandCapability {
    /// Parses a capability payload (empty = the operation is withdrawn).
    pub fn parse(payload: &[u8]) -> Result<Retained<Self>, PayloadError> {
        retained_from_json(payload, "command capability")
    }

    /// The payload to publish (retained).
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A software module with its version (in `software_list` results).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareModule {
    /// Module name (for `onnx`, the model name).
    pub name: String,
    /// Installed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Installed modules of one software type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareListGroup {
    /// Software type (`onnx`, `apt`, ...).
    #[serde(rename = "type")]
    pub software_type: String,
    /// Installed modules.
    #[serde(default)]
    pub modules: Vec<SoftwareModule>,
}

/// `software_list`: the request has no fields; a successful result carries `currentSoftwareList`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoftwareList {
    /// Installed software per type (in the `successful` state).
    #[serde(
        rename = "currentSoftwareList",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub current_software_list: Vec<SoftwareListGroup>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

/// What to do with a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleAction {
    /// Make sure this version is installed (fresh install, upgrade or downgrade).
    Install,
    /// Make sure the module is not installed.
    Remove,
}

/// One module to install or remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareModuleAction {
    /// Module name.
    pub name: String,
    /// Version (optional in thin-edge; EdgeMLOps always sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where to download the module (for `onnx`: the package, with a scoped token in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Install or remove.
    pub action: ModuleAction,
}

/// Modules of one software type to update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareUpdateGroup {
    /// Software type.
    #[serde(rename = "type")]
    pub software_type: String,
    /// The modules.
    #[serde(default)]
    pub modules: Vec<SoftwareModuleAction>,
}

/// One module that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareModuleFailure {
    /// Module name.
    pub name: String,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What was attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ModuleAction>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Failed modules of one software type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareFailureGroup {
    /// Software type.
    #[serde(rename = "type")]
    pub software_type: String,
    /// The failed modules.
    #[serde(default)]
    pub modules: Vec<SoftwareModuleFailure>,
}

/// `software_update`: the modules to install or remove, and on failure which ones failed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoftwareUpdate {
    /// The requested changes, per software type.
    #[serde(rename = "updateList", default)]
    pub update_list: Vec<SoftwareUpdateGroup>,
    /// Modules that failed (in the `failed` state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SoftwareFailureGroup>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

impl SoftwareUpdate {
    /// Every requested module with its software type, in order.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &SoftwareModuleAction)> {
        self.update_list
            .iter()
            .flat_map(|g| g.modules.iter().map(move |m| (g.software_type.as_str(), m)))
    }
}

/// `restart`: no fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

/// `log_upload`: upload the lines of one log type within a time range to a URL (HTTP PUT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogUpload {
    /// Where to PUT the log (thin-edge names it `tedgeUrl`).
    #[serde(rename = "tedgeUrl")]
    pub upload_url: String,
    /// Log type (one of the capability's `types`).
    #[serde(rename = "type")]
    pub log_type: String,
    /// Start of the range.
    #[serde(rename = "dateFrom")]
    pub date_from: Timestamp,
    /// End of the range.
    #[serde(rename = "dateTo")]
    pub date_to: Timestamp,
    /// Only lines containing this text.
    #[serde(rename = "searchText", default, skip_serializing_if = "Option::is_none")]
    pub search_text: Option<String>,
    /// At most this many lines (the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// Other fields.
    #[serde(flatten)]
    pub extras: Extras,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: &str) -> CommandState<T> {
        CommandState::<T>::parse(json.as_bytes())
            .unwrap()
            .value()
            .unwrap()
    }

    #[test]
    fn software_update_round_trips_with_thin_edge_field_names() {
        let json = r#"{
            "status": "failed",
            "reason": "Partial failure",
            "updateList": [{"type": "onnx", "modules": [
                {"name": "vqi", "version": "1.2.0", "url": "http://hub/p?t=x", "action": "install"},
                {"name": "old", "version": "0.9.0", "action": "remove"}]}],
            "failures": [{"type": "onnx", "modules": [
                {"name": "vqi", "version": "1.2.0", "action": "install", "reason": "smoke test failed"}]}],
            "attempt": 2
        }"#;
        let cmd: CommandState<SoftwareUpdate> = parse(json);
        assert_eq!(cmd.status, CommandStatus::Failed);
        assert_eq!(cmd.reason.as_deref(), Some("Partial failure"));
        let modules: Vec<_> = cmd.payload.modules().collect();
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0].0, "onnx");
        assert_eq!(modules[0].1.url.as_deref(), Some("http://hub/p?t=x"));
        assert_eq!(modules[1].1.action, ModuleAction::Remove);
        assert_eq!(
            cmd.payload.failures[0].modules[0].reason.as_deref(),
            Some("smoke test failed")
        );
        assert_eq!(cmd.payload.extras["attempt"], 2, "unknown fields are kept");
        let again: CommandState<SoftwareUpdate> = parse(std::str::from_utf8(&cmd.to_json()).unwrap());
        assert_eq!(again, cmd);
        let v: serde_json::Value = serde_json::from_slice(&cmd.to_json()).unwrap();
        assert!(v.get("updateList").is_some() && v.get("attempt").is_some(), "{v}");
    }

    #[test]
    fn software_list_result_and_other_operations_parse() {
        let cmd: CommandState<SoftwareList> = parse(
            r#"{"status":"successful","currentSoftwareList":[{"type":"onnx","modules":[{"name":"vqi","version":"1.0.0"}]},{"type":"apt","modules":[{"name":"mosquitto"}]}]}"#,
        );
        assert_eq!(cmd.payload.current_software_list[1].modules[0].version, None);
        let request = CommandState::request(SoftwareList::default());
        assert_eq!(request.to_json(), br#"{"status":"init"}"#);

        let restart: CommandState<Restart> = parse("{}");
        assert_eq!(restart.status, CommandStatus::Init, "a missing status means init");

        let log: CommandState<LogUpload> = parse(
            r#"{"status":"init","tedgeUrl":"http://hub/upload/1","type":"agent","dateFrom":"2013-06-22T17:03:14.000+02:00","dateTo":1371913394,"searchText":"ERROR","lines":1000}"#,
        );
        assert_eq!(log.payload.log_type, "agent");
        assert_eq!(log.payload.date_from, log.payload.date_to);
        assert_eq!(log.payload.lines, Some(1000));

        let cap = CommandCapability::parse(br#"{"types":["onnx","apt"]}"#)
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(cap.types, ["onnx", "apt"]);
        assert_eq!(CommandCapability::parse(b"").unwrap(), Retained::Cleared);
    }

    #[test]
    fn unknown_states_are_kept_not_rejected() {
        let cmd: GenericCommand = parse(r#"{"status":"downloading","logPath":"/var/log/x"}"#);
        assert_eq!(cmd.status, CommandStatus::Unknown("downloading".into()));
        assert_eq!(cmd.payload["logPath"], "/var/log/x");
        assert!(
            String::from_utf8(cmd.to_json())
                .unwrap()
                .contains(r#""status":"downloading""#)
        );
        assert_eq!(
            CommandStatus::Executing.accept(&cmd.status),
            StatusChange::Ignored(IgnoreReason::UnknownState)
        );
    }

    #[test]
    fn bad_payloads_are_errors_and_empty_clears() {
        assert_eq!(GenericCommand::parse(b"").unwrap(), Retained::Cleared);
        for bad in [
            &b"{not json"[..],
            b"[1,2]",
            br#"{"status": 3}"#,
            br#"{"updateList": [{"type": "onnx", "modules": [{"name": "m", "action": "upgrade"}]}]}"#,
            br#"{"updateList": "none"}"#,
        ] {
            let e = CommandState::<SoftwareUpdate>::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid command payload"), "{e}");
        }
        let e = CommandState::<LogUpload>::parse(
            br#"{"tedgeUrl":"u","type":"t","dateFrom":"yesterday","dateTo":0}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("yesterday"), "{e}");
    }

    #[test]
    fn the_state_machine_moves_forward_only() {
        use CommandStatus::*;
        use StatusChange::*;
        let cases = [
            (Init, Executing, Advanced),
            (Init, Scheduled, Advanced),
            (Scheduled, Executing, Advanced),
            (Executing, Successful, Advanced),
            (Executing, Failed, Advanced),
            (Init, Failed, Advanced),
            (Executing, Executing, Repeated),
            (Successful, Successful, Repeated),
            (Executing, Init, Ignored(IgnoreReason::Backwards)),
            (Successful, Failed, Ignored(IgnoreReason::AlreadyFinal)),
            (Failed, Executing, Ignored(IgnoreReason::AlreadyFinal)),
            (
                Init,
                Unknown("validating".into()),
                Ignored(IgnoreReason::UnknownState),
            ),
            (Unknown("validating".into()), Executing, Advanced),
        ];
        for (from, to, expected) in cases {
            assert_eq!(from.accept(&to), expected, "{from} -> {to}");
        }
        assert!(Successful.is_final() && Failed.is_final() && !Executing.is_final());
        assert_eq!(CommandOp::from("log_upload"), CommandOp::LogUpload);
        assert_eq!(CommandOp::from("x_y").as_str(), "x_y");
    }
}
