//! Counters for the Prometheus `/metrics` endpoint (text exposition format, written by hand: a
//! few counters do not need a metrics library).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The hub's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Accepted device connections.
    pub connections_accepted: Counter,
    /// Refused device connections (credentials, client id, last will).
    pub connections_refused: Counter,
    /// Device publishes stored.
    pub messages_stored: Counter,
    /// Device publishes refused (topic outside the prefix, invalid payload).
    pub messages_refused: Counter,
    /// Subscriptions refused.
    pub subscriptions_refused: Counter,
    /// Commands created.
    pub commands_created: Counter,
    /// Command deliveries to a device connection.
    pub commands_sent: Counter,
    /// Packages stored.
    pub packages_stored: Counter,
}

/// Values measured when the metrics are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// Devices connected to this node.
    pub devices_online: usize,
    /// Whether this node runs the once-per-fleet work.
    pub fleet_leader: bool,
    /// Devices whose credentials are cached.
    pub credentials_cached: usize,
}

impl Metrics {
    /// The exposition text, with the gauges the caller measures now.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "edgemlops_hub_devices_online",
            "gauge",
            "Devices connected to this node's device endpoint.",
            gauges.devices_online as u64,
        );
        metric(
            "edgemlops_hub_fleet_leader",
            "gauge",
            "1 while this node runs the once-per-fleet work (command expiry), else 0.",
            u64::from(gauges.fleet_leader),
        );
        metric(
            "edgemlops_hub_credentials_cached",
            "gauge",
            "Devices whose token hash is cached.",
            gauges.credentials_cached as u64,
        );
        for (name, help, c) in [
            (
                "edgemlops_hub_connections_accepted_total",
                "Device connections accepted.",
                &self.connections_accepted,
            ),
            (
                "edgemlops_hub_connections_refused_total",
                "Device connections refused.",
                &self.connections_refused,
            ),
            (
                "edgemlops_hub_messages_stored_total",
                "Device messages stored.",
                &self.messages_stored,
            ),
            (
                "edgemlops_hub_messages_refused_total",
                "Device messages refused.",
                &self.messages_refused,
            ),
            (
                "edgemlops_hub_subscriptions_refused_total",
                "Device subscriptions refused.",
                &self.subscriptions_refused,
            ),
            (
                "edgemlops_hub_commands_created_total",
                "Commands created.",
                &self.commands_created,
            ),
            (
                "edgemlops_hub_commands_sent_total",
                "Command deliveries to devices.",
                &self.commands_sent,
            ),
            (
                "edgemlops_hub_packages_stored_total",
                "Model packages stored.",
                &self.packages_stored,
            ),
        ] {
            metric(name, "counter", help, c.get());
        }
        s
    }
}
