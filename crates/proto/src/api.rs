//! The hub's REST API (`/api/v1`): request and response bodies shared by the hub and the CLI.
//!
//! Times are [`Timestamp`]s (RFC 3339 in UTC on the wire). Every error response is an
//! [`ErrorBody`]. Secrets (API tokens, device tokens) appear in exactly one response each: the one
//! that creates them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{CommandOp, CommandStatus};
use crate::pipeline::Condition;
use crate::telemetry::Severity;
use crate::time::Timestamp;
use crate::topic::DeviceId;

/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";
/// Content type of a model package upload.
pub const PACKAGE_CONTENT_TYPE: &str = "application/octet-stream";

/// What a caller may do. Ordered: a role includes everything the roles below it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything except secrets.
    Viewer,
    /// Also registers devices, pushes models, sets aliases, deploys and rolls back.
    Operator,
    /// Also manages users and API tokens.
    Admin,
}

impl Role {
    /// Name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role '{other}' (admin, operator, viewer)")),
        }
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

// ---------------------------------------------------------------------------------------------
// Users and API tokens

/// `POST /users`: a user and its first API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreate {
    /// Unique user name.
    pub name: String,
    /// The user's role.
    pub role: Role,
}

/// A user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A new API token: the secret is in this response only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Token id (for revocation).
    pub id: String,
    /// The user the token acts as.
    pub user: String,
    /// The user's role.
    pub role: Role,
    /// The secret, to send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// An API token without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// The user.
    pub user: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

// ---------------------------------------------------------------------------------------------
// Devices

/// `POST /devices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCreate {
    /// The device id (MQTT client id and user name).
    pub id: DeviceId,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A device in listings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device id.
    pub id: DeviceId,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Whether it is connected to the hub now.
    pub online: bool,
    /// Last connect, disconnect or message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// Hardware class from the device facts twin fragment (`twin/edgemlops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_class: Option<String>,
    /// Whether the device has a valid token (false after revocation).
    pub has_token: bool,
}

/// `POST /devices` and `POST /devices/{id}/token`: the device and its token (shown once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// The device.
    pub device: DeviceSummary,
    /// The MQTT password of the device.
    pub token: String,
}

/// An entity of a device (the device itself, a child device, a service).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityInfo {
    /// te/ topic id (`device/main//`).
    pub topic_id: String,
    /// `@type` of the registration (`device`, `child-device`, `service`).
    pub entity_type: String,
    /// The registration as published.
    pub registration: Value,
    /// When it was last registered.
    pub updated_at: Timestamp,
}

/// A twin fragment, a capability, or a health status: a retained value of one entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetainedValue {
    /// te/ topic id of the entity.
    pub topic_id: String,
    /// Fragment name, operation, or `health`.
    pub name: String,
    /// The value as published.
    pub value: Value,
    /// When it was last published.
    pub updated_at: Timestamp,
}

/// A software module a device reported or was seen to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledSoftware {
    /// Software type (`onnx` for models).
    pub software_type: String,
    /// Module name.
    pub name: String,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `GET /devices/{id}`: the device with its inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// Registered entities.
    pub entities: Vec<EntityInfo>,
    /// Twin fragments.
    pub twin: Vec<RetainedValue>,
    /// Supported operations (`cmd/<op>` capabilities).
    pub capabilities: Vec<RetainedValue>,
    /// Health of services.
    pub health: Vec<RetainedValue>,
    /// Installed software: the last `software_list` result, updated by successful installs.
    pub software: Vec<InstalledSoftware>,
}

// ---------------------------------------------------------------------------------------------
// Model registry

/// `POST /packages` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePushed {
    /// False when the same package was already stored (pushing is idempotent).
    pub created: bool,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Hardware class of this variant.
    pub hardware_class: String,
    /// sha256 of the package file (its content address).
    pub sha256: String,
    /// Size of the package in bytes.
    pub size: u64,
}

