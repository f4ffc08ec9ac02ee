//! The device registry: devices and their credentials, and the inventory the hub knows from what
//! they publish (entities, twin, capabilities, health, installed software). Storage is
//! [`store`]; this module adds what the domain needs on top:
//!
//! - **Credential cache.** Every CONNECT checks a device token. Reading it from the database each
//!   time puts 10,000 reconnecting devices in the same queue as the telemetry writes, so token
//!   hashes are cached in memory ([`CredentialCache`]). A rotation or revocation invalidates the
//!   entry on this node at once and on every other node through the cluster signal, and closes the
//!   device's connection wherever it is.
//! - **Online state** across nodes: a device is online when a live node (fresh heartbeat) holds
//!   its session row, or when it is connected to this node.

pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::DeviceId;
use proto::api::{DeviceCredentials, DeviceDetail, DeviceSummary};
use proto::edgemlops::{DEVICE_FACTS_FRAGMENT, DeviceFacts, HardwareClass};

pub use self::store::{DeviceRecord, DeviceStore, KIND_CMD, KIND_HEALTH, KIND_TWIN, MAIN_ENTITY};
use crate::auth::DEVICE_TOKEN_PREFIX;
use crate::cluster::{Cluster, Signal};
use crate::error::{DbContext, HubError};
use crate::stdx::{new_secret, now_ms, sha256_hex, ts};
use crate::transport::{CloseReason, Connections, DeviceTransport, Outbound};

/// How long a cached token hash is trusted: a change is pushed to every node at once (a cluster
/// signal), and this bounds how long a node that missed the signal keeps the old one.
const CREDENTIALS_TTL: Duration = Duration::from_secs(60);

/// Token hashes of devices, read through from the database.
///
/// A fill that raced with an invalidation must not put the old value back: every invalidation
/// bumps the epoch, and a fill stores its value only if the epoch it read before querying is still
/// current.
#[derive(Debug, Default)]
pub struct CredentialCache {
    hashes: Mutex<HashMap<DeviceId, (Option<String>, Instant)>>,
    epoch: AtomicU64,
}

impl CredentialCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, (Option<String>, Instant)>> {
        // A panic while holding the lock leaves a map that is still a valid cache.
        self.hashes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached hash: `None` when not cached (or too old), `Some(None)` for a revoked token.
    fn get(&self, id: &DeviceId) -> Option<Option<String>> {
        self.map()
            .get(id)
            .filter(|(_, at)| at.elapsed() < CREDENTIALS_TTL)
            .map(|(hash, _)| hash.clone())
    }

    /// The epoch to pass to [`Self::fill`] (read before the database).
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn fill(&self, id: &DeviceId, hash: Option<String>, epoch: u64) {
        let mut map = self.map();
        if self.epoch.load(Ordering::SeqCst) == epoch {
            map.insert(id.clone(), (hash, Instant::now()));
        }
    }

    /// Forgets everything (signals may have been missed).
    pub fn clear(&self) {
        let mut map = self.map();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        map.clear();
    }

    /// Forgets a device's entry (its token changed).
    pub fn invalidate(&self, id: &DeviceId) {
        let mut map = self.map();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        map.remove(id);
    }

    /// Number of cached devices.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// The device registry.
#[derive(Clone, Debug)]
pub struct Devices {
    store: DeviceStore,
    connections: Arc<Connections>,
    credentials: Arc<CredentialCache>,
    cluster: Arc<Cluster>,
}

impl Devices {
    /// The registry over its store; `connections` are this node's, `cluster` reaches the others.
    pub fn new(store: DeviceStore, connections: Arc<Connections>, cluster: Arc<Cluster>) -> Self {
        Self {
            store,
            connections,
            credentials: Arc::default(),
            cluster,
        }
    }

    fn summary(&self, r: DeviceRecord) -> DeviceSummary {
        DeviceSummary {
            online: r.connected || self.connections.is_online(&r.id),
            hardware_class: r
                .facts
                .and_then(|f| DeviceFacts::parse(f.as_bytes()).ok())
                .map(|f| f.hardware_class.to_string()),
            id: r.id,
            name: r.name,
            created_at: ts(r.created_at),
            last_seen: r.last_seen.map(ts),
            has_token: r.has_token,
        }
    }

    /// Registers a device and returns it with its token (shown once).
    pub async fn create(&self, id: &DeviceId, name: Option<&str>) -> Result<DeviceCredentials, HubError> {
        let token = new_secret(DEVICE_TOKEN_PREFIX);
        let created = self
            .store
            .insert(id, name, &sha256_hex(token.as_bytes()), now_ms())
            .await
            .db("registering a device")?;
        if !created {
            return Err(HubError::Conflict(format!(
                "device '{id}' already exists (issue a new token with POST /devices/{id}/token)"
            )));
        }
        Ok(DeviceCredentials {
            device: self.summary_of(id).await?,
            token,
        })
    }

    /// Every device.
    pub async fn list(&self) -> Result<Vec<DeviceSummary>, HubError> {
        let rows = self
            .store
            .list(self.cluster.live_since())
            .await
            .db("listing devices")?;
        Ok(rows.into_iter().map(|r| self.summary(r)).collect())
    }

