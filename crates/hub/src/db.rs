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

#[cfg(test)]
mod tests {
    use super::*;

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
