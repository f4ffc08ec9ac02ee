//! The `edgemlops-hub` command line: `serve`, `migrate` and `config-reference`. Errors print as
//! one line (`edgemlops-hub: error: ...`) with exit code 1; usage errors exit with 2 (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogConfig, Overrides, reference_markdown};

/// The EdgeMLOps hub.
#[derive(Debug, Parser)]
#[command(
    name = "edgemlops-hub",
    version,
    about = "EdgeMLOps hub: REST API, device MQTT endpoint, model registry, commands, telemetry",
    after_help = "Examples:\n  edgemlops-hub serve --data-dir ./hub-data\n  \
                  edgemlops-hub serve --config hub.toml --http 0.0.0.0:8080 --mqtt 0.0.0.0:1883\n  \
                  edgemlops-hub migrate --from sqlite://hub-data/hub.db --to postgres://hub@db/hub \\\n      \
                  --from-blobs file://hub-data/blobs --to-blobs s3://models/hub --config hub.toml\n  \
                  edgemlops-hub config-reference > docs/hub-config.md"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub until SIGINT or SIGTERM.
    #[command(
        after_help = "Prints 'edgemlops-hub ready http=ADDR mqtt=ADDR ...' on stdout once listening; \
                            at the first start also the admin token (once). Logs go to stderr \
                            (EDGEMLOPS_LOG=debug, EDGEMLOPS_LOG_FORMAT=json)."
    )]
    Serve(ServeArgs),
    /// Copy a hub's data (rows and blobs) to other engines, e.g. SQLite + files to PostgreSQL + S3.
    #[command(
        after_help = "The target database is migrated to the current schema and must be empty \
                            (a migration onto a hub that has data is refused); the source is only read. \
                            Every table and blob is copied, then counted on both sides. Run it while the \
                            source hub is stopped. S3 endpoint and credentials come from the [blobs] \
                            section of --config (or AWS_* environment variables)."
    )]
    Migrate(crate::migrate::MigrateArgs),
    /// Print the reference of every configuration key (Markdown).
    ConfigReference,
}

/// `serve` options; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (every key has a default; see `config-reference`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (database, blobs).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address (HOST:PORT, port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// MQTT device endpoint address (HOST:PORT, port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub mqtt: Option<String>,
    /// API token of the admin user.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Database URL (`sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`).
    #[arg(
        long,
        value_name = "URL",
        env = "EDGEMLOPS_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

fn init_logging(log: &LogConfig) {
    let level = std::env::var("EDGEMLOPS_LOG").unwrap_or_else(|_| log.level.clone());
    let format = std::env::var("EDGEMLOPS_LOG_FORMAT").unwrap_or_else(|_| log.format.clone());
    let filter: Targets = level.parse().unwrap_or_else(|e| {
        eprintln!("edgemlops-hub: warning: log filter '{level}' is invalid ({e}); using info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let registry = tracing_subscriber::registry().with(filter);
    let stderr = std::io::stderr;
    let result = if format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stderr))
            .try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(stderr),
            )
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("edgemlops-hub: warning: logging not set up: {e}");
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data_dir: args.data_dir,
        http: args.http,
        mqtt: args.mqtt,
        admin_token: args.admin_token,
        database_url: args.database_url,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    init_logging(&config.log);
    let resolved = config.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hub")
        .build()?;
    runtime.block_on(crate::server::serve(resolved))?;
    Ok(())
}

/// Parses the process arguments, runs the command, prints errors, returns the exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => {
            init_logging(&LogConfig::default());
            crate::migrate::run(&args)
        }
        Command::ConfigReference => {
            print!("{}", reference_markdown());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemlops-hub: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once (most of the hub's errors show their
/// source in their own message already).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_line_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:80: {0}")]
        struct Bind(#[source] std::io::Error);
        let e = anyhow::Error::new(Bind(std::io::Error::other("address in use")));
        assert_eq!(
            super::one_line(&e),
            "cannot listen on 127.0.0.1:80: address in use"
        );
        let e = anyhow::Error::new(std::io::Error::other("disk\nfull")).context("writing hub.db");
        assert_eq!(super::one_line(&e), "writing hub.db: disk full");
    }
}
