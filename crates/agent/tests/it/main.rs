//! Integration tests of `edgemlops-agent`: the real agent binary against the real `edgemlops-hub`
//! on random ports in temp directories, with tiny signed packages run by ONNX Runtime.
#![allow(clippy::unwrap_used)]

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
