//! The gateway rules every device endpoint applies (DESIGN.md section 3): who may connect, what a
//! device may publish and subscribe to, what is stored before an acknowledgement, which commands
//! to hand over when a device subscribes, and what a connection's start and end record.
//!
//! Connections are admitted with back-pressure: at most `mqtt.max_connecting` CONNECTs are
//! checked at once, the rest wait their turn (in ntex's queue and the kernel's listen backlog)
//! instead of all hitting the database together after a restart or an outage. Credentials come
//! from the device registry's cache, so admission does not wait behind telemetry writes.

use std::sync::Arc;

use proto::topic::{TopicError, check_publish, check_subscription};
use proto::{DeviceId, PayloadError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::cluster::{Cluster, Signal};
use crate::commands::{self, Commands};
use crate::devices::Devices;
use crate::devices::store::SessionChange;
use crate::ingest::{DeviceMessage, Outcome, Write, WriteError, Writer};
use crate::metrics::Metrics;
use crate::stdx::now_ms;
use crate::transport::{Connections, Outbound};

/// Why a device may not connect; each maps to an MQTT return / reason code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// Client id and user name differ, or the client id is not a valid device id
    /// (v3.1.1: 2 identifier rejected, v5: 0x85 client identifier not valid).
    BadIdentifier(String),
    /// Unknown device, wrong or revoked token, missing credentials
    /// (v3.1.1: 4 bad user name or password, v5: 0x86).
    BadCredentials(String),
    /// The last will's topic is outside the device's prefix (v3.1.1: 5 not authorized, v5: 0x87).
    NotAuthorized(String),
    /// The hub cannot check right now (v3.1.1: 3 server unavailable, v5: 0x88).
    Unavailable(String),
}

