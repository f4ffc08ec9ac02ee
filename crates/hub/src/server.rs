//! `edgemlops-hub serve`: configuration → open the data directory → bind → log the bound
//! addresses → serve → on SIGINT/SIGTERM stop the device endpoint, let HTTP requests finish within
//! the grace period, and drain the message writer.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use package::TrustedKeys;

use crate::auth;
use crate::config::Resolved;
use crate::error::HubError;
use crate::mqtt::{self, Listeners};
use crate::state::{Hub, Settings};

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
    /// Opening the data directory failed.
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
    let (hub, writer_task) = Hub::open(Settings {
        data_dir: config.data_dir.clone(),
        trusted,
        max_package_bytes: config.registry.max_package_bytes,
        public_url: public_url.clone(),
        download_ttl_secs: config.registry.download_token_ttl_secs,
        asset_rules: crate::assets::AssetRules {
            min_confidence: config.assets.min_confidence,
        },
    })
    .await?;
    if let Some(token) = auth::bootstrap_admin(&hub.pool, &config.auth.admin_token).await? {
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
    let endpoint = mqtt::start(
        hub.clone(),
        Listeners { plain, tls },
        config.mqtt.workers,
        config.mqtt.max_packet_bytes,
    )
    .map_err(StartError::Endpoint)?;
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = %http_addr,
        mqtt = %show(endpoint.plain),
        mqtts = %show(endpoint.tls),
        data_dir = %config.data_dir.display(),
        %public_url,
        "hub started"
    );
    // One line for scripts and tests to wait for and parse.
    println!(
        "edgemlops-hub ready http={http_addr} mqtt={} mqtts={} data_dir={}",
        show(endpoint.plain),
        show(endpoint.tls),
        config.data_dir.display()
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
    endpoint.stop(&hub).await;
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
    drop(hub);
    if tokio::time::timeout(grace, writer_task).await.is_err() {
        tracing::warn!("message writer still busy after the grace period");
    }
    tracing::info!("hub stopped");
    Ok(())
}
