//! Integration tests of `edgemlops-agent`: the real agent binary against the real `edgemlops-hub`
//! on random ports in temp directories, with tiny signed packages run by ONNX Runtime.
#![allow(clippy::unwrap_used)]

// Real PostgreSQL and Garage (S3) for the two-node test (see testsupport/).
#[path = "../../../../testsupport/child.rs"]
mod child;
#[path = "../../../../testsupport/garage.rs"]
mod garage;
#[path = "../../../../testsupport/postgres.rs"]
mod postgres;

mod cluster;
mod crash;
mod e2e;
mod inspection;
mod logs;
mod mqtt;
mod offline;
mod plugin;
mod resume;
mod support;
mod watch;
