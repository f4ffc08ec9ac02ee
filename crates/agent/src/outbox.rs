//! The persistent outbox: everything the hub must receive (inspection events, measurements,
//! command states) is written here first and deleted only when the hub acknowledged it (QoS 1
//! PUBACK, sent by the hub after it stored the message).
//!
//! SQLite in WAL mode through sqlx (already in the workspace; the tidy test checks that the
//! PostgreSQL driver is not linked). Delivery is at least once, in insertion order; events carry an
//! idempotency key so the hub stores a resent event once. Disk budget: when the stored payloads
//! exceed `max_bytes`, the oldest messages of the lowest priority go first (measurements, then
//! events; command states are never dropped), and every drop is counted (`dropped()`, reported in
//! `m/outbox`).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Notify;

/// An outbox operation failed.
#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    path: String,
    #[source]
    source: sqlx::Error,
}

/// What may be dropped first when the disk budget is exceeded (lowest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Periodic measurements: the next report supersedes them.
    Measurement = 0,
    /// Inspection results.
    Event = 1,
    /// Command states: never dropped (the hub waits for them).
    Command = 2,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Insertion order.
    pub seq: i64,
    /// Full MQTT topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Publish retained.
    pub retain: bool,
}

/// The outbox. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Outbox {
    pool: SqlitePool,
    path: String,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

