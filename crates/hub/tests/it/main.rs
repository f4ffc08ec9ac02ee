//! Integration tests of the hub: the router in-process, and the real `edgemlops-hub` binary on
//! random ports in a temp directory with real MQTT clients (rumqttc, mosquitto_pub/sub).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

#[path = "../../../../testsupport/child.rs"]
mod child;
#[path = "../../../../testsupport/garage.rs"]
mod garage;
#[path = "../../../../testsupport/haproxy.rs"]
mod haproxy;
#[path = "../../../../testsupport/postgres.rs"]
mod postgres;

mod api;
mod assets;
mod cluster;
mod commands;
mod crash;
mod endpoint;
mod migrate;
mod storage;
