//! The composition root: [`Hub::open`] opens the storage (database and blobs), builds each domain
//! over its store and wires them together; the API and the device endpoint reach the domains
//! through [`Hub`]'s accessors. [`Hub::start_background`] runs what a node does on its own: the
//! heartbeat, the listener of other nodes' signals, and (on the node holding the fleet lock) the
//! once-per-fleet work.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use package::TrustedKeys;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assets::{AssetRules, AssetStore, Assets};
use crate::auth::{DownloadSigner, Users};
use crate::blobs::{Blobs, BlobsSettings};
use crate::cluster::{CHANNEL, Cluster, ClusterSettings, FLEET_LOCK, Signal};
use crate::commands::{CommandStore, Commands};
use crate::db::{Db, DbOptions, Heard};
use crate::devices::{DeviceStore, Devices};
use crate::error::HubError;
use crate::gateway::Gateway;
use crate::ingest::Writer;
use crate::metrics::Metrics;
use crate::registry::{DownloadLinks, Registry, RegistryStore};
use crate::telemetry::Telemetry;
use crate::transport::Connections;

/// What opening a hub needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Data directory: upload staging (`tmp/`), and the defaults of the database and blob URLs.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty: `sqlite://<data_dir>/hub.db`.
    pub database_url: String,
    /// Pool settings.
    pub database: DbOptions,
    /// Blob store; an empty URL means `file://<data_dir>/blobs`.
    pub blobs: BlobsSettings,
    /// Publisher keys.
    pub trusted: TrustedKeys,
    /// Largest package.
    pub max_package_bytes: u64,
    /// Base URL of download links.
    pub public_url: String,
    /// Lifetime of download tokens.
    pub download_ttl_secs: u64,
    /// The asset register's condition update rule.
    pub asset_rules: AssetRules,
    /// Node identity and timings.
    pub cluster: ClusterSettings,
    /// How long a command may stay without a final state.
    pub command_expiry: Duration,
    /// CONNECTs checked at once.
    pub max_connecting: usize,
}

impl Settings {
    /// Defaults for a hub in `data_dir` (embedded engines) that trusts `trusted`.
    pub fn new(data_dir: PathBuf, trusted: TrustedKeys) -> Self {
        Self {
            data_dir,
            database_url: String::new(),
            database: DbOptions::default(),
            blobs: BlobsSettings::default(),
            trusted,
            max_package_bytes: 1 << 30,
            public_url: "http://127.0.0.1:8080".into(),
            download_ttl_secs: 24 * 3600,
            asset_rules: AssetRules::default(),
            cluster: ClusterSettings::default(),
            command_expiry: Duration::from_secs(7 * 24 * 3600),
            max_connecting: 256,
        }
    }

    /// The database URL, the default filled in.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("hub.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The blob settings, the default URL filled in.
    pub fn blobs(&self) -> BlobsSettings {
        let mut b = self.blobs.clone();
        if b.url.is_empty() {
            b.url = format!("file://{}", self.data_dir.join("blobs").display());
        }
        b
    }
}

/// Everything the API and the device endpoint share: the domains, wired.
#[derive(Debug)]
pub struct Hub {
    db: Db,
    users: Users,
    devices: Devices,
    commands: Commands,
    registry: Registry,
    telemetry: Telemetry,
    assets: Assets,
    links: DownloadLinks,
    gateway: Arc<Gateway>,
    connections: Arc<Connections>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
}

