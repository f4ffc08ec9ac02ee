//! What a device publishes, understood once and stored: te/ messages become rows.
//!
//! [`DeviceMessage::parse`] reads a publish (topic already checked by the gateway) into a typed
//! message, refusing malformed payloads; an inspection result and a software list are parsed
//! here, once, for the domains that store them. [`Writer`] stores messages: one task owns the
//! writes and commits them in batches (group commit), and each sender waits for the commit of its
//! batch. A QoS 1 publish is acknowledged only after that wait returns, so an acknowledged message
//! is in the database even if the hub is killed the next instant (see `db::Db::open` for the
//! durability of each engine). Each domain owns how its rows are written (`telemetry`,
//! `devices::store`, `commands::store`, `assets`); this module batches and dispatches.

use proto::command::{CommandOp, CommandStatus, GenericCommand, SoftwareList};
use proto::edgemlops::{INSPECTION_EVENT, InspectionEvent};
use proto::telemetry::{Alarm, EntityRegistration, Event, Health, Measurement, parse_twin};
use proto::topic::Channel;
use proto::{DeviceId, DeviceTopic, PayloadError, Retained};
use tokio::sync::{mpsc, oneshot};

use crate::assets::{self, AssetRules};
use crate::commands::store::{self as command_store, StateApplied};
use crate::db::{Db, Tx, is_retryable};
use crate::devices::store::{self as device_store, KIND_CMD, KIND_HEALTH, KIND_TWIN, SessionChange};
use crate::stdx::now_ms;
use crate::telemetry::{self, AlarmRaise, NewEvent, NewMeasurement};

/// A device publish, understood.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceMessage {
    /// `m/<type>`.
    Measurement {
        /// Entity topic id.
        topic_id: String,
        /// Measurement type.
        measurement_type: String,
        /// Measurement time, ms (the reception time when the device sent none).
        time: i64,
        /// Whether `time` is the device's own (only those measurements are deduplicated).
        device_time: bool,
        /// JSON as received.
        payload: String,
    },
    /// `e/<type>`.
    Event {
        /// Entity topic id.
        topic_id: String,
        /// Event type.
        event_type: String,
        /// Event time, ms.
        time: i64,
        /// Text.
        text: Option<String>,
        /// The sender's idempotency key (`idempotency_key`): a second event with the same key from
        /// the same device is not stored again.
        idempotency_key: Option<String>,
        /// An `e/inspection` result, for the asset register (`None` for other events, and for
        /// an inspection event that does not follow the schema: stored as a plain event).
        inspection: Option<Box<InspectionEvent>>,
        /// JSON as received.
        payload: String,
    },
    /// `a/<type>` with a payload.
    AlarmRaised {
        /// Entity topic id.
        topic_id: String,
        /// Alarm type.
        alarm_type: String,
        /// Severity.
        severity: String,
        /// Text.
        text: Option<String>,
        /// Raise time, ms.
        time: i64,
        /// JSON as received.
        payload: String,
    },
    /// `a/<type>` with an empty payload.
    AlarmCleared {
        /// Entity topic id.
        topic_id: String,
        /// Alarm type.
        alarm_type: String,
    },
    /// Entity registration (or deregistration with `None`).
    Registration {
        /// Entity topic id.
        topic_id: String,
        /// `@type` and the payload.
        registration: Option<(String, String)>,
    },
    /// A twin fragment, capability or health status (`None` = cleared).
    EntityValue {
        /// Entity topic id.
        topic_id: String,
        /// [`KIND_TWIN`], [`KIND_CMD`] or [`KIND_HEALTH`].
        kind: &'static str,
        /// Fragment or operation name (`health` for health).
        name: String,
        /// JSON value.
        value: Option<String>,
    },
    /// A command state reported by the device.
    CommandState {
        /// The operation.
        operation: CommandOp,
        /// The command id.
        cmd_id: String,
        /// The reported state.
        status: CommandStatus,
        /// Failure reason.
        reason: Option<String>,
        /// The installed software, in a successful `software_list`.
        software: Option<SoftwareList>,
        /// JSON as received.
        payload: String,
    },
    /// Valid but nothing the hub stores (metadata channels, a cleared command topic).
    Ignored,
}

