//! Several hub nodes sharing one PostgreSQL database: node identity and heartbeats, the signals
//! one node sends the others, and who runs the once-per-fleet work.
//!
//! - **Nodes.** Each running hub has a row in `hub_nodes` and refreshes its heartbeat every
//!   `cluster.heartbeat_secs`; a node silent for `cluster.node_timeout_secs` (killed, cut off) is
//!   gone, and so are the sessions of the devices that were connected to it.
//! - **Signals** ([`Signal`]) go through PostgreSQL `NOTIFY` on one channel, as JSON with the
//!   sender's node id; every node `LISTEN`s and ignores its own. A command created on node A
//!   reaches a device connected to node B this way; a device that connects to node B makes node A
//!   close its stale connection (takeover, without its last will); a token change closes the
//!   device's connection wherever it is. On SQLite there is one node and nothing to send.
//!   Signals are an optimisation over the database, never the only record: a node that lost its
//!   listener connection catches up from the tables (pending commands are also delivered on every
//!   device subscription).
//! - **Once per fleet.** Work that must not run on every node (the expiry of commands, forgetting
//!   the sessions of dead nodes; the rollout controller next) runs on the node holding a
//!   PostgreSQL advisory lock ([`crate::db::Db::try_lead`]). The lock lives with that node's
//!   database connection, so a node that dies releases it and another node takes over within
//!   `cluster.fleet_interval_secs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::DeviceId;
use serde::{Deserialize, Serialize};

use crate::db::{Db, Engine};
use crate::error::{DbContext, HubError};
use crate::stdx::{hex, now_ms, random_bytes};

/// The `NOTIFY` channel of hub signals.
pub const CHANNEL: &str = "edgemlops_hub";

/// The advisory lock key of the once-per-fleet work ("edgmlops" in ASCII).
pub const FLEET_LOCK: i64 = 0x6564_676d_6c6f_7073;

/// What one node tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// A command was created (or is due again) for `device`: the node it is connected to sends it.
    CommandCreated {
        /// The device.
        device: DeviceId,
        /// The command id.
        command: String,
    },
    /// The command ended without the device (expired): the node the device is connected to clears
    /// its retained topic.
    CommandExpired {
        /// The device.
        device: DeviceId,
        /// The command id.
        command: String,
    },
    /// `device` connected to the sending node at `at` (ms): an older connection elsewhere is
    /// stale and is closed without its last will.
    Connected {
        /// The device.
        device: DeviceId,
        /// When the new connection was registered.
        at: i64,
    },
    /// The device's token was rotated or revoked: forget the cached hash, close its connection.
    CredentialsChanged {
        /// The device.
        device: DeviceId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    signal: Signal,
}

/// Timings of the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This node's id (empty: a random one).
    pub node_id: String,
    /// How often the heartbeat is written.
    pub heartbeat: Duration,
    /// A node silent this long is gone.
    pub node_timeout: Duration,
    /// How often the once-per-fleet work runs (and a node without the lock tries to take it).
    pub fleet_interval: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            heartbeat: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            fleet_interval: Duration::from_secs(2),
        }
    }
}

/// This node in the cluster.
#[derive(Debug)]
pub struct Cluster {
    db: Db,
    node: String,
    settings: ClusterSettings,
    leader: AtomicBool,
}

impl Cluster {
    /// This node, over `db`.
    pub fn new(db: Db, settings: ClusterSettings) -> Self {
        let node = if settings.node_id.is_empty() {
            format!("node-{}", hex(&random_bytes::<6>()))
        } else {
            settings.node_id.clone()
        };
        Self {
            db,
            node,
            settings,
            leader: AtomicBool::new(false),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The timings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Whether other nodes may share the database (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.db.engine() == Engine::Postgres
    }

    /// The oldest heartbeat of a node that still counts as live.
    pub fn live_since(&self) -> i64 {
        let timeout = i64::try_from(self.settings.node_timeout.as_millis()).unwrap_or(i64::MAX);
        now_ms().saturating_sub(timeout)
    }

    /// Records this node as started, with the addresses it serves.
    pub async fn join(&self, http: &str, mqtt: &str) -> Result<(), HubError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO hub_nodes (id, started_at, heartbeat_at, http, mqtt) VALUES ($1, $2, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             stopped_at = NULL, http = excluded.http, mqtt = excluded.mqtt",
        )
        .bind(&self.node)
        .bind(now)
        .bind(http)
        .bind(mqtt)
        .execute(self.db.pool())
        .await
        .db("registering this hub node")?;
        Ok(())
    }

    /// Refreshes this node's heartbeat.
    pub async fn heartbeat(&self) -> Result<(), HubError> {
        sqlx::query("UPDATE hub_nodes SET heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(&self.node)
            .execute(self.db.pool())
            .await
            .db("writing the heartbeat")?;
        Ok(())
    }

    /// Records this node as stopped (clean shutdown): its devices are offline at once.
    pub async fn leave(&self) {
        let done = sqlx::query("UPDATE hub_nodes SET stopped_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(&self.node)
            .execute(self.db.pool())
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot record this node as stopped");
        }
    }

    /// Sends `signal` to the other nodes (nothing to do with one node). A signal that cannot be
    /// sent is logged: the database stays the record, nodes catch up from it.
    pub async fn publish(&self, signal: &Signal) {
        if !self.shared() {
            return;
        }
        let envelope = Envelope {
            from: self.node.clone(),
            signal: signal.clone(),
        };
        let payload = match serde_json::to_string(&envelope) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a cluster signal");
                return;
            }
        };
        if let Err(e) = self.db.notify(CHANNEL, &payload).await {
            tracing::warn!(error = %e, ?signal, "cluster signal not sent");
        }
    }

    /// Reads a notification: the signal, unless this node sent it (or it is not one).
    pub fn receive(&self, payload: &str) -> Option<Signal> {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(e) if e.from == self.node => None,
            Ok(e) => Some(e.signal),
            Err(e) => {
                tracing::warn!(error = %e, payload, "cluster signal not understood");
                None
            }
        }
    }

    /// Whether this node runs the once-per-fleet work now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Records whether this node holds the fleet lock.
    pub fn set_leader(&self, leader: bool) {
        let was = self.leader.swap(leader, Ordering::Relaxed);
        if leader && !was {
            tracing::info!(node = %self.node, "this node now runs the once-per-fleet work");
        } else if !leader && was {
            tracing::warn!(node = %self.node, "this node no longer runs the once-per-fleet work");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_round_trip_and_a_node_ignores_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let db = Db::open(&url, crate::db::DbOptions::default()).await.unwrap();
        let a = Cluster::new(db.clone(), ClusterSettings::default());
        let b = Cluster::new(db, ClusterSettings::default());
        assert_ne!(a.node_id(), b.node_id());
        let signal = Signal::Connected {
            device: DeviceId::new("cam").unwrap(),
            at: 7,
        };
        let text = serde_json::to_string(&Envelope {
            from: a.node_id().to_owned(),
            signal: signal.clone(),
        })
        .unwrap();
        assert!(text.contains(r#""signal":"connected""#), "{text}");
        assert_eq!(b.receive(&text), Some(signal));
        assert_eq!(a.receive(&text), None, "a node ignores what it sent");
        assert_eq!(b.receive("{}"), None);
    }
}
