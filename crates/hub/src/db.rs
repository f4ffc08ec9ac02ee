//! The database: the one module that names the drivers. Everything else speaks portable SQL
//! through [`Db`], [`Tx`] and [`Row`] (sqlx's `any` driver), whatever the engine:
//!
//! - `sqlite://PATH` (the embedded default, `sqlite://<data_dir>/hub.db`): WAL with
//!   `synchronous = NORMAL`; writing transactions begin `IMMEDIATE` (see [`Db::begin_write`]).
//! - `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`: the same migrations and queries; on top, the
//!   cross-node signals (`LISTEN`/`NOTIFY`, [`Listener`]) and the advisory lock of once-per-fleet
//!   work ([`Db::try_lead`]) that several hub nodes sharing the database need.
//!
//! Migrations are plain SQL files under `crates/hub/migrations/`, embedded at compile time and
//! applied in order at start (sqlx's migrator keeps the applied set and checksums in
//! `_sqlx_migrations`, and takes a lock, so nodes starting together migrate once). They are
//! portable (see the header of `0001_init.sql`): BIGINT milliseconds, TEXT JSON, BIGINT 0/1 flags,
//! application-chosen keys. Queries use `$n` placeholders, which both engines accept, and never
//! select a boolean expression (PostgreSQL would return `bool`, SQLite an integer): flags are
//! written `CASE WHEN … THEN 1 ELSE 0 END`.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, Executor};

/// A row of any engine.
pub type Row = sqlx::any::AnyRow;
/// A transaction of any engine.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;
/// The pool the stores query through.
pub type Pool = sqlx::AnyPool;

/// Migrations, in order: (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "event idempotency",
        include_str!("../migrations/0002_event_idempotency.sql"),
    ),
    (3, "assets", include_str!("../migrations/0003_assets.sql")),
    (
        4,
        "measurement dedup",
        include_str!("../migrations/0004_measurement_dedup.sql"),
    ),
    (5, "hub nodes", include_str!("../migrations/0005_nodes.sql")),
];

/// The schema version this hub runs on (the last migration).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The tables of the schema in an order where every table comes after those it references (what
/// `migrate` copies, and what a test keeps equal to the migrations).
pub const TABLES: &[&str] = &[
    "hub_settings",
    "users",
    "api_tokens",
    "devices",
    "entities",
    "entity_values",
    "measurements",
    "events",
    "alarms",
    "blobs",
    "models",
    "model_versions",
    "variants",
    "aliases",
    "alias_history",
    "commands",
    "command_transitions",
    "installed_software",
    "model_installs",
    "assets",
    "inspections",
    "asset_conditions",
    "hub_nodes",
    "device_sessions",
];

/// The engine behind a [`Db`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// SQLite, one file, one hub node.
    Sqlite,
    /// PostgreSQL, shared by any number of hub nodes.
    Postgres,
}

impl Engine {
    /// The engine a `database.url` names.
    pub fn of_url(url: &str) -> Result<Self, String> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported engine.
    #[error("database {url}: {reason}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connecting or configuring failed.
    #[error("cannot open database {url}: {source}")]
    Open {
        /// The URL, password hidden.
        url: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate database {url}: {source}")]
    Migrate {
        /// The URL, password hidden.
        url: String,
        /// sqlx's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct DbOptions {
    /// Largest number of open connections.
    pub max_connections: u32,
    /// How long a query waits for a connection (and a start for the database) before failing.
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// An open database: the pool, its engine, and its URL.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    engine: Engine,
    url: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("engine", &self.engine)
            .field("url", &redact(&self.url))
            .finish()
    }
}

/// A database URL with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The sqlx URL of a `sqlite://` URL: created when missing (`mode=rwc`) unless a mode is given.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The file of a `sqlite://` URL (`sqlite://hub-data/hub.db` → `hub-data/hub.db`).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

fn migrator(up_to: usize) -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS[..up_to]
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*d),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

impl Db {
    /// Connects to the database `url` names and applies pending migrations.
    ///
    /// SQLite: WAL with `synchronous = NORMAL`. A committed transaction survives the process being
    /// killed (it is in the WAL file, written before the commit returns); only an operating-system
    /// crash can lose the last commits. PostgreSQL: its own `synchronous_commit` (on by default:
    /// the WAL is flushed before the commit returns). Either is the guarantee behind acknowledging
    /// a QoS 1 message after its transaction commits.
    pub async fn open(url: &str, options: DbOptions) -> Result<Self, DbError> {
        Self::open_at(url, options, Some(MIGRATIONS.len())).await
    }

