//! Integration tests of the hub: the router in-process, and the real `edgemlops-hub` binary on
//! random ports in a temp directory with real MQTT clients (rumqttc, mosquitto_pub/sub).
#![allow(clippy::unwrap_used)]

mod api;
mod assets;
mod commands;
mod crash;
mod endpoint;
mod support;
