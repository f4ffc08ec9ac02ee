//! The EdgeMLOps edge agent (`edgemlops-agent`): installs signed model packages atomically with a
//! health check and rollback, serves inference (HTTP API, watched folder), and delivers results
//! and metrics to the hub through a persistent outbox. Also a thin-edge sm-plugin (`plugin onnx`).
//!
//! Module map: [`config`] (two-phase config, documented keys), [`store`] (model store, install
//! journal), [`download`] (resumable HTTP), [`engine`] (loaded models, pre/post-processing, hot
//! swap slots), [`install`] (the install transaction), [`outbox`] (SQLite store-and-forward),
//! [`link`] (hub / local broker MQTT actor), [`logfile`] (own log, `log_upload`), [`commands`] (operations actor), [`reporter`] (results actor),
//! [`http`] (local API), [`watch`] (watched folder), [`plugin`] (sm-plugins), [`fault`] (crash
//! tests), [`agent`] (the composition function), [`cli`].

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod download;
pub mod engine;
pub mod fault;
pub mod http;
pub mod install;
pub mod link;
pub mod logfile;
pub mod outbox;
pub mod plugin;
pub mod reporter;
pub mod store;
pub mod watch;
