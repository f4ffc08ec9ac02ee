//! Several hub nodes sharing one PostgreSQL database: node identity and heartbeats, the signals
//! one node sends the others, and who runs the once-per-fleet work.
//!
//! - **Nodes.** Each running hub has a row in `hub_nodes` and refreshes its heartbeat every
//!   `cluster.heartbeat_secs`; a node silent for `cluster.node_timeout_secs` (killed, cut off) is
//!   gone, and so are the sessions of the devices that were connected to it.
//! - **Signals** ([`Signal`]) go through PostgreSQL `NOTIFY` on one channel, as JSON with the
//!   sender's node id; every node `LISTEN`s and ignores its own. A `NOTIFY` commits a transaction,
//!   so a sender task batches what is queued meanwhile into one notification (up to the payload
//!   limit): 10,000 devices reconnecting at once cost a few dozen notifications, not 10,000. A command created on node A
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

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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

/// One notification: signals of one node, in the order it sent them.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    signals: Vec<Signal>,
}

/// Largest notification payload sent (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// The notification payloads for `signals` from `from`: as few as fit under [`MAX_PAYLOAD`].
fn encode(from: &str, signals: &[Signal]) -> Vec<String> {
    let mut out = Vec::new();
    let mut batch: Vec<Signal> = Vec::new();
    let mut size = 0;
    for signal in signals {
        let len = serde_json::to_string(signal).map_or(0, |t| t.len() + 1);
        if !batch.is_empty() && size + len > MAX_PAYLOAD {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        batch.push(signal.clone());
        size += len;
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out.into_iter()
        .filter_map(|signals| {
            serde_json::to_string(&Envelope {
                from: from.to_owned(),
                signals,
            })
            .ok()
        })
        .collect()
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
    /// The queue of the task that sends signals (started on the first one).
    outbox: OnceLock<mpsc::UnboundedSender<Signal>>,
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
            outbox: OnceLock::new(),
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

    /// Queues `signal` for the other nodes (nothing to do with one node); it is sent shortly,
    /// batched with others. A signal that cannot be sent is logged: the database stays the record,
    /// nodes catch up from it.
    pub fn publish(&self, signal: Signal) {
        if !self.shared() {
            return;
        }
        let tx = self.outbox.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_signals(self.db.clone(), self.node.clone(), rx));
            tx
        });
        if tx.send(signal).is_err() {
            tracing::warn!("cluster signal not sent: the sender stopped");
        }
    }

    /// Reads a notification: its signals, unless this node sent them (or it is not one).
    pub fn receive(&self, payload: &str) -> Vec<Signal> {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(e) if e.from == self.node => Vec::new(),
            Ok(e) => e.signals,
            Err(e) => {
                tracing::warn!(error = %e, payload, "cluster signal not understood");
                Vec::new()
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

/// Sends queued signals: everything queued while the previous notification went out goes in the
/// next one (or a few, by payload size). Ends when the cluster is dropped.
async fn send_signals(db: Db, from: String, mut rx: mpsc::UnboundedReceiver<Signal>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        for payload in encode(&from, &batch) {
            if let Err(e) = db.notify(CHANNEL, &payload).await {
                tracing::warn!(error = %e, signals = batch.len(), "cluster signals not sent");
            }
        }
        batch.clear();
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
        let texts = encode(a.node_id(), std::slice::from_ref(&signal));
        assert_eq!(texts.len(), 1);
        assert!(texts[0].contains(r#""signal":"connected""#), "{}", texts[0]);
        assert_eq!(b.receive(&texts[0]), [signal]);
        assert!(a.receive(&texts[0]).is_empty(), "a node ignores what it sent");
        assert!(b.receive("{}").is_empty());
    }

    #[test]
    fn many_signals_go_in_few_notifications_under_the_payload_limit_and_in_order() {
        let signals: Vec<Signal> = (0..1000)
            .map(|i| Signal::CommandCreated {
                device: DeviceId::new(format!("device-{i:04}")).unwrap(),
                command: format!("c-{i:024}"),
            })
            .collect();
        let texts = encode("node-a", &signals);
        assert!(
            texts.len() > 1 && texts.len() < 20,
            "{} notifications",
            texts.len()
        );
        assert!(texts.iter().all(|t| t.len() <= 8000));
        let back: Vec<Signal> = texts
            .iter()
            .flat_map(|t| serde_json::from_str::<Envelope>(t).unwrap().signals)
            .collect();
        assert_eq!(back, signals);
    }
}
