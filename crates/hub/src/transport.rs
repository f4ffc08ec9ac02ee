//! The boundary between the hub's logic and the way devices are connected.
//!
//! [`DeviceTransport`] is what the rest of the hub needs from a device endpoint: who is online,
//! send a message to a device, drop a device. The in-process MQTT endpoint (`crate::mqtt`)
//! implements it with [`Connections`], a registry of live connections; an external broker with the
//! hub as a privileged client could implement it later without touching commands or the API.
//!
//! Inbound, an endpoint calls [`crate::state::Hub`]'s gateway methods (authenticate, ingest,
//! subscribed, disconnected), which apply the same rules whatever the transport.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::DeviceId;
use tokio::sync::mpsc;

/// Why the hub closes a device connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same device took over (MQTT 5: reason 0x8E).
    TakenOver,
    /// The device's credentials were revoked (MQTT 5: reason 0x87).
    Revoked,
    /// The hub is shutting down (MQTT 5: reason 0x8B).
    ServerShutdown,
}

/// A message from the hub to one device connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Publish (QoS 1) to the device, if it subscribed to a matching filter.
    Publish {
        /// Absolute topic (`devices/<id>/te/...`).
        topic: String,
        /// Payload; empty with `retain` clears a retained topic.
        payload: Vec<u8>,
        /// The MQTT retain flag (commands are retained, as te/ requires).
        retain: bool,
    },
    /// Close the connection.
    Close(CloseReason),
}

/// What the hub needs from a device endpoint.
pub trait DeviceTransport: Send + Sync + std::fmt::Debug {
    /// Whether the device has a live connection.
    fn is_online(&self, device: &DeviceId) -> bool;
    /// Number of live device connections.
    fn online_count(&self) -> usize;
    /// Queues a message to the device's live connection; false when it is not connected.
    fn send(&self, device: &DeviceId, message: Outbound) -> bool;
}

/// One live connection's handle.
#[derive(Debug)]
struct Entry {
    id: u64,
    /// When it was registered, ms (a connection on another node made later takes over).
    at: i64,
    tx: mpsc::UnboundedSender<Outbound>,
}

/// The registry of live device connections: at most one per device (a new one takes over).
#[derive(Debug, Default)]
pub struct Connections {
    live: Mutex<HashMap<DeviceId, Entry>>,
    next_id: AtomicU64,
}

impl Connections {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Entry>> {
        // A panic while holding this lock leaves a plain map that is still consistent.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection of `device` and returns its id and the receiver of messages to
    /// it. An older connection of the same device is told to close ([`CloseReason::TakenOver`]).
    pub fn register(&self, device: &DeviceId, at: i64) -> (u64, mpsc::UnboundedReceiver<Outbound>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let old = self.live().insert(device.clone(), Entry { id, at, tx });
        if let Some(old) = old {
            tracing::info!(device = %device, "newer connection takes over");
            let _ = old.tx.send(Outbound::Close(CloseReason::TakenOver));
        }
        (id, rx)
    }

    /// Removes connection `id` of `device`, unless a newer connection replaced it already.
    /// Returns whether it was the live one.
    pub fn unregister(&self, device: &DeviceId, id: u64) -> bool {
        let mut live = self.live();
        if live.get(device).is_some_and(|e| e.id == id) {
            live.remove(device);
            true
        } else {
            false
        }
    }

    /// The device connected to another hub node at `at`: a connection registered here no later
    /// than that is stale. It is removed (so it will not publish its last will when it ends) and
    /// told to close. Returns whether there was one.
    pub fn taken_over_elsewhere(&self, device: &DeviceId, at: i64) -> bool {
        let mut live = self.live();
        if live.get(device).is_some_and(|e| e.at <= at) {
            if let Some(old) = live.remove(device) {
                tracing::info!(device = %device, "the device connected to another hub node; closing its connection here");
                let _ = old.tx.send(Outbound::Close(CloseReason::TakenOver));
            }
            true
        } else {
            false
        }
    }

    /// The devices connected here.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.live().keys().cloned().collect()
    }

    /// Tells every connection to close (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for e in self.live().values() {
            let _ = e.tx.send(Outbound::Close(reason));
        }
    }
}

impl DeviceTransport for Connections {
    fn is_online(&self, device: &DeviceId) -> bool {
        self.live().contains_key(device)
    }

    fn online_count(&self) -> usize {
        self.live().len()
    }

    fn send(&self, device: &DeviceId, message: Outbound) -> bool {
        self.live()
            .get(device)
            .is_some_and(|e| e.tx.send(message).is_ok())
    }
}

/// Whether an MQTT topic filter (with `+` and `#`) matches a topic name.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_a_broker() {
        let t = "devices/a/te/device/main///cmd/software_update/c-1";
        for (f, expected) in [
            ("devices/a/#", true),
            ("devices/a/te/+/+/+/+/cmd/+/+", true),
            ("devices/a/te/device/main///cmd/software_update/+", true),
            ("devices/a/te/device/main///cmd/software_list/+", false),
            ("devices/a/te/+/+/+/+/cmd/+", false),
            ("devices/b/#", false),
            ("#", true),
            (t, true),
        ] {
            assert_eq!(filter_matches(f, t), expected, "{f}");
        }
        assert!(filter_matches("a/#", "a"), "'#' also matches the parent level");
    }

    #[test]
    fn a_new_connection_takes_over_and_the_old_one_cannot_unregister_it() {
        let c = Connections::default();
        let d = DeviceId::new("cam").unwrap();
        let (first, mut first_rx) = c.register(&d, 1);
        let (second, _rx) = c.register(&d, 2);
        assert_eq!(
            first_rx.try_recv().unwrap(),
            Outbound::Close(CloseReason::TakenOver)
        );
        assert!(!c.unregister(&d, first));
        assert!(c.is_online(&d));
        assert!(c.unregister(&d, second));
        assert!(!c.is_online(&d));
        assert!(!c.send(&d, Outbound::Close(CloseReason::Revoked)));
    }

    #[test]
    fn a_connection_on_another_node_takes_over_only_an_older_one_here() {
        let c = Connections::default();
        let d = DeviceId::new("cam").unwrap();
        let (id, mut rx) = c.register(&d, 100);
        assert!(!c.taken_over_elsewhere(&d, 99), "the one here is newer");
        assert!(c.is_online(&d));
        assert!(c.taken_over_elsewhere(&d, 100));
        assert_eq!(rx.try_recv().unwrap(), Outbound::Close(CloseReason::TakenOver));
        assert!(!c.is_online(&d));
        assert!(
            !c.unregister(&d, id),
            "the closed connection is no longer the live one: no last will"
        );
    }
}
