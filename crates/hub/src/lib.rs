//! The EdgeMLOps hub: the control plane devices connect to and the CLI drives.
//!
//! - [`config`]: the configuration file (every key with a default, documented once).
//! - [`server`]: `serve`: open the storage, bind the HTTP API and the device endpoint, log the
//!   bound addresses, run until SIGINT/SIGTERM, drain. [`migrate`]: copy a hub to other engines.
//! - [`hub`]: the composition root ([`Hub`]): the domains wired over their stores, and a node's
//!   background work.
//! - [`gateway`]: the device-facing rules (admission, credentials, publish, subscribe, sessions);
//!   [`mqtt`]: the MQTT 3.1.1/5 endpoint (ntex-mqtt) on top, behind [`transport::DeviceTransport`].
//! - [`ingest`]: te/ messages from devices, parsed once and stored (group commit before ack).
//! - [`api`]: the REST API under `/api/v1` (axum), its route table, auth and OpenAPI document.
//! - Domains, each over its own store of typed records: [`auth`] (users, API tokens, download
//!   signing), [`devices`], [`registry`] (with [`blobs`]), [`commands`], [`telemetry`],
//!   [`assets`] (the asset register of visual inspection).
//! - [`db`]: the one module that names the database drivers (SQLite, PostgreSQL);
//!   [`cluster`]: several nodes on one PostgreSQL (heartbeats, signals, the fleet lock).

pub mod api;
pub mod assets;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod db;
pub mod devices;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod migrate;
pub mod mqtt;
pub mod registry;
pub mod server;
pub mod stdx;
pub mod telemetry;
pub mod transport;

pub use error::HubError;
pub use hub::{Hub, Settings};
