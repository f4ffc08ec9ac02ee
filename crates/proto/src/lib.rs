//! The wire contract shared by the toolchain, the hub and the agent. Pure data: no IO, no async.
//!
//! - [`pipeline`]: how an image becomes a model input and how model outputs become a result
//!   (the `preprocess`/`postprocess` sections of a package manifest), and the asset-condition
//!   vocabulary of visual inspection.
//! - [`topic`]: the te/ topic schema under the hub's `devices/<device_id>/` prefix (build and
//!   parse), and the gateway's publish/subscribe rules.
//! - [`telemetry`]: thin-edge JSON measurements, events, alarms, entity registrations, twin
//!   fragments and health.
//! - [`command`]: te/ operations, the command state machine, and the software management, restart
//!   and log upload payloads.
//! - [`edgemlops`]: EdgeMLOps payloads on top of te/ (model deployment, inspection events,
//!   inference metrics, device facts, hardware classes), versioned.
//! - [`time`]: RFC 3339 / unix-seconds timestamps.
//! - [`api`]: request and response bodies of the hub's REST API (`/api/v1`), shared by hub and CLI.
//!
//! The decisions behind the device contract are recorded in `docs/adr/0001-device-contract.md`.

pub mod api;
pub mod command;
pub mod edgemlops;
pub mod payload;
pub mod pipeline;
pub mod telemetry;
pub mod time;
pub mod topic;

pub use payload::{PayloadError, Retained};
pub use time::Timestamp;
pub use topic::{DeviceId, DeviceTopic, TeTopic, TopicError};