    /// Connects to an existing database without migrating it (a SQLite file must exist).
    pub async fn open_existing(url: &str, options: DbOptions) -> Result<Self, DbError> {
        Self::open_at(url, options, None).await
    }

    /// Connects, and applies the first `migrations` migrations (`None`: none, and a SQLite file
    /// is not created).
    async fn open_at(url: &str, options: DbOptions, migrations: Option<usize>) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let engine = Engine::of_url(url).map_err(|reason| DbError::Url {
            url: shown.clone(),
            reason,
        })?;
        let connect_url = match engine {
            Engine::Sqlite if migrations.is_none() => {
                if url.contains('?') {
                    format!("{url}&mode=rw")
                } else {
                    format!("{url}?mode=rw")
                }
            }
            Engine::Sqlite => {
                if let Some(dir) = sqlite_path(url).as_deref().and_then(std::path::Path::parent)
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                        url: shown.clone(),
                        source: sqlx::Error::Io(e),
                    })?;
                }
                sqlite_url(url)
            }
            Engine::Postgres => url.to_owned(),
        };
        let connect = AnyConnectOptions::from_str(&connect_url).map_err(|source| DbError::Open {
            url: shown.clone(),
            source,
        })?;
        let pool = AnyPoolOptions::new()
            .max_connections(match engine {
                // One writer at a time anyway; readers share the WAL.
                Engine::Sqlite => options.max_connections.min(4),
                Engine::Postgres => options.max_connections,
            })
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                            // Telemetry indexes grow with the fleet; SQLite's default 2 MiB page
                            // cache made every insert into them read pages again once the
                            // database outgrew it (measured: 20,000 stored/s fell to 11,000).
                            "PRAGMA cache_size = -65536",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(connect.clone())
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            // The pool only says that it timed out; one direct attempt says why (refused, bad
            // password, unknown database).
            Err(sqlx::Error::PoolTimedOut) => {
                let source = match sqlx::AnyConnection::connect_with(&connect).await {
                    Ok(_) => sqlx::Error::PoolTimedOut,
                    Err(e) => e,
                };
                return Err(DbError::Open { url: shown, source });
            }
            Err(source) => return Err(DbError::Open { url: shown, source }),
        };
        if let Some(n) = migrations {
            migrator(n).run(&pool).await.map_err(|source| DbError::Migrate {
                url: shown.clone(),
                source,
            })?;
        }
        Ok(Self {
            pool,
            engine,
            url: url.to_owned(),
        })
    }

    /// The last migration applied (0 for a database no hub has run on).
    pub async fn schema_version(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL with its password hidden.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
    }

    /// The pool, for the stores' queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Closes every connection (shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction that writes.
    ///
    /// SQLite: `BEGIN IMMEDIATE` takes the write lock at once, waiting up to the busy timeout for
    /// another writer. A plain (deferred) `BEGIN` starts as a reader, and when it reads first and
    /// writes later while another connection has written in between, SQLite fails the write at
    /// once with `SQLITE_BUSY` instead of waiting: a read snapshot cannot become a write
    /// transaction. PostgreSQL: `BEGIN` (read committed); writers that must not interleave take
    /// a row lock first by writing before they read. Every transaction of the hub writes, so every
    /// one starts here (a test keeps `.begin()` out of the hub's sources).
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => self.pool.begin_with("BEGIN").await,
        }
    }

    /// Rows in `table` (one of [`TABLES`]).
    pub async fn count(&self, table: &str) -> Result<i64, sqlx::Error> {
        if !TABLES.contains(&table) {
            return Err(sqlx::Error::Protocol(format!("unknown table {table}")));
        }
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
    }

    /// Sends a signal to every node listening on `channel` (PostgreSQL `NOTIFY`, delivered once
    /// the sending transaction commits); does nothing on SQLite, which has one node.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        if self.engine == Engine::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// A listener on `channel` (PostgreSQL only; `None` on SQLite).
    pub async fn listen(&self, channel: &str) -> Result<Option<Listener>, sqlx::Error> {
        if self.engine != Engine::Postgres {
            return Ok(None);
        }
        let mut inner = sqlx::postgres::PgListener::connect(&self.url).await?;
        inner.listen(channel).await?;
        Ok(Some(Listener { inner }))
    }

    /// Tries to take the fleet-wide lock `key`: on PostgreSQL a session advisory lock on a
    /// connection of its own, held until [`Leadership`] is dropped or that connection dies (a
    /// node killed releases it with its TCP connection); on SQLite, with one node, always granted.
    /// `Ok(None)`: another node holds it.
    pub async fn try_lead(&self, key: i64) -> Result<Option<Leadership>, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => Ok(Some(Leadership { conn: None })),
            Engine::Postgres => {
                let mut conn = sqlx::postgres::PgConnection::connect(&self.url).await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    Ok(Some(Leadership { conn: Some(conn) }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}

/// Notifications of one PostgreSQL channel.
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// What a [`Listener`] received.
#[derive(Debug)]
pub enum Heard {
    /// A notification's payload.
    Payload(String),
    /// The connection was lost and made again: notifications sent meanwhile are lost, so the
    /// caller catches up from the tables.
    Reconnected,
}

impl Listener {
    /// The next notification. An error means the database cannot be reached now; calling again
    /// tries to reconnect.
    pub async fn next(&mut self) -> Result<Heard, sqlx::Error> {
        Ok(match self.inner.try_recv().await? {
            Some(n) => Heard::Payload(n.payload().to_owned()),
            None => Heard::Reconnected,
        })
    }
}

/// The fleet-wide lock, held while this lives.
pub struct Leadership {
    conn: Option<sqlx::postgres::PgConnection>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("dedicated_connection", &self.conn.is_some())
            .finish()
    }
}

impl Leadership {
    /// Whether the lock is still held (its connection answers).
    pub async fn alive(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

/// The placeholders of a statement with `rows` rows of `columns` parameters each, for the engine
/// behind `tx`: `($1, $2), ($3, $4)` on PostgreSQL, `(?, ?), (?, ?)` on SQLite, where parameters
/// are bound in order. (SQLite finds the position of a named `$n` by scanning the statement's
/// parameter list, so binding n of them costs n² steps: measured at 16 % of the hub's CPU for
/// 1,792-parameter inserts.)
pub fn value_rows(tx: &Tx, rows: usize, columns: usize) -> String {
    let numbered = tx.backend_name() != "SQLite";
    let mut sql = String::with_capacity(rows * columns * 6);
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            if numbered {
                sql.push('$');
                sql.push_str(&n.to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Whether an error means the database cannot be reached (rather than a refused statement): the
/// API answers 503 for these.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| {
        // PostgreSQL: connection exceptions (08…), shutting down (57P01-57P03).
        c.starts_with("08") || c.starts_with("57P")
    }))
}

/// Whether a failed transaction may succeed when run again (PostgreSQL deadlock or
/// serialization failure between two nodes' writers).
pub fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "40P01" || c == "40001"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_db(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        Db::open(&url, DbOptions::default()).await.unwrap()
    }

    /// The failure `begin_write` avoids, and that it avoids it: a transaction that reads, then
    /// writes after another connection committed a write.
    #[tokio::test]
    async fn a_writing_transaction_waits_for_other_writers_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_db(&dir).await;
        let pool = db.pool().clone();
        let other_write = |id: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO devices (id, created_at, token_changed_at) VALUES ($1, 0, 0)")
                    .bind(id)
                    .execute(&pool)
                    .await
                    .map(|_| ())
            }
        };
        let count = "SELECT COUNT(*) FROM devices";
        let insert = "INSERT INTO devices (id, created_at, token_changed_at) VALUES ('tx-write', 0, 0)";

        // Deferred: the snapshot taken by the read is stale once the other write commits.
        let mut tx = pool.begin_with("BEGIN").await.unwrap();
        let _: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap();
        other_write("other-1").await.unwrap();
        let e = sqlx::query(insert).execute(&mut *tx).await.unwrap_err();
        assert!(
            e.to_string().contains("locked") || e.to_string().contains("busy"),
            "{e}"
        );
        tx.rollback().await.unwrap();

        // Immediate: the other writer waits until this transaction commits; both succeed.
        let mut tx = db.begin_write().await.unwrap();
        let other = tokio::spawn(other_write("other-2"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!other.is_finished(), "the other writer waits for the write lock");
        let _: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap();
        sqlx::query(insert).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        assert_eq!(db.count("devices").await.unwrap(), 3);
    }

    /// `(file, pattern)` for every source file of the hub but this one that contains a pattern.
    fn sources_containing(patterns: &[&str]) -> Vec<String> {
        fn scan(dir: &std::path::Path, patterns: &[&str], found: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    scan(&p, patterns, found);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("db.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for pattern in patterns.iter().filter(|pattern| text.contains(**pattern)) {
                        found.push(format!("{} contains {pattern}", p.display()));
                    }
                }
            }
        }
        let mut found = Vec::new();
        scan(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            patterns,
            &mut found,
        );
        found
    }

    #[test]
    fn every_transaction_of_the_hub_begins_as_a_writer() {
        let offenders = sources_containing(&[".begin()", ".begin_with("]);
        assert!(offenders.is_empty(), "use Db::begin_write: {offenders:?}");
    }

    #[test]
    fn only_this_module_names_a_database_driver() {
        let offenders = sources_containing(&[
            "sqlx::sqlite",
            "sqlx::postgres",
            "SqlitePool",
            "SqliteRow",
            "PgPool",
            "PgConnection",
            "sqlx::Any",
            "Transaction<'",
        ]);
        assert!(offenders.is_empty(), "{offenders:?}");
    }

    #[test]
    fn the_table_list_names_every_table_the_migrations_create() {
        let mut created = Vec::new();
        for (_, _, sql) in MIGRATIONS {
            for line in sql.lines() {
                if let Some(rest) = line.trim().strip_prefix("CREATE TABLE ") {
                    created.push(rest.split_whitespace().next().unwrap().to_owned());
                }
            }
        }
        let mut listed: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        created.sort();
        listed.sort();
        assert_eq!(created, listed);
    }

    #[test]
    fn passwords_stay_out_of_shown_urls() {
        assert_eq!(
            redact("postgres://hub:s3cret@db.example:5432/hub"),
            "postgres://hub:***@db.example:5432/hub"
        );
        assert_eq!(redact("postgres://hub@db/hub"), "postgres://hub@db/hub");
        assert_eq!(redact("sqlite://hub-data/hub.db"), "sqlite://hub-data/hub.db");
        assert_eq!(
            sqlite_path("sqlite://hub-data/hub.db?mode=rwc"),
            Some("hub-data/hub.db".into())
        );
        assert_eq!(sqlite_path("sqlite:///abs/hub.db"), Some("/abs/hub.db".into()));
        assert!(Engine::of_url("mysql://x").is_err());
    }

    #[tokio::test]
    async fn migration_4_keeps_every_row_stored_before_it_and_dedups_only_device_times() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let old = Db::open_at(&url, DbOptions::default(), Some(3)).await.unwrap();
        assert_eq!(old.schema_version().await.unwrap(), 3);
        // Before version 4 nothing told a device's time from a reception time: rows that look
        // alike may be two real measurements, so the migration keeps them all.
        for received in [10, 11] {
            sqlx::query(
                "INSERT INTO measurements (device_id, topic_id, measurement_type, time, received_at, payload) \
                 VALUES ('d', 'device/main//', 'inference', 1000, $1, '{\"a\":1}')",
            )
            .bind(received)
            .execute(old.pool())
            .await
            .unwrap();
        }
        old.close().await;
        let db = Db::open(&url, DbOptions::default()).await.unwrap();
        let insert = |sent: Option<i64>, received: i64| {
            sqlx::query(
                "INSERT INTO measurements (device_id, topic_id, measurement_type, time, sent_time, received_at, payload) \
                 VALUES ('d', 'device/main//', 'inference', 1000, $1, $2, '{}') ON CONFLICT DO NOTHING",
            )
            .bind(sent)
            .bind(received)
        };
        for (sent, received) in [(Some(1000), 20), (Some(1000), 21), (None, 22), (None, 23)] {
            insert(sent, received).execute(db.pool()).await.unwrap();
        }
        let kept: Vec<i64> = sqlx::query_scalar("SELECT received_at FROM measurements ORDER BY received_at")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(
            kept,
            [10, 11, 20, 22, 23],
            "old rows and rows without a device time stay; a device time repeated is dropped"
        );
    }
}
