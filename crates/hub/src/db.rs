//! The database: a SQLite file in WAL mode through sqlx, and the embedded migrations.
//!
//! Migrations are plain SQL files under `crates/hub/migrations/`, embedded at compile time and
//! applied in order at start (sqlx's migrator keeps the applied set and checksums in
//! `_sqlx_migrations`). They are written to run unchanged on PostgreSQL (see the header of
//! `0001_init.sql`), and the queries use `$n` placeholders, which both engines accept.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The pool type of the embedded default.
pub type Pool = sqlx::SqlitePool;

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
];

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Opening or configuring the file failed.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        /// The database file.
        path: String,
        /// sqlx's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
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

/// Opens (creating if needed) the database file and applies pending migrations.
///
/// WAL with `synchronous = NORMAL`: a committed transaction survives the process being killed
/// (it is in the WAL file, written before the commit returns); only an operating-system crash
/// can lose the last commits. That is the guarantee behind acknowledging a QoS 1 message after
/// its transaction commits.
pub async fn open(path: &Path) -> Result<Pool, DbError> {
    let shown = path.display().to_string();
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(|source| DbError::Open {
            path: shown.clone(),
            source,
        })?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Open {
            path: shown.clone(),
            source,
        })?;
    migrator()
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate { path: shown, source })?;
    Ok(pool)
}

/// Begins a transaction that writes. `BEGIN IMMEDIATE` takes SQLite's write lock at once,
/// waiting up to the busy timeout for another writer. A plain (deferred) `BEGIN` starts as a
/// reader, and when it reads first and writes later while another connection has written in
/// between, SQLite fails the write at once with `SQLITE_BUSY` instead of waiting: a read snapshot
/// cannot become a write transaction. Every transaction of the hub writes, so every one starts
/// here (a test keeps `.begin()` out of the hub's sources).
pub async fn begin_write(pool: &Pool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failure `begin_write` avoids, and that it avoids it: a transaction that reads, then
    /// writes after another connection committed a write.
    #[tokio::test]
    async fn a_writing_transaction_waits_for_other_writers_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(&dir.path().join("hub.db")).await.unwrap();
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
        let mut tx = pool.begin().await.unwrap();
        let _: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap();
        other_write("other-1").await.unwrap();
        let e = sqlx::query(insert).execute(&mut *tx).await.unwrap_err();
        assert!(
            e.to_string().contains("locked") || e.to_string().contains("busy"),
            "{e}"
        );
        tx.rollback().await.unwrap();

        // Immediate: the other writer waits until this transaction commits; both succeed.
        let mut tx = begin_write(&pool).await.unwrap();
        let other = tokio::spawn(other_write("other-2"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!other.is_finished(), "the other writer waits for the write lock");
        let _: i64 = sqlx::query_scalar(count).fetch_one(&mut *tx).await.unwrap();
        sqlx::query(insert).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        let n: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn every_transaction_of_the_hub_begins_as_a_writer() {
        fn scan(dir: &Path, offenders: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    scan(&p, offenders);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("db.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if text.contains(".begin()") {
                        offenders.push(p.display().to_string());
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut offenders);
        assert!(offenders.is_empty(), "use db::begin_write in {offenders:?}");
    }

    #[tokio::test]
    async fn migration_4_keeps_every_row_stored_before_it_and_dedups_only_device_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new().connect_with(options).await.unwrap();
        let mut old = migrator();
        old.migrations = Cow::Owned(old.migrations[..3].to_vec());
        old.run(&pool).await.unwrap();
        // Before version 4 nothing told a device's time from a reception time: rows that look
        // alike may be two real measurements, so the migration keeps them all.
        for received in [10, 11] {
            sqlx::query(
                "INSERT INTO measurements (device_id, topic_id, measurement_type, time, received_at, payload) \
                 VALUES ('d', 'device/main//', 'inference', 1000, $1, '{\"a\":1}')",
            )
            .bind(received)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let pool = open(&path).await.unwrap();
        let insert = |sent: Option<i64>, received: i64| {
            sqlx::query(
                "INSERT INTO measurements (device_id, topic_id, measurement_type, time, sent_time, received_at, payload) \
                 VALUES ('d', 'device/main//', 'inference', 1000, $1, $2, '{}') ON CONFLICT DO NOTHING",
            )
            .bind(sent)
            .bind(received)
        };
        for (sent, received) in [(Some(1000), 20), (Some(1000), 21), (None, 22), (None, 23)] {
            insert(sent, received).execute(&pool).await.unwrap();
        }
        let kept: Vec<i64> = sqlx::query_scalar("SELECT received_at FROM measurements ORDER BY received_at")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(
            kept,
            [10, 11, 20, 22, 23],
            "old rows and rows without a device time stay; a device time repeated is dropped"
        );
    }
}