/// The event field that carries the sender's idempotency key.
pub const EVENT_IDEMPOTENCY_KEY: &str = "idempotency_key";

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl DeviceMessage {
    /// Reads a publish on `topic`; `received` (ms) is the time when a payload has none.
    pub fn parse(topic: &DeviceTopic, payload: &[u8], received: i64) -> Result<Self, PayloadError> {
        let topic_id = topic.topic.entity().to_string();
        let time = |t: Option<proto::Timestamp>| t.map_or(received, proto::Timestamp::unix_millis);
        Ok(match topic.topic.channel() {
            Channel::Measurement { measurement_type } => {
                let m = Measurement::parse(payload)?;
                Self::Measurement {
                    topic_id,
                    measurement_type: measurement_type.clone(),
                    time: time(m.time),
                    device_time: m.time.is_some(),
                    payload: text(payload),
                }
            }
            Channel::Event { event_type } => {
                let e = Event::parse(payload)?;
                let inspection = if event_type == INSPECTION_EVENT {
                    match InspectionEvent::parse(payload) {
                        Ok(i) => Some(Box::new(i)),
                        Err(err) => {
                            tracing::warn!(device = %topic.device, error = %err, "inspection event not understood; stored as a plain event");
                            None
                        }
                    }
                } else {
                    None
                };
                Self::Event {
                    topic_id,
                    event_type: event_type.clone(),
                    time: time(e.time),
                    idempotency_key: e
                        .extras
                        .get(EVENT_IDEMPOTENCY_KEY)
                        .and_then(|k| k.as_str())
                        .map(str::to_owned),
                    text: e.text,
                    inspection,
                    payload: text(payload),
                }
            }
            Channel::Alarm { alarm_type } => match Alarm::parse(payload)? {
                Retained::Value(a) => Self::AlarmRaised {
                    topic_id,
                    alarm_type: alarm_type.clone(),
                    severity: a.severity.as_str().to_owned(),
                    text: a.text,
                    time: time(a.time),
                    payload: text(payload),
                },
                Retained::Cleared => Self::AlarmCleared {
                    topic_id,
                    alarm_type: alarm_type.clone(),
                },
            },
            Channel::EntityMetadata => Self::Registration {
                topic_id,
                registration: match EntityRegistration::parse(payload)? {
                    Retained::Value(r) => Some((r.entity_type.as_str().to_owned(), text(payload))),
                    Retained::Cleared => None,
                },
            },
            Channel::Twin { fragment } => Self::EntityValue {
                topic_id,
                kind: KIND_TWIN,
                name: fragment.clone(),
                value: parse_twin(payload)?.value().map(|_| text(payload)),
            },
            Channel::CommandMetadata { operation } => Self::EntityValue {
                topic_id,
                kind: KIND_CMD,
                name: operation.as_str().to_owned(),
                value: proto::command::CommandCapability::parse(payload)?
                    .value()
                    .map(|_| text(payload)),
            },
            Channel::Health => Self::EntityValue {
                topic_id,
                kind: KIND_HEALTH,
                name: "health".into(),
                value: Health::parse(payload)?.value().map(|_| text(payload)),
            },
            Channel::Command { operation, cmd_id } => match GenericCommand::parse(payload)? {
                Retained::Value(c) => Self::CommandState {
                    software: (*operation == CommandOp::SoftwareList
                        && c.status == CommandStatus::Successful)
                        .then(|| serde_json::from_slice::<SoftwareList>(payload).ok())
                        .flatten(),
                    operation: operation.clone(),
                    cmd_id: cmd_id.clone(),
                    status: c.status,
                    reason: c.reason,
                    payload: text(payload),
                },
                Retained::Cleared => Self::Ignored,
            },
            Channel::MeasurementMetadata { .. }
            | Channel::EventMetadata { .. }
            | Channel::AlarmMetadata { .. } => Self::Ignored,
        })
    }
}

