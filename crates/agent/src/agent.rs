//! The composition function: builds every actor from the resolved configuration, wires their
//! channels, and runs until SIGINT/SIGTERM.
//!
//! Actors (each with private state and one message enum): the hub link ([`crate::link`],
//! [`LinkMsg`]), the operations actor ([`crate::commands`], [`OpsMsg`]), the results actor
//! ([`crate::reporter`], [`ReportMsg`]); the HTTP API is a set of handlers over [`ApiState`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use infer::Backend;
use infer::machine::MachineInfo;
use proto::edgemlops::{DeviceFacts, HardwareClass, RuntimeInfo, SCHEMA_VERSION};
use tokio::sync::{Semaphore, mpsc};

use crate::commands::{Operations, OpsMsg};
use crate::config::Resolved;
use crate::download::Downloader;
use crate::engine::Slots;
use crate::http::{ApiState, router};
use crate::install::Installer;
use crate::link::{LinkConfig, LinkMsg};
use crate::outbox::Outbox;
use crate::reporter::{ReportMsg, Reporter};
use crate::store::ModelStore;

/// The installer of a configuration (shared with the sm-plugin mode).
pub fn installer(r: &Resolved, slots: Option<Slots>) -> Result<Installer> {
    let backend: Arc<dyn Backend> = Arc::new(infer::OrtBackend::new()?);
    let c = &r.config;
    Ok(Installer {
        store: ModelStore::open(&r.data_dir)?,
        trusted: r.trusted.clone(),
        downloader: Downloader::new(c.download.clone())?,
        backend,
        slots,
        threads: c.inference.threads,
        latency_budget_ms: c.install.latency_budget_ms,
        max_attempts: c.install.max_attempts,
    })
}

/// The twin facts of this machine.
pub fn device_facts(runtime_version: String) -> DeviceFacts {
    let m = MachineInfo::detect();
    DeviceFacts {
        v: SCHEMA_VERSION,
        hardware_class: HardwareClass::detect(&m.arch, &m.features),
        arch: m.arch,
        cpu_model: Some(m.cpu_model),
        cpu_features: m.features,
        cores: m.cores as u32,
        memory_bytes: m.memory_bytes,
        runtime: RuntimeInfo {
            name: "onnxruntime".into(),
            version: runtime_version,
        },
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
    }
}

/// Runs the agent with an installer made by [`installer`] with `Some(slots)`. The caller keeps a
/// clone of the installer and builds it outside the async runtime: its blocking HTTP client owns a
/// runtime of its own, which must be neither created nor dropped inside an async context.
pub async fn run(r: Resolved, installer: Installer, slots: Slots) -> Result<()> {
    let c = r.config.clone();
    // Serve what is installed before anything else: a restarted device serves a verified model
    // (the committed version, or the previous one if it does not load) before it talks to anyone.
    let loader = installer.clone();
    let problems = tokio::task::spawn_blocking(move || loader.load_installed()).await??;
    for p in &problems {
        tracing::error!(problem = %p, "an installed model does not load");
    }
    let outbox = Outbox::open(&r.data_dir.join("outbox.db"), c.outbox.max_bytes).await?;

    let (ops_tx, ops_rx) = mpsc::channel::<OpsMsg>(64);
    let (link_tx, link_rx) = mpsc::channel::<LinkMsg>(16);
    let (report_tx, report_rx) = mpsc::channel::<ReportMsg>(1024);

    let operations = Operations::new(
        installer.clone(),
        outbox.clone(),
        r.plugins_dir.clone(),
        r.device.clone(),
    );
    let software_types = operations.software_types();
    let (host, port) = c.hub.mqtt.rsplit_once(':').context("hub.mqtt is host:port")?;
    let link_config = LinkConfig {
        device: r.device.clone(),
        host: host.to_owned(),
        port: port.parse().context("hub.mqtt port")?,
        token: c.hub.token.clone(),
        keep_alive: Duration::from_secs(c.hub.keep_alive_secs),
        reconnect_min: Duration::from_millis(c.hub.reconnect_min_ms),
        reconnect_max: Duration::from_millis(c.hub.reconnect_max_ms),
        window: c.outbox.window,
        facts: device_facts(installer.backend.version()),
        software_types,
    };
    let ops_task = tokio::spawn(operations.run(ops_rx));
    let link_task = tokio::spawn(crate::link::run(
        link_config,
        outbox.clone(),
        ops_tx.clone(),
        link_rx,
    ));
    let reporter = Reporter::new(r.device.clone(), outbox.clone());
    let report_task =
        tokio::spawn(reporter.run(report_rx, Duration::from_secs(c.inference.report_interval_secs)));
    ops_tx.send(OpsMsg::Resume).await.ok();

    let capacity = c.inference.workers + c.inference.queue;
    let state = ApiState {
        slots: slots.clone(),
        admission: Arc::new(Semaphore::new(capacity)),
        workers: Arc::new(Semaphore::new(c.inference.workers)),
        reports: report_tx.clone(),
        capacity,
    };
    if let Some(dir) = &r.watch_dir {
        tokio::spawn(crate::watch::run(dir.clone(), state.clone()));
    }
    let listener = tokio::net::TcpListener::bind(r.listen)
        .await
        .with_context(|| format!("binding {}", r.listen))?;
    let addr = listener.local_addr()?;
    let serving: Vec<String> = slots.all().iter().map(|m| m.model.to_string()).collect();
    tracing::info!(http = %addr, device = %r.device, hub = %c.hub.mqtt, models = ?serving,
        version = env!("CARGO_PKG_VERSION"), "edgemlops-agent started");
    println!("edgemlops-agent ready http={addr} models={}", serving.join(","));
    let server = axum::serve(listener, router(state, c.inference.max_upload_bytes))
        .with_graceful_shutdown(shutdown_signal());
    server.await.context("HTTP server")?;
    tracing::info!("stopping");
    let _ = link_tx.send(LinkMsg::Shutdown).await;
    drop(report_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), report_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), link_task).await;
    ops_task.abort();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
