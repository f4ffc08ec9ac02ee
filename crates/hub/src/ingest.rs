//! What a device publishes, understood and stored: te/ messages become rows.
//!
//! [`DeviceMessage::parse`] reads a publish (topic already checked by the gateway) into a typed
//! message, refusing malformed payloads. [`Writer`] stores messages: one task owns the writes and
//! commits them in batches (group commit), and each sender waits for the commit of its batch. A
//! QoS 1 publish is acknowledged only after that wait returns, so an acknowledged message is in
//! the database even if the hub is killed the next instant (see `db::open` for the durability).

use proto::command::{CommandOp, CommandStatus, GenericCommand, SoftwareList, SoftwareUpdate, StatusChange};
use proto::telemetry::{Alarm, EntityRegistration, Event, Health, Measurement, parse_twin};
use proto::topic::Channel;
use proto::{DeviceId, DeviceTopic, PayloadError, Retained};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::assets::AssetRules;
use crate::db::Pool;
use crate::stdx::{new_id, now_ms};

/// Kind of a retained per-entity value in `entity_values`.
pub const KIND_TWIN: &str = "twin";
/// Capability (`cmd/<op>`).
pub const KIND_CMD: &str = "cmd";
/// Health (`status/health`).
pub const KIND_HEALTH: &str = "health";

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
    /// The database refused the batch.
    #[error("storing device messages failed: {0}")]
    Database(String),
    /// The writer has stopped (shutdown).
    #[error("the hub is shutting down")]
    Stopped,
}