/// A model in listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Model name.
    pub name: String,
    /// Task (`classification`, ...).
    pub task: String,
    /// Versions, oldest first.
    pub versions: Vec<String>,
    /// Aliases and the version each points to.
    pub aliases: BTreeMap<String, String>,
    /// When the first version was pushed.
    pub created_at: Timestamp,
}

/// One package variant of a model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantInfo {
    /// Hardware class.
    pub hardware_class: String,
    /// sha256 of the package file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was pushed.
    pub created_at: Timestamp,
    /// The package manifest.
    pub manifest: Value,
}

/// A model version with its variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version.
    pub version: String,
    /// When the first variant was pushed.
    pub created_at: Timestamp,
    /// Variants per hardware class.
    pub variants: Vec<VariantInfo>,
}

/// One change of an alias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChange {
    /// Alias name.
    pub alias: String,
    /// The version it pointed to before (none when created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The version it points to since.
    pub version: String,
    /// When.
    pub changed_at: Timestamp,
    /// Who (user name).
    pub changed_by: String,
}

/// `GET /models/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDetail {
    /// Model name.
    pub name: String,
    /// Task.
    pub task: String,
    /// Versions, oldest first.
    pub versions: Vec<VersionInfo>,
    /// Current aliases.
    pub aliases: BTreeMap<String, String>,
    /// Every alias change, oldest first.
    pub alias_history: Vec<AliasChange>,
}

/// `PUT /models/{name}/aliases/{alias}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasSet {
    /// The version the alias should point to.
    pub version: String,
}

/// A download URL with its scoped, expiring token in the query (usable without headers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadUrl {
    /// The URL.
    pub url: String,
    /// When the token in it expires.
    pub expires_at: Timestamp,
}

// ---------------------------------------------------------------------------------------------
// Commands

/// `POST /commands/software_update`: install or remove a model version on a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Target device.
    pub device: DeviceId,
    /// Model name.
    pub model: String,
    /// Model version, or an alias of the model.
    pub version: String,
    /// `install` (default) or `remove`.
    #[serde(default = "default_action")]
    pub action: crate::command::ModuleAction,
    /// Use this variant instead of the one matching the device's hardware class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_class: Option<String>,
}

fn default_action() -> crate::command::ModuleAction {
    crate::command::ModuleAction::Install
}

/// `POST /commands/software_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareListRequest {
    /// Target device.
    pub device: DeviceId,
}

/// `POST /commands/rollback`: reinstall the version of a model the device had before its current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// Target device.
    pub device: DeviceId,
    /// Model name.
    pub model: String,
}

/// One stored state of a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandTransition {
    /// The state.
    pub status: CommandStatus,
    /// Failure reason (with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the hub stored it.
    pub at: Timestamp,
}

/// A command and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command id (the last topic segment, `cmd/<op>/<id>`).
    pub id: String,
    /// Target device.
    pub device: DeviceId,
    /// Operation.
    pub operation: CommandOp,
    /// Current state.
    pub status: CommandStatus,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Model name and version for model operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The request as sent (te/ command payload).
    pub request: Value,
    /// The device's last payload for this command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// How often it was sent to the device.
    pub sent_count: u32,
    /// Every state with its time, oldest first.
    pub history: Vec<CommandTransition>,
}

// ---------------------------------------------------------------------------------------------
// Telemetry

/// A stored measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasurementRecord {
    /// Device.
    pub device: DeviceId,
    /// te/ topic id of the entity.
    pub topic_id: String,
    /// Measurement type.
    pub measurement_type: String,
    /// Measurement time (the payload's, else when it was received).
    pub time: Timestamp,
    /// The payload.
    pub payload: Value,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Device.
    pub device: DeviceId,
    /// te/ topic id of the entity.
    pub topic_id: String,
    /// Event type.
    pub event_type: String,
    /// Event time.
    pub time: Timestamp,
    /// Event text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The payload.
    pub payload: Value,
}

