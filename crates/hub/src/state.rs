//! The hub's shared state, and the gateway rules every device endpoint applies (DESIGN.md
//! section 3): who may connect, what a device may publish and subscribe to, what is stored before
//! an acknowledgement, which commands to hand over when a device subscribes.

use std::path::Path;
use std::sync::Arc;

use package::TrustedKeys;
use proto::topic::{TopicError, check_publish, check_subscription};
use proto::{DeviceId, PayloadError};

use crate::auth::{self, DownloadSigner};
use crate::blobs::Blobs;
use crate::commands;
use crate::db::{self, Pool};
use crate::devices;
use crate::error::HubError;
use crate::ingest::{DeviceMessage, Outcome, WriteError, Writer};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::stdx::now_ms;
use crate::transport::{Connections, DeviceTransport, Outbound};

/// Everything the API and the device endpoint share.
#[derive(Debug)]
pub struct Hub {
    /// The database.
    pub pool: Pool,
    /// Models and packages.
    pub registry: Registry,
    /// Signs download URLs.
    pub signer: DownloadSigner,
    /// Stores device messages.
    pub writer: Writer,
    /// Live device connections.
    pub connections: Arc<Connections>,
    /// Counters.
    pub metrics: Metrics,
    /// Base URL of download links.
    pub public_url: String,
    /// Lifetime of download tokens.
    pub download_ttl_secs: u64,
}

/// What opening a hub needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Data directory.
    pub data_dir: std::path::PathBuf,
    /// Publisher keys.
    pub trusted: TrustedKeys,
    /// Largest package.
    pub max_package_bytes: u64,
    /// Base URL of download links.
    pub public_url: String,
    /// Lifetime of download tokens.
    pub download_ttl_secs: u64,
    /// The asset register's condition update rule.
    pub asset_rules: crate::assets::AssetRules,
}

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

/// Removes what uploads left behind when the hub was killed during a push: files in `tmp/`
/// (uploads being received) and the blob store's staging files (`<key>#<n>` next to the blobs,
/// a multipart write not finished). Blobs themselves are only renamed into place when complete.
/// Runs at start, before anything uploads; returns the number of files removed.
fn remove_interrupted_uploads(data_dir: &Path) -> Result<usize, HubError> {
    let mut removed = 0;
    let targets = [
        (data_dir.join("tmp"), false),
        (data_dir.join("blobs").join("packages"), true),
    ];
    for (dir, staging_only) in targets {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(HubError::Io {
                    context: format!("reading {}", dir.display()),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let staging = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains('#'));
            if path.is_file() && (!staging_only || staging) {
                std::fs::remove_file(&path).map_err(|source| HubError::Io {
                    context: format!("removing {}", path.display()),
                    source,
                })?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

impl Hub {
    /// Opens the database and blob store in `settings.data_dir` and starts the message writer
    /// (on the current tokio runtime; its handle finishes once the hub is dropped and the queue
    /// drained).
    pub async fn open(settings: Settings) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), HubError> {
        let dir = settings.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| HubError::Io {
            context: format!("creating data directory {}", dir.display()),
            source,
        })?;
        let pool = db::open(&dir.join("hub.db")).await?;
        let removed = remove_interrupted_uploads(&dir)?;
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed the files of uploads a previous run did not finish"
            );
        }
        Self::with_pool(pool, &dir, settings).await
    }

    async fn with_pool(
        pool: Pool,
        dir: &Path,
        settings: Settings,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), HubError> {
        let blobs = Blobs::local(&dir.join("blobs"))?;
        let registry = Registry::new(
            pool.clone(),
            blobs,
            settings.trusted,
            settings.max_package_bytes,
            dir.join("tmp"),
        );
        let signer = DownloadSigner::load(&pool).await?;
        let (writer, writer_task) = Writer::start_with(pool.clone(), settings.asset_rules);
        Ok((
            Arc::new(Self {
                pool,
                registry,
                signer,
                writer,
                connections: Arc::new(Connections::default()),
                metrics: Metrics::default(),
                public_url: settings.public_url,
                download_ttl_secs: settings.download_ttl_secs,
            }),
            writer_task,
        ))
    }

    /// The device endpoint, as the rest of the hub sees it.
    pub fn transport(&self) -> &dyn DeviceTransport {
        self.connections.as_ref()
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
        match auth::check_device_token(&self.pool, &device, password).await {
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

    /// A device connected (after CONNACK).
    pub async fn device_connected(&self, device: &DeviceId) {
        tracing::info!(device = %device, "device connected");
        if let Err(e) = devices::touch(&self.pool, device).await {
            tracing::warn!(device = %device, error = %e, "cannot record the connection");
        }
    }

    /// A device connection ended; `was_live`: it had not been taken over by a newer one (the
    /// caller unregistered it).
    pub async fn device_disconnected(&self, device: &DeviceId, was_live: bool) {
        if was_live {
            tracing::info!(device = %device, "device disconnected");
        }
        if let Err(e) = devices::touch(&self.pool, device).await {
            tracing::warn!(device = %device, error = %e, "cannot record the disconnection");
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
        let topic = check_publish(topic, device).inspect_err(|e| {
            self.metrics.messages_refused.inc();
            tracing::info!(device = %device, error = %e, "publish refused");
        })?;
        let message = DeviceMessage::parse(&topic, payload, now_ms()).inspect_err(|e| {
            self.metrics.messages_refused.inc();
            tracing::info!(device = %device, %topic, error = %e, "payload refused");
        })?;
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
        match commands::pending_for(self, device, filters).await {
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
                commands::command_topic(device, operation, cmd_id)
                    .ok()
                    .map(|topic| Outbound::Publish {
                        topic,
                        payload: Vec::new(),
                        retain: true,
                    })
            }
            Outcome::Stored => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opening_removes_what_killed_uploads_left_and_keeps_the_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("tmp")).unwrap();
        std::fs::create_dir_all(data.join("blobs/packages")).unwrap();
        let upload = data.join("tmp/upload-1a2b");
        let staging = data.join("blobs/packages/aa.emp#3");
        let blob = data.join("blobs/packages/bb.emp");
        for p in [&upload, &staging, &blob] {
            std::fs::write(p, b"bytes").unwrap();
        }
        let (_hub, _writer) = Hub::open(Settings {
            data_dir: data.clone(),
            trusted: TrustedKeys::new(),
            max_package_bytes: 1 << 20,
            public_url: "http://hub.test".into(),
            download_ttl_secs: 60,
            asset_rules: crate::assets::AssetRules { min_confidence: 0.6 },
        })
        .await
        .unwrap();
        assert!(!upload.exists() && !staging.exists());
        assert_eq!(std::fs::read(&blob).unwrap(), b"bytes");
    }
}
