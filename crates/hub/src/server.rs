//! `edgemlops-hub serve`: configuration → open the storage (database and blobs; either one not
//! answering is a one-line error naming it) → bind → join the cluster → log the bound addresses →
//! serve → on SIGINT/SIGTERM stop the device endpoint, let HTTP requests finish within the grace
//! period, stop the background work, leave the cluster, and drain the message writer.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use package::TrustedKeys;

use crate::blobs::BlobsSettings;
use crate::cluster::ClusterSettings;
use crate::config::{Config, Resolved};
use crate::db::DbOptions;
use crate::error::HubError;
use crate::hub::{Hub, Settings};
use crate::mqtt::{self, Listeners};

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A trusted key file is missing or malformed.
    #[error("registry.trusted_keys: {0}")]
    TrustedKeys(#[from] package::PackageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// Opening the storage failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The device endpoint failed to start.
    #[error("device endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| StartError::Tls(format!("{}: no private key in the file", key.display())))?;
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| StartError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

fn bind_mqtt(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    ntex_server::net::create_tcp_listener(addr, 1024).map_err(|source| StartError::Bind {
        what,
        addr,
        source,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Runs the hub until SIGINT or SIGTERM.
pub async fn serve(resolved: Resolved) -> Result<(), StartError> {
    let config = resolved.config;
    let trusted = TrustedKeys::load(&config.registry.trusted_keys)?;
    if trusted.is_empty() {
        tracing::warn!(
            "no trusted publisher keys (registry.trusted_keys): every package push will be refused"
        );
    }
    let http = tokio::net::TcpListener::bind(resolved.http)
        .await
        .map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: resolved.http,
            source,
        })?;
    let http_addr = http.local_addr().map_err(StartError::Http)?;
    let public_url = if config.http.public_url.is_empty() {
        let host = if http_addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), http_addr.port())
        } else {
            http_addr
        };
        format!("http://{host}")
    } else {
        config.http.public_url.trim_end_matches('/').to_owned()
    };
    let (hub, writer_task) = Hub::open(settings(&config, trusted, public_url.clone())).await?;
    if let Some(token) = hub.users().bootstrap_admin(&config.auth.admin_token).await? {
        // Shown once: only its hash is stored.
        println!("admin token (shown once, store it now): {token}");
    }
    let plain = resolved.mqtt.map(|a| bind_mqtt("MQTT", a)).transpose()?;
    let tls = match resolved.mqtt_tls {
        Some(addr) => Some((
            bind_mqtt("MQTT over TLS", addr)?,
            tls_config(&config.mqtt.tls_cert, &config.mqtt.tls_key)?,
        )),
        None => None,
    };
    let workers = match config.mqtt.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let endpoint = mqtt::start(
        hub.gateway().clone(),
        Listeners { plain, tls },
        workers,
        config.mqtt.max_packet_bytes,
    )
    .map_err(StartError::Endpoint)?;
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    hub.cluster()
        .join(&http_addr.to_string(), &show(endpoint.plain))
        .await?;
    let background = hub.start_background();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = %http_addr,
        mqtt = %show(endpoint.plain),
        mqtts = %show(endpoint.tls),
        data_dir = %config.data_dir.display(),
        database = %hub.db().shown_url(),
        blobs = %hub.registry().blobs().shown_url(),
        node = %hub.cluster().node_id(),
        mqtt_workers = workers,
        %public_url,
        "hub started"
    );
    // One line for scripts and tests to wait for and parse.
    println!(
        "edgemlops-hub ready http={http_addr} mqtt={} mqtts={} data_dir={} node={}",
        show(endpoint.plain),
        show(endpoint.tls),
        config.data_dir.display(),
        hub.cluster().node_id()
    );
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = crate::api::router(hub.clone());
    let mut http_stop = stop_rx.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    shutdown_signal().await;
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    endpoint.stop(hub.connections()).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, http_server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(StartError::Http(e)),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "HTTP requests still running after the grace period"
        ),
    }
    background.stop().await;
    hub.cluster().leave().await;
    drop(hub);
    if tokio::time::timeout(grace, writer_task).await.is_err() {
        tracing::warn!("message writer still busy after the grace period");
    }
    tracing::info!("hub stopped");
    Ok(())
}

/// What [`Hub::open`] needs, from the configuration.
pub fn settings(config: &Config, trusted: TrustedKeys, public_url: String) -> Settings {
    let b = &config.blobs;
    let c = &config.cluster;
    Settings {
        data_dir: config.data_dir.clone(),
        database_url: config.database.url.clone(),
        database: DbOptions {
            max_connections: config.database.max_connections,
            acquire_timeout: Duration::from_secs(config.database.acquire_timeout_secs),
        },
        blobs: BlobsSettings {
            url: b.url.clone(),
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            access_key_id: b.access_key_id.clone(),
            secret_access_key: b.secret_access_key.clone(),
        },
        trusted,
        max_package_bytes: config.registry.max_package_bytes,
        public_url,
        download_ttl_secs: config.registry.download_token_ttl_secs,
        asset_rules: crate::assets::AssetRules {
            min_confidence: config.assets.min_confidence,
        },
        cluster: ClusterSettings {
            node_id: c.node_id.clone(),
            heartbeat: Duration::from_secs(c.heartbeat_secs),
            node_timeout: Duration::from_secs(c.node_timeout_secs),
            fleet_interval: Duration::from_secs(c.fleet_interval_secs),
        },
        command_expiry: Duration::from_secs(config.commands.expire_after_secs),
        max_connecting: config.mqtt.max_connecting,
    }
}