/// An alarm: raised, and possibly cleared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmRecord {
    /// Device.
    pub device: DeviceId,
    /// te/ topic id of the entity.
    pub topic_id: String,
    /// Alarm type.
    pub alarm_type: String,
    /// Severity.
    pub severity: Severity,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When it was (last) raised.
    pub raised_at: Timestamp,
    /// When it was cleared; none while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Timestamp>,
    /// The last raise payload.
    pub payload: Value,
    /// The asset an `asset_condition` alarm is about (raised by the hub, not by a device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
}

/// Query of `GET /measurements`, `GET /events` and `GET /alarms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryQuery {
    /// Only this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only this measurement, event or alarm type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// From this time (inclusive, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Until this time (exclusive, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Alarms only: `true` for active, `false` for cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// At most this many records, newest first (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Assets (visual inspection)

/// Content type of `POST /assets/import`.
pub const ASSET_CSV_CONTENT_TYPE: &str = "text/csv";
/// Alarm type of the alarm an asset's degraded condition raises.
pub const ASSET_CONDITION_ALARM: &str = "asset_condition";

/// Kind of a registered asset; the names are the asset types of the VQI label taxonomy (the
/// `asset_type` of [`crate::pipeline::ClassMeaning`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetType {
    /// Distribution pole.
    Pole,
    /// Lattice transmission tower.
    Tower,
    /// Distribution transformer.
    Transformer,
    /// Insulator string.
    Insulator,
}

impl AssetType {
    /// Every asset type.
    pub const ALL: [AssetType; 4] = [Self::Pole, Self::Tower, Self::Transformer, Self::Insulator];

    /// Name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pole => "pole",
            Self::Tower => "tower",
            Self::Transformer => "transformer",
            Self::Insulator => "insulator",
        }
    }
}

impl fmt::Display for AssetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssetType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown asset type '{s}' (pole, tower, transformer, insulator)"))
    }
}

/// `POST /assets`: a new asset of the register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetCreate {
    /// Unique id (1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.`), as devices name it in
    /// inspection events.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Asset type.
    #[serde(rename = "type")]
    pub asset_type: AssetType,
    /// Site (substation, feeder, line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Latitude in degrees (with `longitude`, or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Free-form metadata (a JSON object).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, Value>,
}

/// An asset of the register with its current condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetSummary {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Asset type.
    #[serde(rename = "type")]
    pub asset_type: AssetType,
    /// Site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Latitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Metadata.
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// Current condition; none until an inspection result (or a repair) set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// Observation time of the result (or repair) that the condition comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_observed_at: Option<Timestamp>,
    /// When the condition last changed at the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_changed_at: Option<Timestamp>,
    /// Observation time of the newest inspection result linked to the asset (any confidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inspection_at: Option<Timestamp>,
    /// Inspection results linked to the asset.
    pub inspection_count: u64,
    /// Whether an `asset_condition` alarm is active.
    pub alarm_active: bool,
    /// When the asset was registered.
    pub created_at: Timestamp,
}

/// Where a condition change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionSource {
    /// An inspection result.
    Inspection,
    /// The manual "repaired" action.
    Repaired,
}

/// One entry of an asset's condition history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionChange {
    /// The new condition.
    pub condition: Condition,
    /// The condition before; none for the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Condition>,
    /// Observation time of the result (or the repair time).
    pub observed_at: Timestamp,
    /// When the hub recorded the change.
    pub changed_at: Timestamp,
    /// Inspection result or repair.
    pub source: ConditionSource,
    /// The inspection result's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<String>,
    /// Device that reported the result, or user who marked the repair.
    pub by: String,
}

/// What an inspection result did to its asset's condition (the update rule's verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InspectionOutcome {
    /// It set the condition (changed or confirmed it).
    Applied,
    /// Observed before the result (or repair) the condition comes from: out-of-order delivery.
    Stale,
    /// Flagged low-confidence by the device, or its top score is below `assets.min_confidence`.
    LowConfidence,
    /// It names no condition (the model's classes carry no meaning).
    NoCondition,
    /// Its predicted asset type contradicts the registered one (wrong asset or misclassified).
    TypeMismatch,
    /// It names an asset id that is not registered: stored, not linked.
    UnknownAsset,
    /// It names no asset: stored, not linked.
    NoAsset,
}