struct Job {
    device: DeviceId,
    message: DeviceMessage,
    done: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Largest number of messages committed in one transaction.
const MAX_BATCH: usize = 512;

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
    pub fn start(pool: Pool) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start_with(pool, AssetRules::default())
    }

    /// [`Writer::start`] with the asset register's update rule settings.
    pub fn start_with(pool: Pool, rules: AssetRules) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        let task = tokio::spawn(run(pool, rules, rx));
        (Self { tx }, task)
    }

    /// Stores a message and returns after its transaction committed.
    pub async fn store(&self, device: &DeviceId, message: DeviceMessage) -> Result<Outcome, WriteError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                device: device.clone(),
                message,
                done,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        wait.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run(pool: Pool, rules: AssetRules, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = write_batch(&pool, &rules, &batch).await;
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

async fn write_batch(pool: &Pool, rules: &AssetRules, batch: &[Job]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut tx = crate::db::begin_write(pool).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let now = now_ms();
    for job in batch {
        outcomes.push(apply(&mut tx, rules, &job.device, &job.message, now).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply(
    tx: &mut Transaction<'_, Sqlite>,
    rules: &AssetRules,
    device: &DeviceId,
    message: &DeviceMessage,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    let dev = device.as_str();
    match message {
        DeviceMessage::Measurement {
            topic_id,
            measurement_type,
            time,
            device_time,
            payload,
        } => {
            // A measurement that carries its own `time` is identified by (device, entity, type,
            // that time): `sent_time` is unique per device, entity and type (migration 0004), so a
            // copy sent again after a lost acknowledgement is dropped here but still acknowledged.
            // Without a `time` it gets its reception time and a NULL `sent_time`, which never
            // conflicts: such measurements cannot be told apart from repeats, so all are kept.
            sqlx::query(
                "INSERT INTO measurements (device_id, topic_id, measurement_type, time, sent_time, received_at, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(dev)
            .bind(topic_id)
            .bind(measurement_type)
            .bind(time)
            .bind(device_time.then_some(*time))
            .bind(now)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        }
        DeviceMessage::Event {
            topic_id,
            event_type,
            time,
            text,
            idempotency_key,
            payload,
        } => {
            // A repeat (same device, same key) is dropped here but still acknowledged: the sender
            // only needs to know the event is stored.
            let stored = sqlx::query(
                "INSERT INTO events (device_id, topic_id, event_type, time, received_at, text, payload, \
                 idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(dev)
            .bind(topic_id)
            .bind(event_type)
            .bind(time)
            .bind(now)
            .bind(text)
            .bind(payload)
            .bind(idempotency_key)
            .execute(&mut **tx)
            .await?;
            // A repeat changes nothing; a new inspection result is applied to its asset.
            if stored.rows_affected() > 0 && event_type == proto::edgemlops::INSPECTION_EVENT {
                crate::assets::record_inspection(tx, rules, dev, topic_id, payload, now).await?;
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
            // A raise of an alarm that is already active updates it (thin-edge republishes
            // retained alarms on reconnect); otherwise it opens a new row.
            let updated = sqlx::query(
                "UPDATE alarms SET severity = $1, text = $2, payload = $3, updated_at = $4 \
                 WHERE device_id = $5 AND topic_id = $6 AND alarm_type = $7 AND cleared_at IS NULL \
                 AND asset_id IS NULL",
            )
            .bind(severity)
            .bind(text)
            .bind(payload)
            .bind(now)
            .bind(dev)
            .bind(topic_id)
            .bind(alarm_type)
            .execute(&mut **tx)
            .await?;
            if updated.rows_affected() == 0 {
                sqlx::query(
                    "INSERT INTO alarms (id, device_id, topic_id, alarm_type, severity, text, payload, raised_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(new_id("a-"))
                .bind(dev)
                .bind(topic_id)
                .bind(alarm_type)
                .bind(severity)
                .bind(text)
                .bind(payload)
                .bind(time)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        DeviceMessage::AlarmCleared { topic_id, alarm_type } => {
            sqlx::query(
                "UPDATE alarms SET cleared_at = $1, updated_at = $1 \
                 WHERE device_id = $2 AND topic_id = $3 AND alarm_type = $4 AND cleared_at IS NULL \
                 AND asset_id IS NULL",
            )
            .bind(now)
            .bind(dev)
            .bind(topic_id)
            .bind(alarm_type)
            .execute(&mut **tx)
            .await?;
        }
        DeviceMessage::Registration {
            topic_id,
            registration,
        } => match registration {
            Some((entity_type, payload)) => {
                sqlx::query(
                    "INSERT INTO entities (device_id, topic_id, entity_type, registration, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, topic_id) DO UPDATE SET \
                     entity_type = excluded.entity_type, registration = excluded.registration, \
                     updated_at = excluded.updated_at",
                )
                .bind(dev)
                .bind(topic_id)
                .bind(entity_type)
                .bind(payload)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM entities WHERE device_id = $1 AND topic_id = $2")
                    .bind(dev)
                    .bind(topic_id)
                    .execute(&mut **tx)
                    .await?;
            }
        },
        DeviceMessage::EntityValue {
            topic_id,
            kind,
            name,
            value,
        } => match value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO entity_values (device_id, topic_id, kind, name, value, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, topic_id, kind, name) \
                     DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(dev)
                .bind(topic_id)
                .bind(*kind)
                .bind(name)
                .bind(value)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM entity_values WHERE device_id = $1 AND topic_id = $2 AND kind = $3 AND name = $4",
                )
                .bind(dev)
                .bind(topic_id)
                .bind(*kind)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            }
        },
        DeviceMessage::CommandState {
            operation,
            cmd_id,
            status,
            reason,
            payload,
        } => {
            return apply_command_state(
                tx,
                device,
                operation,
                cmd_id,
                status,
                reason.as_deref(),
                payload,
                now,
            )
            .await;
        }
        DeviceMessage::Ignored => {}
    }
    Ok(Outcome::Stored)
}

#[allow(clippy::too_many_arguments)]
async fn apply_command_state(
    tx: &mut Transaction<'_, Sqlite>,
    device: &DeviceId,
    operation: &CommandOp,
    cmd_id: &str,
    reported: &CommandStatus,
    reason: Option<&str>,
    payload: &str,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    let row = sqlx::query(
        "SELECT status, request FROM commands WHERE id = $1 AND device_id = $2 AND operation = $3",
    )
    .bind(cmd_id)
    .bind(device.as_str())
    .bind(operation.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        // Not a command this hub sent (another requester's, or one that was deleted): ignored,
        // as te/ participants ignore commands that are not theirs.
        tracing::debug!(device = %device, cmd_id, "state of an unknown command ignored");
        return Ok(Outcome::Stored);
    };
    let current = CommandStatus::parse(row.get::<&str, _>(0));
    let request: String = row.get(1);
    let finished = Outcome::CommandFinished {
        cmd_id: cmd_id.to_owned(),
        operation: operation.clone(),
    };
    match current.accept(reported) {
        StatusChange::Advanced => {}
        // A final state repeated: the device did not see our clear (or republished its
        // retained state after a reconnect); clear again.
        StatusChange::Repeated if reported.is_final() => return Ok(finished),
        StatusChange::Repeated | StatusChange::Ignored(_) => return Ok(Outcome::Stored),
    }
    sqlx::query(
        "UPDATE commands SET status = $1, reason = $2, response = $3, updated_at = $4, \
         cleared_at = CASE WHEN $5 = 1 THEN $4 ELSE cleared_at END WHERE id = $6",
    )
    .bind(reported.as_str())
    .bind(reason)
    .bind(payload)
    .bind(now)
    .bind(i64::from(reported.is_final()))
    .bind(cmd_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO command_transitions (command_id, seq, status, reason, at) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM command_transitions WHERE command_id = $1",
    )
    .bind(cmd_id)
    .bind(reported.as_str())
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if *reported == CommandStatus::Successful {
        record_inventory(tx, device, operation, cmd_id, &request, payload, now).await?;
    }
    Ok(if reported.is_final() {
        finished
    } else {
        Outcome::Stored
    })
}

/// Keeps `installed_software` and `model_installs` current after a successful command.
async fn record_inventory(
    tx: &mut Transaction<'_, Sqlite>,
    device: &DeviceId,
    operation: &CommandOp,
    cmd_id: &str,
    request: &str,
    payload: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let dev = device.as_str();
    match operation {
        CommandOp::SoftwareList => {
            let Ok(list) = serde_json::from_str::<SoftwareList>(payload) else {
                return Ok(());
            };
            sqlx::query("DELETE FROM installed_software WHERE device_id = $1")
                .bind(dev)
                .execute(&mut **tx)
                .await?;
            for group in &list.current_software_list {
                for m in &group.modules {
                    sqlx::query(
                        "INSERT INTO installed_software (device_id, software_type, name, version, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, software_type, name) \
                         DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                    )
                    .bind(dev)
                    .bind(&group.software_type)
                    .bind(&m.name)
                    .bind(&m.version)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        CommandOp::SoftwareUpdate => {
            // What was installed is what the hub asked for (the request), not what the device
            // echoes back.
            let Ok(update) = serde_json::from_str::<SoftwareUpdate>(request) else {
                return Ok(());
            };
            for (software_type, m) in update.modules() {
                match m.action {
                    proto::command::ModuleAction::Install => {
                        sqlx::query(
                            "INSERT INTO installed_software (device_id, software_type, name, version, updated_at) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, software_type, name) \
                             DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                        )
                        .bind(dev)
                        .bind(software_type)
                        .bind(&m.name)
                        .bind(&m.version)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                        if software_type == proto::edgemlops::SOFTWARE_TYPE {
                            sqlx::query(
                                "INSERT INTO model_installs (device_id, model, version, command_id, installed_at) \
                                 VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(dev)
                            .bind(&m.name)
                            .bind(m.version.as_deref().unwrap_or_default())
                            .bind(cmd_id)
                            .bind(now)
                            .execute(&mut **tx)
                            .await?;
                        }
                    }
                    proto::command::ModuleAction::Remove => {
                        sqlx::query(
                            "DELETE FROM installed_software WHERE device_id = $1 AND software_type = $2 AND name = $3",
                        )
                        .bind(dev)
                        .bind(software_type)
                        .bind(&m.name)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
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

    #[tokio::test]
    async fn a_repeated_measurement_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(&dir.path().join("hub.db")).await.unwrap();
        let (writer, _task) = Writer::start(pool.clone());
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
        .fetch_all(&pool)
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
        let pool = crate::db::open(&dir.path().join("hub.db")).await.unwrap();
        let (writer, _task) = Writer::start(pool.clone());
        let device = DeviceId::new("d").unwrap();
        let other = DeviceId::new("e").unwrap();
        let topic = "devices/d/te/device/main///e/inspection";
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
                .fetch_all(&pool)
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
