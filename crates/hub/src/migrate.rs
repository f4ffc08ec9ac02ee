//! `edgemlops-hub migrate`: copies a hub's data to other engines, typically from the embedded
//! defaults (SQLite and a local directory) to PostgreSQL and an S3-compatible store, when a fleet
//! outgrows one machine.
//!
//! The order keeps every guarantee of the running hub: the source is opened without migrating
//! (it is only read, and must be at this hub's schema version), the target is migrated to the
//! current schema and must be empty (rows and blobs: a migration onto a hub that has data is
//! refused), blobs are copied first (each durable before any row names it), then every table is
//! copied in one transaction on the target (a failure leaves it empty, so the command can simply
//! run again), and finally rows and blobs are counted on both sides. The rows of the transient
//! tables (`hub_nodes`, `device_sessions`: which node holds which connection) are not copied.

use std::path::PathBuf;

use sqlx::any::AnyTypeInfoKind;
use sqlx::{Column as _, Row as _};

use crate::blobs::{BlobKind, Blobs, BlobsSettings};
use crate::config::{Config, Overrides};
use crate::db::{self, Db, DbOptions, Row, TABLES};
use crate::error::HubError;

/// Tables whose rows describe running nodes, not the hub's data.
const TRANSIENT: &[&str] = &["hub_nodes", "device_sessions"];

/// Rows per `INSERT` (SQLite allows 32766 parameters; the widest table has 19 columns).
const ROWS_PER_INSERT: usize = 200;

/// `edgemlops-hub migrate` options.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The source database (`sqlite://hub-data/hub.db`).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The target database (`postgres://hub@db.example/hub`); migrated, and it must be empty.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The source blob store (`file://hub-data/blobs`); with --to-blobs, blobs are copied too.
    #[arg(long, value_name = "URL", requires = "to_blobs")]
    pub from_blobs: Option<String>,
    /// The target blob store (`s3://bucket/prefix`); it must hold no packages.
    #[arg(long, value_name = "URL", requires = "from_blobs")]
    pub to_blobs: Option<String>,
    /// A hub configuration file whose `[blobs]` section gives the S3 endpoint, region and
    /// credentials of the `s3://` side(s).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What was copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows per table.
    pub tables: Vec<(String, i64)>,
    /// Blobs copied and their bytes.
    pub blobs: usize,
    /// Bytes of blobs copied.
    pub blob_bytes: u64,
}

/// Why a migration stopped (nothing was committed on the target unless it says so).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store could not be opened or used.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The source is not at this hub's schema version.
    #[error("the source database {url} {problem}")]
    SourceSchema {
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The target holds data.
    #[error(
        "refused: the target {what} is not empty ({detail}); migrate onto an empty database and blob store"
    )]
    TargetNotEmpty {
        /// Which target.
        what: String,
        /// What is in it.
        detail: String,
    },
    /// A database statement failed.
    #[error("{context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The copy does not count the same as the source.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

fn db_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::Db { context, source }
}

/// Runs `migrate` with the process's arguments: prints the report, or fails with one line.
pub fn run(args: &MigrateArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &Overrides::default())?;
    let blobs = |url: &str| {
        Blobs::open(&BlobsSettings {
            url: url.to_owned(),
            endpoint: config.blobs.endpoint.clone(),
            region: config.blobs.region.clone(),
            access_key_id: config.blobs.access_key_id.clone(),
            secret_access_key: config.blobs.secret_access_key.clone(),
        })
    };
    let pair = match (&args.from_blobs, &args.to_blobs) {
        (Some(f), Some(t)) => Some((blobs(f)?, blobs(t)?)),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tmp = tempfile::tempdir()?;
    let report = runtime.block_on(migrate(&args.from, &args.to, pair.as_ref(), tmp.path()))?;
    for (table, rows) in &report.tables {
        println!("{table:<22} {rows:>10} rows");
    }
    println!(
        "{} blobs ({} bytes) copied; every table and blob counted on both sides: the same",
        report.blobs, report.blob_bytes
    );
    Ok(())
}