impl InspectionOutcome {
    /// Name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::LowConfidence => "low_confidence",
            Self::NoCondition => "no_condition",
            Self::TypeMismatch => "type_mismatch",
            Self::UnknownAsset => "unknown_asset",
            Self::NoAsset => "no_asset",
        }
    }
}

impl FromStr for InspectionOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Applied,
            Self::Stale,
            Self::LowConfidence,
            Self::NoCondition,
            Self::TypeMismatch,
            Self::UnknownAsset,
            Self::NoAsset,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| format!("unknown inspection outcome '{s}'"))
    }
}

/// A stored inspection result (`e/inspection` of a device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InspectionRecord {
    /// Id given by the hub.
    pub id: String,
    /// The asset id the device named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    /// Whether that id is a registered asset (the result is linked to it).
    pub linked: bool,
    /// Reporting device.
    pub device: DeviceId,
    /// Observation time (the event's `time`).
    pub observed_at: Timestamp,
    /// When the hub stored it.
    pub received_at: Timestamp,
    /// Model version, `name@version`.
    pub model: String,
    /// Top class label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Top score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Predicted asset type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
    /// Predicted condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// What the result did to the asset's condition.
    pub outcome: InspectionOutcome,
}

/// `GET /assets/{id}`: an asset with its condition history and recent inspections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetDetail {
    /// The asset.
    #[serde(flatten)]
    pub asset: AssetSummary,
    /// Condition changes, newest first.
    pub history: Vec<ConditionChange>,
    /// Linked inspection results, newest observation first.
    pub inspections: Vec<InspectionRecord>,
}

/// `POST /assets/import`: what was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetImport {
    /// Ids of the created assets, in file order.
    pub created: Vec<String>,
}

/// One row of `GET /assets/maintenance`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceItem {
    /// Position in the list, from 1.
    pub rank: u32,
    /// The asset.
    #[serde(flatten)]
    pub asset: AssetSummary,
    /// No inspection result was ever linked to it.
    pub never_inspected: bool,
    /// Seconds since the last inspection's observation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_inspection_secs: Option<i64>,
}

/// Query of `GET /assets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetQuery {
    /// Only this asset type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Only this condition (`good`, `minor`, `major`, `critical`, or `none` for never set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// At most this many assets (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Query of `GET /inspections`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectionQuery {
    /// Only results naming this asset id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Only results of this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `true`: only results linked to a registered asset; `false`: only unlinked ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked: Option<bool>,
    /// At most this many results, newest observation first (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("unknown role"));
    }

    #[test]
    fn asset_types_and_outcomes_round_trip_and_assets_refuse_unknown_fields() {
        for t in AssetType::ALL {
            assert_eq!(t.as_str().parse::<AssetType>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert!("lamp".parse::<AssetType>().unwrap_err().contains("pole, tower"));
        let o = InspectionOutcome::LowConfidence;
        assert_eq!(serde_json::to_string(&o).unwrap(), "\"low_confidence\"");
        assert_eq!(o.as_str().parse::<InspectionOutcome>(), Ok(o));
        let a: AssetCreate = serde_json::from_str(r#"{"id":"P-1","name":"P","type":"pole"}"#).unwrap();
        assert!(a.metadata.is_empty() && a.site.is_none());
        assert!(
            serde_json::from_str::<AssetCreate>(r#"{"id":"P-1","name":"P","type":"pole","x":1}"#).is_err()
        );
    }

    #[test]
    fn deploy_request_defaults_to_install() {
        let r: DeployRequest =
            serde_json::from_str(r#"{"device":"cam-1","model":"m","version":"1.0.0"}"#).unwrap();
        assert_eq!(r.action, crate::command::ModuleAction::Install);
        assert!(
            serde_json::from_str::<DeployRequest>(r#"{"device":"a/b","model":"m","version":"1"}"#).is_err()
        );
    }
}