    /// One device.
    pub async fn summary_of(&self, id: &DeviceId) -> Result<DeviceSummary, HubError> {
        let r = self
            .store
            .get(id, self.cluster.live_since())
            .await
            .db("reading a device")?
            .ok_or_else(|| HubError::not_found("device", id.as_str()))?;
        Ok(self.summary(r))
    }

    /// Fails with 404 unless the device is registered.
    pub async fn ensure_exists(&self, id: &DeviceId) -> Result<(), HubError> {
        if self.store.exists(id).await.db("reading a device")? {
            Ok(())
        } else {
            Err(HubError::not_found("device", id.as_str()))
        }
    }

    /// One device with its inventory.
    pub async fn get(&self, id: &DeviceId) -> Result<DeviceDetail, HubError> {
        let summary = self.summary_of(id).await?;
        let inv = self
            .store
            .inventory(id)
            .await
            .db("reading a device's inventory")?;
        Ok(DeviceDetail {
            summary,
            entities: inv.entities,
            twin: inv.twin,
            capabilities: inv.capabilities,
            health: inv.health,
            software: inv.software,
        })
    }

    /// The device's token changed: forget the cached hash and close its connection, here and
    /// (through the cluster) on every other node.
    fn credentials_changed(&self, id: &DeviceId) {
        self.forget_credentials(id);
        self.cluster
            .publish(Signal::CredentialsChanged { device: id.clone() });
    }

    /// Forgets every cached token hash (this node may have missed signals).
    pub fn forget_all_credentials(&self) {
        self.credentials.clear();
    }

    /// What a node does when a device's token changed (here, or on another node).
    pub fn forget_credentials(&self, id: &DeviceId) {
        self.credentials.invalidate(id);
        // A connection made with the old token must not outlive it.
        self.connections.send(id, Outbound::Close(CloseReason::Revoked));
    }

    /// Issues a new token for the device (the old one stops working) and returns it (shown once).
    pub async fn rotate_token(&self, id: &DeviceId) -> Result<DeviceCredentials, HubError> {
        let token = new_secret(DEVICE_TOKEN_PREFIX);
        let done = self
            .store
            .set_token_hash(id, Some(&sha256_hex(token.as_bytes())), now_ms())
            .await
            .db("issuing a device token")?;
        if !done {
            return Err(HubError::not_found("device", id.as_str()));
        }
        self.credentials_changed(id);
        Ok(DeviceCredentials {
            device: self.summary_of(id).await?,
            token,
        })
    }

    /// Revokes the device's token: it is disconnected and can no longer connect until a new one
    /// is issued.
    pub async fn revoke_token(&self, id: &DeviceId) -> Result<(), HubError> {
        let done = self
            .store
            .set_token_hash(id, None, now_ms())
            .await
            .db("revoking a device token")?;
        if !done {
            return Err(HubError::not_found("device", id.as_str()));
        }
        self.credentials_changed(id);
        Ok(())
    }

    /// Whether `password` is the current token of `device` (from the cache when it is there).
    pub async fn check_token(&self, device: &DeviceId, password: &[u8]) -> Result<bool, HubError> {
        let stored = match self.credentials.get(device) {
            Some(hash) => hash,
            None => {
                let epoch = self.credentials.epoch();
                match self
                    .store
                    .token_hash(device)
                    .await
                    .db("checking a device token")?
                {
                    // Unknown devices are not cached: a registration would have to invalidate
                    // on every node, and a flood of unknown ids must not fill the cache.
                    None => return Ok(false),
                    Some(hash) => {
                        self.credentials.fill(device, hash.clone(), epoch);
                        hash
                    }
                }
            }
        };
        Ok(matches!(stored, Some(hash) if hash == sha256_hex(password)))
    }

    /// Number of devices whose credentials are cached.
    pub fn cached_credentials(&self) -> usize {
        self.credentials.len()
    }

    /// The device's hardware class from its device facts twin fragment, if it published one.
    pub async fn hardware_class(&self, id: &DeviceId) -> Result<Option<HardwareClass>, HubError> {
        let facts = self
            .store
            .twin(id, DEVICE_FACTS_FRAGMENT)
            .await
            .db("reading device facts")?;
        Ok(facts
            .and_then(|f| DeviceFacts::parse(f.as_bytes()).ok())
            .map(|f| f.hardware_class))
    }

    /// Removes the session rows of nodes that stopped or died (once-per-fleet work).
    pub async fn forget_sessions_of_dead_nodes(&self) -> Result<u64, HubError> {
        self.store
            .forget_sessions_of_dead_nodes(self.cluster.live_since())
            .await
            .db("removing sessions of dead nodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_with_an_invalidation_is_not_cached() {
        let cache = CredentialCache::default();
        let d = DeviceId::new("cam").unwrap();
        let before = cache.epoch();
        // The database said "old" ... then a rotation invalidated ... then the fill lands.
        cache.invalidate(&d);
        cache.fill(&d, Some("old".into()), before);
        assert_eq!(cache.get(&d), None, "the stale value must not be cached");
        let now = cache.epoch();
        cache.fill(&d, Some("new".into()), now);
        assert_eq!(cache.get(&d), Some(Some("new".into())));
        cache.invalidate(&d);
        assert!(cache.is_empty());
    }
}