/// What storing a message asks the connection to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing.
    Stored,
    /// The command reached a final state: clear its retained topic with an empty message.
    CommandFinished {
        /// The command id.
        cmd_id: String,
        /// The operation.
        operation: CommandOp,
    },
}

/// Why a message was not stored.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// The database refused the batch (or cannot be reached).
    #[error("storing device messages failed: {0}")]
    Database(String),
    /// The writer has stopped (shutdown).
    #[error("the hub is shutting down")]
    Stopped,
}

/// What the writer stores.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A device message.
    Message(DeviceMessage),
    /// A connection of the device started or ended (its session row, its `last_seen`).
    Session(SessionChange),
}

struct Job {
    device: DeviceId,
    write: Write,
    done: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Largest number of messages committed in one transaction.
const MAX_BATCH: usize = 512;

/// How often a batch that failed with a transient conflict (PostgreSQL deadlock or serialization
/// failure between nodes) is run again before its senders get the error.
const RETRIES: usize = 3;

/// The single writer of device messages.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer task on the current tokio runtime; it ends when every [`Writer`] clone
    /// is dropped and the queue is drained (the returned handle completes then).
    pub fn start(db: Db, rules: AssetRules) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        let task = tokio::spawn(run(db, rules, rx));
        (Self { tx }, task)
    }

    /// Stores a message and returns after its transaction committed.
    pub async fn store(&self, device: &DeviceId, message: DeviceMessage) -> Result<Outcome, WriteError> {
        self.write(device, Write::Message(message)).await
    }

    /// Stores `write` and returns after its transaction committed.
    pub async fn write(&self, device: &DeviceId, write: Write) -> Result<Outcome, WriteError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                device: device.clone(),
                write,
                done,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        wait.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run(db: Db, rules: AssetRules, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut result = write_batch(&db, &rules, &batch).await;
        for _ in 0..RETRIES {
            match &result {
                Err(e) if is_retryable(e) => {
                    tracing::info!(error = %e, "device message batch conflicted with another node's; running it again");
                    result = write_batch(&db, &rules, &batch).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "storing device messages failed");
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(WriteError::Database(e.to_string())));
                }
            }
        }
    }
}

