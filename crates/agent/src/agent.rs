//! The composition function: builds every actor from the resolved configuration, wires their
//! channels, and runs until SIGINT/SIGTERM.
//!
//! Actors (each with private state and one message enum): the hub link ([`crate::link`],
//! [`LinkMsg`]), the operations actor ([`crate::commands`], [`OpsMsg`]), the results actor
//! ([`crate::reporter`], [`ReportMsg`]); the HTTP API is a set of handlers over [`ApiState`].
//!
//! [`run`] is the hub mode (`edgemlops-agent run`). [`run_local`] is thin-edge mode's inference
//! service (`edgemlops-agent infer --mqtt`): the same results actor, outbox, HTTP API and watched
//! folder, with the link connected to the device's local broker, and no operations actor
//! (thin-edge's agent runs `software_update` through `edgemlops-agent plugin onnx`, in another
//! process, on the same model store). The service follows that store by polling it every
//! [`STORE_POLL`] ([`Installer::sync_installed`]): a new active version is loaded and swapped in, a
//! removed model stops serving. Polling needs no coordination with thin-edge and survives any
//! way the store changes (plugin, restart, manual rollback).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Period of the thin-edge mode's model store poll.
pub const STORE_POLL: Duration = Duration::from_secs(2);

/// Runs the agent with an installer made by [`installer`] with `Some(slots)`. The caller keeps a
/// clone of the installer and builds it outside the async runtime: its blocking HTTP client owns a
/// runtime of its own, which must be neither created nor dropped inside an async context.
pub async fn run(r: Resolved, installer: Installer, slots: Slots) -> Result<()> {
    serve(r, installer, slots, None).await
}

/// Runs thin-edge mode's inference service against the local broker `broker` (`host:port`);
/// the installer as for [`run`].
pub async fn run_local(r: Resolved, installer: Installer, slots: Slots, broker: String) -> Result<()> {
    serve(r, installer, slots, Some(broker)).await
}

/// Keeps the slots in step with the model store until `stop` (a thread: the installer's blocking
/// parts stay out of the async runtime).
fn follow_store(installer: &Installer, stop: &AtomicBool) {
    let mut failed = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(STORE_POLL);
        match installer.sync_installed(&mut failed) {
            Ok(changes) if !changes.is_empty() => {
                tracing::info!(
                    ?changes,
                    "the model store changed: now serving the active versions"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the model store"),
        }
    }
}

async fn serve(r: Resolved, installer: Installer, slots: Slots, broker: Option<String>) -> Result<()> {
    let c = r.config.clone();
    let local = broker.is_some();
    // Serve what is installed before anything else: a restarted device serves a verified model
    // (the committed version, or the previous one if it does not load) before it talks to anyone.
    let loader = installer.clone();
    let problems = tokio::task::spawn_blocking(move || loader.load_installed()).await??;
    for p in &problems {
        tracing::error!(problem = %p, "an installed model does not load");
    }
    // A separate outbox per destination: the hub's undelivered messages never go to a local
    // broker, nor the other way round.
    let outbox_file = if local { "outbox-local.db" } else { "outbox.db" };
    let outbox = Outbox::open(&r.data_dir.join(outbox_file), c.outbox.max_bytes).await?;

    let (ops_tx, ops_rx) = mpsc::channel::<OpsMsg>(64);
    let (link_tx, link_rx) = mpsc::channel::<LinkMsg>(16);
    let (report_tx, report_rx) = mpsc::channel::<ReportMsg>(1024);

    let log_file = (c.log.max_bytes > 0).then(|| crate::logfile::log_path(&r.data_dir));
    let operations = Operations::new(
        installer.clone(),
        outbox.clone(),
        r.plugins_dir.clone(),
        log_file,
        r.device.clone(),
    );
    let software_types = operations.software_types();
    let endpoint = broker.unwrap_or_else(|| c.hub.mqtt.clone());
    let (host, port) = endpoint
        .rsplit_once(':')
        .with_context(|| format!("the MQTT address '{endpoint}' is not host:port"))?;
    let link_config = LinkConfig {
        device: r.device.clone(),
        host: host.to_owned(),
        port: port
            .parse()
            .with_context(|| format!("the MQTT address '{endpoint}' has no valid port"))?,
        token: c.hub.token.clone(),
        keep_alive: Duration::from_secs(c.hub.keep_alive_secs),
        reconnect_min: Duration::from_millis(c.hub.reconnect_min_ms),
        reconnect_max: Duration::from_millis(c.hub.reconnect_max_ms),
        window: c.outbox.window,
        facts: device_facts(installer.backend.version()),
        software_types,
        local,
    };
    let stop_follower = Arc::new(AtomicBool::new(false));
    let ops_task = if local {
        // No operations actor: the link of a local broker subscribes to no commands.
        drop(ops_rx);
        drop(operations);
        let (follower, stop) = (installer.clone(), stop_follower.clone());
        std::thread::Builder::new()
            .name("store-follower".into())
            .spawn(move || follow_store(&follower, &stop))
            .context("starting the model store follower")?;
        None
    } else {
        Some(tokio::spawn(operations.run(ops_rx)))
    };
    let link_task = tokio::spawn(crate::link::run(
        link_config,
        outbox.clone(),
        ops_tx.clone(),
        link_rx,
    ));
    let reporter = Reporter::new(r.device.clone(), outbox.clone());
    let report_task =
        tokio::spawn(reporter.run(report_rx, Duration::from_secs(c.inference.report_interval_secs)));
    if !local {
        ops_tx.send(OpsMsg::Resume).await.ok();
    }

    let capacity = c.inference.workers + c.inference.queue;
    let state = ApiState {
        slots: slots.clone(),
        admission: Arc::new(Semaphore::new(capacity)),
        workers: Arc::new(Semaphore::new(c.inference.workers)),
        reports: report_tx.clone(),
        capacity,
    };
    let (stop_watch, watch_stopped) = tokio::sync::watch::channel(false);
    let watch_task = r
        .watch_dir
        .as_ref()
        .map(|dir| tokio::spawn(crate::watch::run(dir.clone(), state.clone(), watch_stopped)));
    let listener = tokio::net::TcpListener::bind(r.listen)
        .await
        .with_context(|| format!("binding {}", r.listen))?;
    let addr = listener.local_addr()?;
    let serving: Vec<String> = slots.all().iter().map(|m| m.model.to_string()).collect();
    tracing::info!(http = %addr, device = %r.device, mqtt = %endpoint, local, models = ?serving,
        version = env!("CARGO_PKG_VERSION"), "edgemlops-agent started");
    println!("edgemlops-agent ready http={addr} models={}", serving.join(","));
    let server = axum::serve(listener, router(state, c.inference.max_upload_bytes))
        .with_graceful_shutdown(shutdown_signal());
    server.await.context("HTTP server")?;
    tracing::info!("stopping");
    stop_follower.store(true, Ordering::SeqCst);
    // The watched folder's task holds a sender of the results actor: it stops first (after the
    // file in progress), so that dropping the last sender ends the results actor, whose final
    // flush queues the last `m/inference` in the outbox before the link goes.
    let _ = stop_watch.send(true);
    if let Some(mut t) = watch_task
        && tokio::time::timeout(Duration::from_secs(5), &mut t)
            .await
            .is_err()
    {
        t.abort();
        let _ = t.await;
    }
    drop(report_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), report_task).await;
    let _ = link_tx.send(LinkMsg::Shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), link_task).await;
    if let Some(t) = ops_task {
        t.abort();
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