/// Copies the hub in `from` (and the blobs of `blobs.0`) to `to` (and `blobs.1`).
pub async fn migrate(
    from: &str,
    to: &str,
    blobs: Option<&(Blobs, Blobs)>,
    tmp: &std::path::Path,
) -> Result<Report, MigrateError> {
    let source = Db::open_existing(from, DbOptions::default())
        .await
        .map_err(HubError::from)?;
    let version = source
        .schema_version()
        .await
        .map_err(db_err("reading the source's schema version"))?;
    if version != db::SCHEMA_VERSION {
        return Err(MigrateError::SourceSchema {
            url: source.shown_url(),
            problem: format!(
                "is at schema version {version}, this hub is at {}: start this edgemlops-hub on it once \
                 (it migrates at start), then migrate",
                db::SCHEMA_VERSION
            ),
        });
    }
    let target = Db::open(to, DbOptions::default()).await.map_err(HubError::from)?;
    for table in TABLES {
        let n = target
            .count(table)
            .await
            .map_err(db_err(format!("counting {table} in the target")))?;
        if n > 0 {
            return Err(MigrateError::TargetNotEmpty {
                what: format!("database {}", target.shown_url()),
                detail: format!("table {table} has {n} rows"),
            });
        }
    }
    let mut report = Report::default();
    if let Some((from_blobs, to_blobs)) = blobs {
        from_blobs.check().await?;
        to_blobs.check().await?;
        let existing = to_blobs.list(BlobKind::Package).await?;
        if !existing.is_empty() {
            return Err(MigrateError::TargetNotEmpty {
                what: format!("blob store {}", to_blobs.shown_url()),
                detail: format!("{} packages", existing.len()),
            });
        }
        for (key, size) in from_blobs.list(BlobKind::Package).await? {
            let copied = to_blobs.copy_from(from_blobs, &key, tmp).await?;
            if copied != size {
                return Err(MigrateError::Mismatch(format!(
                    "{key}: {size} bytes in the source, {copied} copied"
                )));
            }
            tracing::info!(key, size, "blob copied");
            report.blobs += 1;
            report.blob_bytes += size;
        }
    }
    let mut tx = target
        .begin_write()
        .await
        .map_err(db_err("starting the target transaction"))?;
    for table in TABLES.iter().filter(|t| !TRANSIENT.contains(t)) {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(source.pool())
            .await
            .map_err(db_err(format!("reading {table} from the source")))?;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            insert_rows(&mut tx, table, chunk).await?;
        }
        tracing::info!(table, rows = rows.len(), "table copied");
        report.tables.push(((*table).to_owned(), rows.len() as i64));
    }
    tx.commit()
        .await
        .map_err(db_err("committing the copy on the target"))?;
    verify(&source, &target, &report, blobs).await?;
    Ok(report)
}

/// A column value of any engine, to bind again.
#[derive(Debug)]
enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

fn value(row: &Row, i: usize, table: &str) -> Result<Value, MigrateError> {
    let col = &row.columns()[i];
    let err = |e: sqlx::Error| MigrateError::Db {
        context: format!("reading {table}.{}", col.name()),
        source: e,
    };
    Ok(match col.type_info().kind() {
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
            Value::Int(row.try_get(i).map_err(err)?)
        }
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => Value::Float(row.try_get(i).map_err(err)?),
        AnyTypeInfoKind::Blob => Value::Bytes(row.try_get(i).map_err(err)?),
        AnyTypeInfoKind::Text => Value::Text(row.try_get(i).map_err(err)?),
        // No declared type: the value decides.
        AnyTypeInfoKind::Null | AnyTypeInfoKind::Bool => {
            if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                Value::Int(v)
            } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                Value::Float(v)
            } else {
                Value::Text(row.try_get(i).map_err(err)?)
            }
        }
    })
}

async fn insert_rows(tx: &mut db::Tx, table: &str, rows: &[Row]) -> Result<(), MigrateError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let columns: Vec<String> = first.columns().iter().map(|c| c.name().to_owned()).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        db::value_rows(tx, rows.len(), columns.len())
    );
    let n = rows.len() * columns.len();
    let mut values = Vec::with_capacity(n);
    for row in rows {
        for i in 0..columns.len() {
            values.push(value(row, i, table)?);
        }
    }
    let mut q = sqlx::query(&sql);
    for v in values {
        q = match v {
            Value::Int(v) => q.bind(v),
            Value::Float(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
        };
    }
    q.execute(&mut **tx)
        .await
        .map_err(db_err(format!("writing {table} to the target")))?;
    Ok(())
}

async fn verify(
    source: &Db,
    target: &Db,
    report: &Report,
    blobs: Option<&(Blobs, Blobs)>,
) -> Result<(), MigrateError> {
    for (table, copied) in &report.tables {
        let s = source
            .count(table)
            .await
            .map_err(db_err(format!("counting {table} in the source")))?;
        let t = target
            .count(table)
            .await
            .map_err(db_err(format!("counting {table} in the target")))?;
        if s != t || t != *copied {
            return Err(MigrateError::Mismatch(format!(
                "table {table}: {s} rows in the source, {t} in the target"
            )));
        }
    }
    if let Some((from_blobs, to_blobs)) = blobs {
        let mut s = from_blobs.list(BlobKind::Package).await?;
        let mut t = to_blobs.list(BlobKind::Package).await?;
        s.sort();
        t.sort();
        if s != t {
            return Err(MigrateError::Mismatch(format!(
                "{} packages in the source blob store, {} in the target (or sizes differ)",
                s.len(),
                t.len()
            )));
        }
        let rows: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM blobs")
            .fetch_all(target.pool())
            .await
            .map_err(db_err("listing the target's package rows"))?;
        for sha in rows {
            if !to_blobs.exists(&sha).await? {
                return Err(MigrateError::Mismatch(format!(
                    "package {sha} has a row but no blob in the target"
                )));
            }
        }
    }
    Ok(())
}