async fn write_batch(db: &Db, rules: &AssetRules, batch: &[Job]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let now = now_ms();
    // Measurements, the bulk of the traffic, go in multi-row statements; the rest one by one, in
    // order. They touch different tables, so the order between the two does not matter.
    let measurements: Vec<NewMeasurement<'_>> = batch
        .iter()
        .filter_map(|job| match &job.write {
            Write::Message(DeviceMessage::Measurement {
                topic_id,
                measurement_type,
                time,
                device_time,
                payload,
            }) => Some(NewMeasurement {
                device: job.device.as_str(),
                topic_id,
                measurement_type,
                time: *time,
                sent_time: device_time.then_some(*time),
                payload,
            }),
            _ => None,
        })
        .collect();
    telemetry::write_measurements(&mut tx, &measurements, now).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        outcomes.push(apply(&mut tx, rules, &job.device, &job.write, now).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply(
    tx: &mut Tx,
    rules: &AssetRules,
    device: &DeviceId,
    write: &Write,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    let dev = device.as_str();
    let message = match write {
        Write::Session(change) => {
            device_store::write_session(tx, dev, change, now).await?;
            return Ok(Outcome::Stored);
        }
        Write::Message(m) => m,
    };
    match message {
        // Written for the whole batch by `write_batch`.
        DeviceMessage::Measurement { .. } | DeviceMessage::Ignored => {}
        DeviceMessage::Event {
            topic_id,
            event_type,
            time,
            text,
            idempotency_key,
            inspection,
            payload,
        } => {
            let stored = telemetry::write_event(
                tx,
                &NewEvent {
                    device: dev,
                    topic_id,
                    event_type,
                    time: *time,
                    text: text.as_deref(),
                    idempotency_key: idempotency_key.as_deref(),
                    payload,
                },
                now,
            )
            .await?;
            // A repeat changes nothing; a new inspection result is applied to its asset.
            if stored && let Some(event) = inspection {
                assets::record_inspection(tx, rules, dev, topic_id, event, payload, now).await?;
            }
        }
        DeviceMessage::AlarmRaised {
            topic_id,
            alarm_type,
            severity,
            text,
            time,
            payload,
        } => {
            let raise = AlarmRaise {
                severity,
                text: text.as_deref(),
                time: *time,
                payload,
            };
            telemetry::write_alarm(tx, dev, topic_id, alarm_type, Some(&raise), now).await?;
        }
        DeviceMessage::AlarmCleared { topic_id, alarm_type } => {
            telemetry::write_alarm(tx, dev, topic_id, alarm_type, None, now).await?;
        }
        DeviceMessage::Registration {
            topic_id,
            registration,
        } => {
            let registration = registration.as_ref().map(|(t, p)| (t.as_str(), p.as_str()));
            device_store::write_entity(tx, dev, topic_id, registration, now).await?;
        }
        DeviceMessage::EntityValue {
            topic_id,
            kind,
            name,
            value,
        } => {
            device_store::write_entity_value(tx, dev, topic_id, kind, name, value.as_deref(), now).await?;
        }
        DeviceMessage::CommandState {
            operation,
            cmd_id,
            status,
            reason,
            software,
            payload,
        } => {
            let applied = command_store::apply_state(
                tx,
                device,
                operation,
                cmd_id,
                status,
                reason.as_deref(),
                payload,
                software.as_ref(),
                now,
            )
            .await?;
            if applied == StateApplied::Finished {
                return Ok(Outcome::CommandFinished {
                    cmd_id: cmd_id.clone(),
                    operation: operation.clone(),
                });
            }
        }
    }
    Ok(Outcome::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(topic: &str, payload: &str) -> Result<DeviceMessage, PayloadError> {
        DeviceMessage::parse(&DeviceTopic::parse(topic).unwrap(), payload.as_bytes(), 42)
    }

    #[test]
    fn te_messages_are_understood() {
        let p = "devices/d/te/device/main///";
        assert_eq!(
            parse(&format!("{p}m/env"), r#"{"temp": 21.5}"#).unwrap(),
            DeviceMessage::Measurement {
                topic_id: "device/main//".into(),
                measurement_type: "env".into(),
                time: 42,
                device_time: false,
                payload: r#"{"temp": 21.5}"#.into(),
            }
        );
        let m = parse(
            &format!("{p}m/env"),
            r#"{"time": "1970-01-01T00:00:01Z", "t": 1}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            DeviceMessage::Measurement {
                time: 1000,
                device_time: true,
                ..
            }
        ));
        assert!(parse(&format!("{p}m/env"), r#"{"temp": "hot"}"#).is_err());
        assert!(parse(&format!("{p}m/env"), "not json").is_err());
        assert!(matches!(
            parse(&format!("{p}a/overheat"), "").unwrap(),
            DeviceMessage::AlarmCleared { .. }
        ));
        assert!(matches!(
            parse(&format!("{p}a/overheat"), r#"{"text":"hot","severity":"major"}"#).unwrap(),
            DeviceMessage::AlarmRaised { ref severity, .. } if severity == "major"
        ));
        assert!(matches!(
            parse(
                &format!("{p}cmd/software_update/c-1"),
                r#"{"status":"executing"}"#
            )
            .unwrap(),
            DeviceMessage::CommandState {
                status: CommandStatus::Executing,
                ..
            }
        ));
        assert_eq!(
            parse(&format!("{p}cmd/software_update/c-1"), "").unwrap(),
            DeviceMessage::Ignored
        );
        assert!(matches!(
            parse("devices/d/te/device/child1//", r#"{"@type":"child-device"}"#).unwrap(),
            DeviceMessage::Registration { registration: Some((ref t, _)), .. } if t == "child-device"
        ));
        assert!(matches!(
            parse(&format!("{p}twin/edgemlops"), "").unwrap(),
            DeviceMessage::EntityValue {
                value: None,
                kind: KIND_TWIN,
                ..
            }
        ));
    }

    async fn temp_db(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        Db::open(&url, crate::db::DbOptions::default()).await.unwrap()
    }

    #[tokio::test]
    async fn a_repeated_measurement_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_db(&dir).await;
        let (writer, _task) = Writer::start(db.clone(), AssetRules::default());
        let device = DeviceId::new("d").unwrap();
        let other = DeviceId::new("e").unwrap();
        let main = "devices/d/te/device/main///m/inference";
        let service = "devices/d/te/device/main/service/edgemlops-infer/m/inference";
        let at = |s: u32, v: u32| format!(r#"{{"time":"2026-12-04T10:00:0{s}Z","count":{v}}}"#);
        for (dev, topic, payload) in [
            (&device, main, at(1, 1)),
            (&device, main, at(1, 1)),
            // Same identity, other value: the first copy stays.
            (&device, main, at(1, 9)),
            (&device, main, at(2, 2)),
            (&device, service, at(1, 3)),
            (&device, &main.replace("m/inference", "m/outbox"), at(1, 4)),
            (&other, main, at(1, 5)),
            // No time of its own: stored with its reception time (42 in `parse`), never a repeat.
            (&device, main, r#"{"count":6}"#.to_owned()),
            (&device, main, r#"{"count":6}"#.to_owned()),
        ] {
            writer.store(dev, parse(topic, &payload).unwrap()).await.unwrap();
        }
        let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT device_id, topic_id, measurement_type, time, payload FROM measurements ORDER BY rowid",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        let counts: Vec<(&str, &str, &str, String)> = rows
            .iter()
            .map(|(d, t, m, time, p)| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                (
                    d.as_str(),
                    t.as_str(),
                    m.as_str(),
                    format!("{time}:{}", v["count"]),
                )
            })
            .collect();
        let t1 = 1_796_378_401_000i64;
        let t2 = t1 + 1000;
        assert_eq!(
            counts,
            [
                ("d", "device/main//", "inference", format!("{t1}:1")),
                ("d", "device/main//", "inference", format!("{t2}:2")),
                (
                    "d",
                    "device/main/service/edgemlops-infer",
                    "inference",
                    format!("{t1}:3")
                ),
                ("d", "device/main//", "outbox", format!("{t1}:4")),
                ("e", "device/main//", "inference", format!("{t1}:5")),
                ("d", "device/main//", "inference", "42:6".to_owned()),
                ("d", "device/main//", "inference", "42:6".to_owned()),
            ],
            "(device, entity, type, own time) identifies a measurement; the first copy is kept"
        );
    }

    #[tokio::test]
    async fn a_repeated_event_with_the_same_idempotency_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_db(&dir).await;
        let (writer, _task) = Writer::start(db.clone(), AssetRules::default());
        let device = DeviceId::new("d").unwrap();
        let other = DeviceId::new("e").unwrap();
        let topic = "devices/d/te/device/main///e/maintenance";
        let keyed = r#"{"text":"t","idempotency_key":"k-1"}"#;
        let first = parse(topic, keyed).unwrap();
        assert!(
            matches!(&first, DeviceMessage::Event { idempotency_key: Some(k), .. } if k == "k-1"),
            "{first:?}"
        );
        for (dev, payload) in [
            (&device, keyed),
            (&device, keyed),
            (&device, r#"{"text":"t","idempotency_key":"k-2"}"#),
            (&other, keyed),
            (&device, r#"{"text":"no key"}"#),
            (&device, r#"{"text":"no key"}"#),
        ] {
            writer.store(dev, parse(topic, payload).unwrap()).await.unwrap();
        }
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT device_id, idempotency_key FROM events ORDER BY rowid")
                .fetch_all(db.pool())
                .await
                .unwrap();
        let expected = [
            ("d", Some("k-1")),
            ("d", Some("k-2")),
            ("e", Some("k-1")),
            ("d", None),
            ("d", None),
        ];
        let rows: Vec<(&str, Option<&str>)> = rows.iter().map(|(d, k)| (d.as_str(), k.as_deref())).collect();
        assert_eq!(
            rows, expected,
            "a key repeats only across devices; events without a key are all kept"
        );
    }
}
