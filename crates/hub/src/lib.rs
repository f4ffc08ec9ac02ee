//! The EdgeMLOps hub: the control plane devices connect to and the CLI drives.
//!
//! - [`config`]: the configuration file (every key with a default, documented once).
//! - [`server`]: `serve`: open the data directory, bind the HTTP API and the device endpoint,
//!   log the bound addresses, run until SIGINT/SIGTERM, drain.
//! - [`state`]: the shared [`state::Hub`] and the gateway rules of the device endpoint.
//! - [`mqtt`]: the MQTT 3.1.1/5 device endpoint (ntex-mqtt), behind [`transport::DeviceTransport`].
//! - [`ingest`]: te/ messages from devices, understood and stored (group commit before ack).
//! - [`api`]: the REST API under `/api/v1` (axum), its route table, auth and OpenAPI document.
//! - [`auth`], [`devices`], [`registry`], [`blobs`], [`commands`], [`telemetry`]: the domain.
//! - [`assets`]: the asset register of visual inspection (conditions, alarms, maintenance).
//! - [`db`]: SQLite (WAL) through sqlx, with migrations portable to PostgreSQL.

pub mod api;
pub mod assets;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod devices;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod registry;
pub mod server;
pub mod state;
pub mod stdx;
pub mod telemetry;
pub mod transport;

pub use error::HubError;
pub use state::Hub;
