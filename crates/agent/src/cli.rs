//! The `edgemlops-agent` command line: `run`, `infer --mqtt`, `plugin onnx ...`,
//! `config-reference`.
//!
//! Invoked through a link named `onnx` (thin-edge's `/etc/tedge/sm-plugins/onnx`), the binary
//! behaves as `edgemlops-agent plugin onnx ...`; the config file then comes from
//! `EDGEMLOPS_AGENT_CONFIG` (default `/etc/edgemlops/agent.toml`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, Resolved};
use crate::logfile::{RotatingFile, log_path};
use crate::plugin::{parse_plugin_args, run_onnx_plugin};

const DEFAULT_CONFIG: &str = "/etc/edgemlops/agent.toml";

/// The EdgeMLOps edge agent.
#[derive(Debug, Parser)]
#[command(name = "edgemlops-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Connect to the hub, execute commands, serve inference.
    #[command(
        after_help = "Example:\n  edgemlops-agent run --config /etc/edgemlops/agent.toml\n\n\
        Prints `edgemlops-agent ready http=ADDR models=...` once serving. Keys: docs/agent-config.md."
    )]
    Run {
        /// The config file (default: $EDGEMLOPS_AGENT_CONFIG, else /etc/edgemlops/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// thin-edge mode: serve inference with the models `plugin onnx` installed, publishing to a
    /// thin-edge device's local broker (te/ topics, no hub).
    #[command(
        after_help = "Example:\n  edgemlops-agent infer --mqtt localhost:1883 --config /etc/edgemlops/agent.toml\n\n\
        Registers te/device/main/service/edgemlops-infer with status/health (last will: down), \
        serves the local HTTP API (inference.listen), publishes e/inspection and m/inference on the \
        service's topics, and picks up models installed or removed by `plugin onnx` within 2 s. \
        The config file is the one `plugin onnx` uses; of [hub] only the keep-alive and \
        reconnect delays apply."
    )]
    Infer {
        /// The device's local MQTT broker, `host:port` (plain MQTT, no authentication).
        #[arg(long)]
        mqtt: String,
        /// The config file (default: $EDGEMLOPS_AGENT_CONFIG, else /etc/edgemlops/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Act as a thin-edge sm-plugin for a software type (only `onnx`).
    #[command(after_help = "Examples (the exact command lines thin-edge uses):\n  \
        edgemlops-agent plugin onnx list\n  edgemlops-agent plugin onnx prepare\n  \
        edgemlops-agent plugin onnx install vqi --module-version 1.0.0 --file /tmp/vqi.emp\n  \
        edgemlops-agent plugin onnx remove vqi --module-version 1.0.0\n  \
        edgemlops-agent plugin onnx update-list   # exit 1: unsupported\n  edgemlops-agent plugin onnx finalize")]
    Plugin {
        /// The config file (default: $EDGEMLOPS_AGENT_CONFIG, else /etc/edgemlops/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Software type.
        software_type: String,
        /// The plugin command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the configuration reference (Markdown).
    ConfigReference,
}

/// Logging to stderr: level/targets from `EDGEMLOPS_LOG` (default `info`), JSON with
/// `EDGEMLOPS_LOG_FORMAT=json`; and, as text, to the agent's own log file (see [`crate::logfile`]).
fn init_tracing(log_file: Option<RotatingFile>) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = std::env::var("EDGEMLOPS_LOG").unwrap_or_else(|_| "info".into());
    let filter: Targets = level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let file = log_file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
    });
    let registry = tracing_subscriber::registry().with(filter).with(file);
    let stderr = std::io::stderr;
    let _ = if std::env::var("EDGEMLOPS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stderr))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(stderr),
            )
            .try_init()
    };
}

/// Loads the configuration and starts logging (also to the log file, if the budget allows one).
fn load_and_log(config: Option<PathBuf>) -> Result<Resolved> {
    let resolved = Config::load(&config_path(config))?.resolve()?;
    let max = resolved.config.log.max_bytes;
    let file = if max > 0 {
        let path = log_path(&resolved.data_dir);
        Some(
            RotatingFile::open(&path, max)
                .with_context(|| format!("cannot open the log file {}", path.display()))?,
        )
    } else {
        None
    };
    init_tracing(file);
    Ok(resolved)
}

/// Runs the hub mode or the thin-edge inference service (`broker`) to the end.
fn serve(resolved: Resolved, broker: Option<String>) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let slots = crate::engine::Slots::default();
    let installer = crate::agent::installer(&resolved, Some(slots.clone()))?;
    let result = match broker {
        None => runtime.block_on(crate::agent::run(resolved, installer.clone(), slots)),
        Some(b) => runtime.block_on(crate::agent::run_local(resolved, installer.clone(), slots, b)),
    };
    drop(runtime);
    drop(installer);
    result?;
    Ok(0)
}

/// `--config`, else `EDGEMLOPS_AGENT_CONFIG`, else the default path.
fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("EDGEMLOPS_AGENT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

fn plugin(config: &std::path::Path, software_type: &str, args: &[String]) -> Result<u8> {
    if software_type != proto::edgemlops::SOFTWARE_TYPE {
        anyhow::bail!("unknown software type '{software_type}' (this agent is the 'onnx' plugin)");
    }
    let command = parse_plugin_args(args).map_err(anyhow::Error::msg)?;
    let resolved = Config::load(config)?.resolve()?;
    let installer = crate::agent::installer(&resolved, None)?;
    run_onnx_plugin(&installer, &command).map_err(anyhow::Error::msg)
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Cmd::ConfigReference => {
            print!("{}", crate::config::reference());
            Ok(0)
        }
        Cmd::Plugin {
            config,
            software_type,
            args,
        } => plugin(&config_path(config), &software_type, &args),
        Cmd::Run { config } => serve(load_and_log(config)?, None),
        Cmd::Infer { mqtt, config } => {
            if mqtt
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                anyhow::bail!("--mqtt '{mqtt}' is not host:port");
            }
            serve(load_and_log(config)?, Some(mqtt))
        }
    }
}

/// The binary's entry point.
pub fn main_entry() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some(proto::edgemlops::SOFTWARE_TYPE) {
        // thin-edge runs /etc/tedge/sm-plugins/onnx <command> ...
        argv.splice(
            1..1,
            ["plugin".to_owned(), proto::edgemlops::SOFTWARE_TYPE.to_owned()],
        );
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("edgemlops-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