/// Removes what uploads left behind when the hub was killed during a push: files in `tmp/`
/// (uploads being received) and a local blob store's staging files (`<key>#<n>` next to the
/// blobs, a multipart write not finished). Blobs themselves are only renamed into place when
/// complete. Runs at start, before anything uploads; returns the number of files removed.
fn remove_interrupted_uploads(staging: &Path, blobs: Option<&Path>) -> Result<usize, HubError> {
    let mut removed = 0;
    let mut targets = vec![(staging.to_owned(), false)];
    if let Some(b) = blobs {
        targets.push((b.join("packages"), true));
    }
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
    /// Opens the database and the blob store (both must answer), builds the domains and starts
    /// the message writer (on the current tokio runtime; its handle finishes once the hub is
    /// dropped and the queue drained).
    pub async fn open(settings: Settings) -> Result<(Arc<Self>, JoinHandle<()>), HubError> {
        let dir = settings.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| HubError::Io {
            context: format!("creating data directory {}", dir.display()),
            source,
        })?;
        let db = Db::open(&settings.database_url(), settings.database).await?;
        let blobs = Blobs::open(&settings.blobs())?;
        blobs.check().await?;
        let staging = dir.join("tmp");
        let removed = remove_interrupted_uploads(&staging, blobs.local_root())?;
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed the files of uploads a previous run did not finish"
            );
        }
        let metrics = Arc::new(Metrics::default());
        let connections = Arc::new(Connections::default());
        let cluster = Arc::new(Cluster::new(db.clone(), settings.cluster.clone()));
        let signer = DownloadSigner::load(&db).await?;
        let links = DownloadLinks::new(signer, settings.public_url.clone(), settings.download_ttl_secs);
        let registry = Registry::new(
            RegistryStore::new(db.clone()),
            blobs,
            settings.trusted.clone(),
            settings.max_package_bytes,
            staging,
        );
        let devices = Devices::new(DeviceStore::new(db.clone()), connections.clone(), cluster.clone());
        let commands = Commands::new(
            CommandStore::new(db.clone()),
            registry.clone(),
            devices.clone(),
            links.clone(),
            connections.clone(),
            cluster.clone(),
            metrics.clone(),
            settings.command_expiry,
        );
        let (writer, writer_task) = Writer::start(db.clone(), settings.asset_rules);
        let gateway = Arc::new(Gateway::new(
            devices.clone(),
            commands.clone(),
            writer,
            connections.clone(),
            cluster.clone(),
            metrics.clone(),
            settings.max_connecting,
        ));
        Ok((
            Arc::new(Self {
                users: Users::new(db.clone()),
                telemetry: Telemetry::new(db.clone()),
                assets: Assets::new(AssetStore::new(db.clone())),
                db,
                devices,
                commands,
                registry,
                links,
                gateway,
                connections,
                cluster,
                metrics,
            }),
            writer_task,
        ))
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Users and API tokens.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// The device registry.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Commands.
    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    /// The model registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Telemetry queries.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The asset register.
    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// Package download links.
    pub fn links(&self) -> &DownloadLinks {
        &self.links
    }

    /// The device-facing side (what the MQTT endpoint calls).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// This node's live device connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// This node in the cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What this node does with another node's signal.
    pub async fn on_signal(&self, signal: Signal) {
        let result = match &signal {
            Signal::CommandCreated { command, .. } => self.commands.deliver(command).await.map(|_| ()),
            Signal::CommandExpired { command, .. } => self.commands.expired_elsewhere(command).await,
            Signal::Connected { device, at } => {
                self.connections.taken_over_elsewhere(device, *at);
                Ok(())
            }
            Signal::CredentialsChanged { device } => {
                self.devices.forget_credentials(device);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, ?signal, "cluster signal not handled");
        }
    }

    /// Once-per-fleet work, on the node holding the fleet lock.
    pub async fn run_fleet_work(&self) {
        match self.commands.expire().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(commands = n, "expired commands"),
            Err(e) => tracing::warn!(error = %e, "cannot expire commands"),
        }
        match self.devices.forget_sessions_of_dead_nodes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "forgot the device sessions of nodes that are gone"),
            Err(e) => tracing::warn!(error = %e, "cannot forget the sessions of dead nodes"),
        }
    }

    /// Starts the node's background work: heartbeat, the listener of other nodes' signals
    /// (PostgreSQL), and the once-per-fleet work while this node holds the fleet lock. The tasks
    /// hold the hub weakly, so dropping it ends them too.
    pub fn start_background(self: &Arc<Self>) -> Background {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let settings = self.cluster.settings().clone();
        tasks.push(tokio::spawn(heartbeat(
            self.cluster.clone(),
            settings.heartbeat,
            stopped.clone(),
        )));
        if self.cluster.shared() {
            tasks.push(tokio::spawn(listen(Arc::downgrade(self), stopped.clone())));
        }
        tasks.push(tokio::spawn(lead(
            Arc::downgrade(self),
            settings.fleet_interval,
            stopped,
        )));
        Background { stop, tasks }
    }
}