impl Outbox {
    /// Opens (creating) the outbox file.
    pub async fn open(path: &Path, max_bytes: u64) -> Result<Self, OutboxError> {
        let p = path.display().to_string();
        let err = |source| OutboxError {
            path: p.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{p}"))
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives the process being killed (it is in the WAL
            // before the call returns); only an OS crash may lose the last commits.
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(err)?;
        for sql in [
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, \
             payload BLOB NOT NULL, retain INTEGER NOT NULL, priority INTEGER NOT NULL, size INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        ] {
            sqlx::query(sql).execute(&pool).await.map_err(err)?;
        }
        let (bytes,): (i64,) = sqlx::query_as("SELECT COALESCE(SUM(size), 0) FROM outbox")
            .fetch_one(&pool)
            .await
            .map_err(err)?;
        let dropped: Option<(i64,)> = sqlx::query_as("SELECT value FROM counters WHERE name = 'dropped'")
            .fetch_optional(&pool)
            .await
            .map_err(err)?;
        Ok(Self {
            pool,
            path: p,
            max_bytes,
            bytes: Arc::new(AtomicU64::new(bytes as u64)),
            dropped: Arc::new(AtomicU64::new(dropped.map_or(0, |d| d.0 as u64))),
            notify: Arc::new(Notify::new()),
        })
    }

    fn err(&self, source: sqlx::Error) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a message; returns its sequence number. Drops older low-priority messages if the
    /// budget is exceeded.
    pub async fn push(
        &self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        priority: Priority,
    ) -> Result<i64, OutboxError> {
        let size = (topic.len() + payload.len()) as i64;
        // Counted before the row exists: the sender may deliver and ack it (subtracting its
        // size) before this call continues, and the count must never go below zero.
        self.bytes.fetch_add(size as u64, Ordering::SeqCst);
        let inserted: Result<(i64,), _> = sqlx::query_as(
            "INSERT INTO outbox (topic, payload, retain, priority, size) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        )
        .bind(topic)
        .bind(payload)
        .bind(retain)
        .bind(priority as i64)
        .bind(size)
        .fetch_one(&self.pool)
        .await;
        let (seq,) = inserted.map_err(|e| {
            self.bytes.fetch_sub(size as u64, Ordering::SeqCst);
            self.err(e)
        })?;
        if self.bytes.load(Ordering::SeqCst) > self.max_bytes {
            self.enforce_budget().await?;
        }
        self.notify.notify_one();
        Ok(seq)
    }

    async fn enforce_budget(&self) -> Result<(), OutboxError> {
        while self.bytes.load(Ordering::SeqCst) > self.max_bytes {
            // One statement, so a concurrent push or ack cannot remove the same row and
            // subtract its size twice.
            let victim: Option<(i64, i64)> = sqlx::query_as(
                "DELETE FROM outbox WHERE seq = \
                 (SELECT seq FROM outbox WHERE priority < $1 ORDER BY priority, seq LIMIT 1) \
                 RETURNING seq, size",
            )
            .bind(Priority::Command as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
            let Some((seq, size)) = victim else {
                break;
            };
            self.bytes.fetch_sub(size as u64, Ordering::SeqCst);
            // Incremented in the database, not written from memory: two concurrent drops cannot
            // store their totals out of order, so the stored value never goes backwards.
            let stored: Result<(i64,), _> = sqlx::query_as(
                "INSERT INTO counters (name, value) VALUES ('dropped', 1) \
                 ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
            )
            .fetch_one(&self.pool)
            .await;
            let n = match stored {
                Ok((total,)) => self
                    .dropped
                    .fetch_max(total as u64, Ordering::SeqCst)
                    .max(total as u64),
                Err(e) => {
                    self.dropped.fetch_add(1, Ordering::SeqCst);
                    return Err(self.err(e));
                }
            };
            tracing::warn!(
                seq,
                dropped_total = n,
                "outbox over budget: dropped the oldest low-priority message"
            );
        }
        Ok(())
    }

    /// Up to `limit` messages after `seq`, in order.
    pub async fn after(&self, seq: i64, limit: usize) -> Result<Vec<Message>, OutboxError> {
        let rows: Vec<(i64, String, Vec<u8>, bool)> = sqlx::query_as(
            "SELECT seq, topic, payload, retain FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(seq, topic, payload, retain)| Message {
                seq,
                topic,
                payload,
                retain,
            })
            .collect())
    }

    /// The hub has the message: forget it.
    pub async fn ack(&self, seq: i64) -> Result<(), OutboxError> {
        let size: Option<(i64,)> = sqlx::query_as("DELETE FROM outbox WHERE seq = $1 RETURNING size")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        if let Some((size,)) = size {
            self.bytes.fetch_sub(size as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Messages waiting.
    pub async fn len(&self) -> Result<u64, OutboxError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Whether nothing waits.
    pub async fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len().await? == 0)
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Messages dropped over the outbox's life.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Resolves when a message is pushed.
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_survive_reopen_and_leave_only_when_acked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let ob = Outbox::open(&path, 1 << 20).await.unwrap();
        for i in 0..3 {
            ob.push("t", format!("m{i}").as_bytes(), false, Priority::Event)
                .await
                .unwrap();
        }
        let all = ob.after(0, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        ob.ack(all[0].seq).await.unwrap();
        drop(ob);
        let ob = Outbox::open(&path, 1 << 20).await.unwrap();
        let left = ob.after(0, 10).await.unwrap();
        assert_eq!(
            left.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
            [b"m1".to_vec(), b"m2".to_vec()]
        );
        assert_eq!(ob.after(left[0].seq, 10).await.unwrap().len(), 1);
        assert_eq!(ob.bytes(), 2 * 3);
    }

    /// Pushes (some over budget) race with a sender that acks whatever it sees, as the hub link
    /// does: the byte count never wraps below zero and ends equal to what is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_push_ack_and_drops_keep_the_byte_count_exact() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&dir.path().join("o.db"), 2_000).await.unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let (ob, done) = (ob.clone(), done.clone());
            tokio::spawn(async move {
                let mut acked = 0;
                while !done.load(Ordering::SeqCst) {
                    for m in ob.after(0, 100).await.unwrap() {
                        ob.ack(m.seq).await.unwrap();
                        acked += 1;
                        assert!(ob.bytes() < 1 << 40, "byte count wrapped: {}", ob.bytes());
                    }
                    tokio::task::yield_now().await;
                }
                acked
            })
        };
        let pushers: Vec<_> = (0..3)
            .map(|p| {
                let ob = ob.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let payload = vec![b'x'; 20 + (p * 7 + i) % 40];
                        let prio = [Priority::Measurement, Priority::Event][i % 2];
                        ob.push("t", &payload, false, prio).await.unwrap();
                        if i % 50 == 0 {
                            // A burst over the budget, so drops race with acks too.
                            for _ in 0..40 {
                                ob.push("b", &[b'y'; 90], false, Priority::Measurement)
                                    .await
                                    .unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for p in pushers {
            p.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let acked = sender.await.unwrap();
        assert!(acked > 0);
        let stored: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM outbox")
            .fetch_one(&ob.pool)
            .await
            .unwrap();
        assert_eq!(ob.bytes(), stored as u64);
        assert!(ob.bytes() <= 2_000);
    }

    async fn stored_dropped(ob: &Outbox) -> i64 {
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'dropped'")
            .fetch_one(&ob.pool)
            .await
            .unwrap()
    }

    /// The stored count is incremented in the database: drops from two handles (each with its
    /// own count in memory) both count, and concurrent drops never store a smaller total.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_stored_dropped_count_only_goes_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = Outbox::open(&path, 50).await.unwrap();
        let b = Outbox::open(&path, 50).await.unwrap();
        a.push("m", &[b'x'; 59], false, Priority::Measurement)
            .await
            .unwrap();
        assert_eq!(stored_dropped(&a).await, 1);
        b.push("m", &[b'x'; 59], false, Priority::Measurement)
            .await
            .unwrap();
        assert_eq!(
            stored_dropped(&b).await,
            2,
            "the second handle's drop adds to the first's"
        );
        assert_eq!(b.dropped(), 2);

        let ob = Outbox::open(&dir.path().join("c.db"), 100).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let ob = ob.clone();
                tokio::spawn(async move {
                    for _ in 0..100 {
                        ob.push("m", &[b'x'; 59], false, Priority::Measurement)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let left = ob.len().await.unwrap() as i64;
        assert_eq!(stored_dropped(&ob).await, 400 - left);
        assert_eq!(ob.dropped() as i64, 400 - left);
    }

    #[tokio::test]
    async fn over_budget_the_oldest_lowest_priority_goes_first_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&dir.path().join("o.db"), 100).await.unwrap();
        let big = [b'x'; 39];
        ob.push("c", &big, true, Priority::Command).await.unwrap();
        ob.push("e", &big, false, Priority::Event).await.unwrap();
        ob.push("m", &big, false, Priority::Measurement).await.unwrap();
        // 3 x 40 = 120 > 100: the measurement goes, although it is the newest.
        let topics: Vec<String> = ob
            .after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["c", "e"]);
        ob.push("c", &big, true, Priority::Command).await.unwrap();
        ob.push("c", &big, true, Priority::Command).await.unwrap();
        let topics: Vec<String> = ob
            .after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["c", "c", "c"], "command states are never dropped");
        assert_eq!(ob.dropped(), 2);
    }
}