/// Why a publish was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishRefusal {
    /// Outside the device's prefix, a wildcard, not a te/ topic (v5: 0x87, v3.1.1: disconnect).
    #[error("publish refused: {0}")]
    NotAuthorized(#[from] TopicError),
    /// The payload does not follow the te/ contract (v5: 0x99 payload format invalid).
    #[error("payload refused: {0}")]
    InvalidPayload(#[from] PayloadError),
    /// Storing failed: not acknowledged, the device sends it again.
    #[error(transparent)]
    Storage(#[from] WriteError),
}

/// A connection registered on this node.
#[derive(Debug)]
pub struct Registration {
    /// Its id in this node's registry.
    pub id: u64,
    /// When it was registered, ms.
    pub at: i64,
    /// Messages for it (commands, close).
    pub rx: mpsc::UnboundedReceiver<Outbound>,
}

/// The device-facing side of the hub.
#[derive(Debug)]
pub struct Gateway {
    devices: Devices,
    commands: Commands,
    writer: Writer,
    connections: Arc<Connections>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
}

impl Gateway {
    /// The gateway; `max_connecting`: CONNECTs checked at once.
    pub fn new(
        devices: Devices,
        commands: Commands,
        writer: Writer,
        connections: Arc<Connections>,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        max_connecting: usize,
    ) -> Self {
        Self {
            devices,
            commands,
            writer,
            connections,
            cluster,
            metrics,
            admission: Arc::new(Semaphore::new(max_connecting.max(1))),
        }
    }

    /// Waits for a turn to admit a connection; held until the CONNACK is decided.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.admission.clone().acquire_owned().await.ok()
    }

    /// CONNECT: client id = user name = device id, password = the device's current token, and a
    /// last will (if any) inside the device's prefix.
    pub async fn authenticate_device(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        will_topic: Option<&str>,
    ) -> Result<DeviceId, ConnectRefusal> {
        let refused = |r: ConnectRefusal| {
            self.metrics.connections_refused.inc();
            tracing::info!(client_id, refusal = ?r, "device connection refused");
            Err(r)
        };
        let Some(username) = username else {
            return refused(ConnectRefusal::BadCredentials(
                "no user name (it must be the device id)".into(),
            ));
        };
        if username != client_id {
            return refused(ConnectRefusal::BadIdentifier(format!(
                "client id '{client_id}' differs from user name '{username}'"
            )));
        }
        let device = match DeviceId::new(client_id) {
            Ok(d) => d,
            Err(e) => return refused(ConnectRefusal::BadIdentifier(e.to_string())),
        };
        let Some(password) = password else {
            return refused(ConnectRefusal::BadCredentials(
                "no password (it must be the device token)".into(),
            ));
        };
        match self.devices.check_token(&device, password).await {
            Ok(true) => {}
            Ok(false) => {
                return refused(ConnectRefusal::BadCredentials(format!(
                    "unknown device '{device}' or wrong or revoked token"
                )));
            }
            Err(e) => return refused(ConnectRefusal::Unavailable(e.to_string())),
        }
        if let Some(will) = will_topic
            && let Err(e) = check_publish(will, &device)
        {
            return refused(ConnectRefusal::NotAuthorized(format!("last will: {e}")));
        }
        self.metrics.connections_accepted.inc();
        Ok(device)
    }

    /// Registers a new connection of `device` on this node (an older one here is told to close).
    pub fn register(&self, device: &DeviceId) -> Registration {
        let at = now_ms();
        let (id, rx) = self.connections.register(device, at);
        Registration { id, at, rx }
    }

    /// Checks the device token again once the connection is registered. A token revoked between
    /// the first check and the registration would otherwise keep this connection: the revocation
    /// commits, then closes whatever connection is registered at that moment, which was not yet
    /// this one. Checked after registering, every order is covered. A refused connection is
    /// unregistered first, so it neither stays online nor publishes its last will.
    pub async fn still_authorized(
        &self,
        device: &DeviceId,
        connection: u64,
        password: Option<&[u8]>,
    ) -> bool {
        let valid = match password {
            Some(p) => self
                .devices
                .check_token(device, p)
                .await
                .inspect_err(|e| tracing::warn!(device = %device, error = %e, "cannot re-check the token"))
                .unwrap_or(false),
            None => false,
        };
        if !valid {
            self.connections.unregister(device, connection);
            tracing::info!(device = %device, "token revoked while connecting; connection refused");
        }
        valid
    }

    /// A device connected (before CONNACK) with connection `connection` registered at `at`: its
    /// session is recorded (this node holds it), and other nodes close an older connection of it.
    pub async fn connected(&self, device: &DeviceId, connection: u64, at: i64) {
        tracing::info!(device = %device, "device connected");
        let node = self.cluster.node_id().to_owned();
        self.record_session(device, SessionChange::Connected { node, connection })
            .await;
        self.cluster.publish(Signal::Connected {
            device: device.clone(),
            at,
        });
    }

    /// A device connection ended: unregisters it and returns whether it was the live one (not
    /// taken over by a newer connection, here or on another node).
    pub fn unregister(&self, device: &DeviceId, connection: u64) -> bool {
        self.connections.unregister(device, connection)
    }

    /// A device connection ended (after [`Gateway::unregister`]; `was_live`: it was the live one).
    pub async fn disconnected(&self, device: &DeviceId, connection: u64, was_live: bool) {
        if was_live {
            tracing::info!(device = %device, "device disconnected");
        }
        let node = self.cluster.node_id().to_owned();
        self.record_session(device, SessionChange::Disconnected { node, connection })
            .await;
    }

    /// Writes a connection's start or end (the session row, `last_seen`); a failure is logged:
    /// the node's heartbeat still tells whether its devices are online.
    async fn record_session(&self, device: &DeviceId, change: SessionChange) {
        if let Err(e) = self.writer.write(device, Write::Session(change.clone())).await {
            tracing::warn!(device = %device, error = %e, ?change, "cannot record the connection's start or end");
        }
    }

    /// A publish (or a last will) from `device`: checked, understood, stored. Returns after the
    /// message is committed; the caller acknowledges only then.
    pub async fn ingest(
        &self,
        device: &DeviceId,
        topic: &str,
        payload: &[u8],
    ) -> Result<Outcome, PublishRefusal> {
        let message = self.understand(device, topic, payload)?;
        self.store(device, message).await
    }

    /// The first half of [`Gateway::ingest`]: the topic checked and the payload parsed into a
    /// message that owns its data, so the endpoint can release its read buffer before the message
    /// waits for its commit (10,000 connections each pinning buffers of in-flight publishes cost
    /// gigabytes under overload).
    pub fn understand(
        &self,
        device: &DeviceId,
        topic: &str,
        payload: &[u8],
    ) -> Result<DeviceMessage, PublishRefusal> {
        let topic = check_publish(topic, device).inspect_err(|e| {
            self.metrics.messages_refused.inc();
            tracing::info!(device = %device, error = %e, "publish refused");
        })?;
        Ok(DeviceMessage::parse(&topic, payload, now_ms()).inspect_err(|e| {
            self.metrics.messages_refused.inc();
            tracing::info!(device = %device, %topic, error = %e, "payload refused");
        })?)
    }

    /// The second half of [`Gateway::ingest`]: stores the message; returns after it committed.
    pub async fn store(&self, device: &DeviceId, message: DeviceMessage) -> Result<Outcome, PublishRefusal> {
        let outcome = self.writer.store(device, message).await?;
        self.metrics.messages_stored.inc();
        Ok(outcome)
    }

    /// Checks one subscription filter of `device`.
    pub fn check_subscription(&self, device: &DeviceId, filter: &str) -> Result<(), TopicError> {
        check_subscription(filter, device).inspect_err(|e| {
            self.metrics.subscriptions_refused.inc();
            tracing::info!(device = %device, error = %e, "subscription refused");
        })
    }

    /// The device subscribed to `filters`: the pending commands it should now receive.
    pub async fn subscribed(&self, device: &DeviceId, filters: &[String]) -> Vec<Outbound> {
        match self.commands.pending_for(device, filters).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(device = %device, error = %e, "cannot read pending commands");
                Vec::new()
            }
        }
    }

    /// The message that clears a finished command's retained topic.
    pub fn clear_command(device: &DeviceId, outcome: &Outcome) -> Option<Outbound> {
        match outcome {
            Outcome::CommandFinished { cmd_id, operation } => {
                commands::clear_message(device, operation, cmd_id)
            }
            Outcome::Stored => None,
        }
    }
}