/// The background tasks of a node.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Stops the tasks (releasing the fleet lock) and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits `d`; true when the node is stopping instead.
async fn pause(d: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    let stop = tokio::select! {
        () = tokio::time::sleep(d) => None,
        // Stopping, or the `Background` was dropped.
        _ = stopped.wait_for(|s| *s) => Some(true),
    };
    stop.unwrap_or_else(|| *stopped.borrow())
}

async fn heartbeat(cluster: Arc<Cluster>, every: Duration, mut stopped: watch::Receiver<bool>) {
    while !pause(every, &mut stopped).await {
        if let Err(e) = cluster.heartbeat().await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
    }
}

async fn listen(hub: Weak<Hub>, mut stopped: watch::Receiver<bool>) {
    let mut listener = None;
    loop {
        if *stopped.borrow() {
            return;
        }
        let Some(db) = hub.upgrade().map(|h| h.db.clone()) else {
            return;
        };
        let l = match &mut listener {
            Some(l) => l,
            None => match db.listen(CHANNEL).await {
                Ok(Some(l)) => {
                    tracing::info!("listening to the other hub nodes");
                    // Signals sent before this point were missed.
                    if let Some(h) = hub.upgrade() {
                        resync(&h).await;
                    }
                    listener.insert(l)
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen to the other hub nodes; retrying");
                    if pause(Duration::from_secs(1), &mut stopped).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let heard = tokio::select! {
            h = l.next() => h,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(h) = hub.upgrade() else { return };
        match heard {
            Ok(Heard::Payload(p)) => {
                for signal in h.cluster.receive(&p) {
                    h.on_signal(signal).await;
                }
            }
            Ok(Heard::Reconnected) => {
                tracing::warn!("the signal listener reconnected; catching up");
                resync(&h).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "signal listener lost the database; retrying");
                drop(h);
                if pause(Duration::from_secs(1), &mut stopped).await {
                    return;
                }
            }
        }
    }
}

/// Catches up with what signals would have said: token changes (the credential cache is
/// emptied) and pending commands of the devices connected here.
async fn resync(hub: &Hub) {
    hub.devices.forget_all_credentials();
    match hub.commands.deliver_all_pending().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(commands = n, "delivered pending commands after catching up"),
        Err(e) => tracing::warn!(error = %e, "cannot deliver pending commands"),
    }
}

async fn lead(hub: Weak<Hub>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut held = None;
    loop {
        let Some(h) = hub.upgrade() else { return };
        match &mut held {
            None => match h.db.try_lead(FLEET_LOCK).await {
                Ok(Some(l)) => held = Some(l),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the fleet lock"),
            },
            Some(l) => {
                if !l.alive().await {
                    held = None;
                }
            }
        }
        h.cluster.set_leader(held.is_some());
        if held.is_some() {
            h.run_fleet_work().await;
        }
        drop(h);
        if pause(every, &mut stopped).await {
            break;
        }
    }
    if let Some(h) = hub.upgrade() {
        h.cluster.set_leader(false);
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
        let (_hub, _writer) = Hub::open(Settings::new(data.clone(), TrustedKeys::new()))
            .await
            .unwrap();
        assert!(!upload.exists() && !staging.exists());
        assert_eq!(std::fs::read(&blob).unwrap(), b"bytes");
    }

    #[tokio::test]
    async fn an_unreachable_database_or_object_store_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::new(dir.path().join("data"), TrustedKeys::new());
        // Nothing listens on port 1.
        s.database_url = "postgres://hub:secret@127.0.0.1:1/hub".into();
        s.database.acquire_timeout = Duration::from_secs(2);
        let e = Hub::open(s).await.unwrap_err().to_string();
        assert!(
            e.contains("cannot open database postgres://hub:***@127.0.0.1:1/hub"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");

        let mut s = Settings::new(dir.path().join("data"), TrustedKeys::new());
        s.blobs = BlobsSettings {
            url: "s3://models/hub".into(),
            endpoint: "http://127.0.0.1:1".into(),
            region: "garage".into(),
            access_key_id: "key".into(),
            secret_access_key: "secret".into(),
        };
        let e = Hub::open(s).await.unwrap_err().to_string();
        assert!(e.contains("reaching object store s3://models/hub"), "{e}");
    }
}
