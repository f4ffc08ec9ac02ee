//! Commands as stored: one row per command with its current state, every state transition with
//! its time, and what successful commands tell about a device's software (`installed_software`,
//! `model_installs`). [`CommandStore`] serves the API and delivery; [`apply_state`] runs inside the
//! ingest writer's transaction when a device reports a state.

use proto::DeviceId;
use proto::api::CommandTransition;
use proto::command::{CommandOp, CommandStatus, ModuleAction, SoftwareList, SoftwareUpdate, StatusChange};
use sqlx::Row as _;

use crate::db::{Db, Row, Tx};
use crate::stdx::ts;

/// A command as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// Command id.
    pub id: String,
    /// Target device.
    pub device: DeviceId,
    /// Operation.
    pub operation: CommandOp,
    /// Current state.
    pub status: CommandStatus,
    /// Failure reason.
    pub reason: Option<String>,
    /// Model name (model operations).
    pub model: Option<String>,
    /// Model version.
    pub version: Option<String>,
    /// `install` or `remove` (model operations).
    pub action: Option<ModuleAction>,
    /// Hardware class of the chosen variant.
    pub hardware_class: Option<String>,
    /// Package digest of the chosen variant.
    pub package_sha256: Option<String>,
    /// The te/ payload last sent (fixed at creation for `log_upload`).
    pub request: String,
    /// The device's last payload.
    pub response: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last state change, ms.
    pub updated_at: i64,
    /// Deliveries to the device.
    pub sent_count: i64,
}

/// What to store for a new command.
#[derive(Clone, Debug)]
pub struct NewCommand<'a> {
    /// Command id.
    pub id: &'a str,
    /// Target device.
    pub device: &'a DeviceId,
    /// Entity topic id it is addressed to.
    pub topic_id: &'a str,
    /// Operation.
    pub operation: &'a CommandOp,
    /// Model name.
    pub model: Option<&'a str>,
    /// Model version.
    pub version: Option<&'a str>,
    /// Install or remove.
    pub action: Option<ModuleAction>,
    /// Chosen variant's hardware class.
    pub hardware_class: Option<&'a str>,
    /// Chosen variant's package digest.
    pub package_sha256: Option<&'a str>,
    /// The te/ payload for commands whose payload is fixed at creation (`log_upload`).
    pub request: Option<&'a str>,
    /// Who creates it.
    pub created_by: &'a str,
}

fn action_str(a: ModuleAction) -> &'static str {
    match a {
        ModuleAction::Install => "install",
        ModuleAction::Remove => "remove",
    }
}

fn record(r: &Row) -> CommandRecord {
    CommandRecord {
        id: r.get("id"),
        // Stored only after validation; an unreadable id means a corrupt database.
        device: DeviceId::new(r.get::<String, _>("device_id"))
            .unwrap_or_else(|_| DeviceId::new("invalid").expect("'invalid' is a valid device id")),
        operation: CommandOp::from(r.get::<String, _>("operation").as_str()),
        status: CommandStatus::parse(&r.get::<String, _>("status")),
        reason: r.get("reason"),
        model: r.get("model"),
        version: r.get("version"),
        action: r.get::<Option<String>, _>("action").map(|a| {
            if a == "remove" {
                ModuleAction::Remove
            } else {
                ModuleAction::Install
            }
        }),
        hardware_class: r.get("hardware_class"),
        package_sha256: r.get("package_sha256"),
        request: r.get("request"),
        response: r.get("response"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        sent_count: r.get("sent_count"),
    }
}

const COLUMNS: &str = "id, device_id, operation, status, reason, model, version, action, hardware_class, \
     package_sha256, request, response, created_by, created_at, updated_at, sent_count";

/// A command that expired: what the node holding its device needs to clear its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Command id.
    pub id: String,
    /// Its device.
    pub device: DeviceId,
    /// Its operation.
    pub operation: CommandOp,
}

/// Commands in the database.
#[derive(Clone, Debug)]
pub struct CommandStore {
    db: Db,
}

impl CommandStore {
    /// The store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a new command in `init` with its first transition.
    pub async fn insert(&self, c: &NewCommand<'_>, now: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO commands (id, device_id, topic_id, operation, status, model, version, action, \
             hardware_class, package_sha256, request, created_by, created_at, updated_at, sent_count) \
             VALUES ($1, $2, $3, $4, 'init', $5, $6, $7, $8, $9, $10, $11, $12, $12, 0)",
        )
        .bind(c.id)
        .bind(c.device.as_str())
        .bind(c.topic_id)
        .bind(c.operation.as_str())
        .bind(c.model)
        .bind(c.version)
        .bind(c.action.map(action_str))
        .bind(c.hardware_class)
        .bind(c.package_sha256)
        .bind(c.request.unwrap_or("{}"))
        .bind(c.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO command_transitions (command_id, seq, status, at) VALUES ($1, 1, 'init', $2)",
        )
        .bind(c.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// One command.
    pub async fn get(&self, id: &str) -> Result<Option<CommandRecord>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM commands WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(record))
    }

    /// Commands, newest first: of one device or of all.
    pub async fn list(
        &self,
        device: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<CommandRecord>, sqlx::Error> {
        let rows = match device {
            Some(d) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM commands WHERE device_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(d.as_str())
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM commands ORDER BY created_at DESC, id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
        };
        Ok(rows.iter().map(record).collect())
    }

    /// Every state of a command with its time, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<CommandTransition>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT status, reason, at FROM command_transitions WHERE command_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| CommandTransition {
                status: CommandStatus::parse(&r.get::<String, _>(0)),
                reason: r.get(1),
                at: ts(r.get(2)),
            })
            .collect())
    }

    /// The commands of `device` (all devices with `None`) that it has not reported on yet,
    /// oldest first.
    pub async fn pending(&self, device: Option<&DeviceId>) -> Result<Vec<CommandRecord>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM commands WHERE ($1 IS NULL OR device_id = $1) AND status = 'init' \
             ORDER BY created_at, id"
        ))
        .bind(device.map(DeviceId::as_str))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(record).collect())
    }

    /// Counts a delivery of `id` with the payload it carried.
    pub async fn record_send(&self, id: &str, payload: &str, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE commands SET sent_count = sent_count + 1, last_sent_at = $1, request = $2 WHERE id = $3",
        )
        .bind(now)
        .bind(payload)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Versions of `model` that `device` installed successfully, newest first.
    pub async fn installed_versions(
        &self,
        device: &DeviceId,
        model: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT version FROM model_installs WHERE device_id = $1 AND model = $2 ORDER BY installed_at DESC",
        )
        .bind(device.as_str())
        .bind(model)
        .fetch_all(self.db.pool())
        .await
    }

    /// Fails every command created before `before` that has no final state, with `reason`;
    /// returns them.
    pub async fn expire(&self, before: i64, reason: &str, now: i64) -> Result<Vec<Expired>, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let rows = sqlx::query(
            "UPDATE commands SET status = 'failed', reason = $1, updated_at = $2, cleared_at = $2 \
             WHERE status <> 'successful' AND status <> 'failed' AND created_at < $3 \
             RETURNING id, device_id, operation",
        )
        .bind(reason)
        .bind(now)
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get(0);
            sqlx::query(
                "INSERT INTO command_transitions (command_id, seq, status, reason, at) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, 'failed', $2, $3 FROM command_transitions WHERE command_id = $1",
            )
            .bind(&id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if let Ok(device) = DeviceId::new(r.get::<String, _>(1)) {
                expired.push(Expired {
                    id,
                    device,
                    operation: CommandOp::from(r.get::<String, _>(2).as_str()),
                });
            }
        }
        tx.commit().await?;
        Ok(expired)
    }
}

/// What a reported state did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateApplied {
    /// Stored (or ignored: not our command, an unknown or backward state).
    Stored,
    /// The command is final (now, or it was and the device repeated it): clear its topic.
    Finished,
}

/// A state a device reported for one of its commands, in the writer's transaction: the state
/// machine decides (forward, repeat or ignored), the transition is stored, and a success updates
/// the device's inventory. `software` is the device's software list when it reported one.
#[allow(clippy::too_many_arguments)]
pub async fn apply_state(
    tx: &mut Tx,
    device: &DeviceId,
    operation: &CommandOp,
    cmd_id: &str,
    reported: &CommandStatus,
    reason: Option<&str>,
    payload: &str,
    software: Option<&SoftwareList>,
    now: i64,
) -> Result<StateApplied, sqlx::Error> {
    // A write before the read takes the row's lock on PostgreSQL, so the state read is still the
    // state when it is changed (the expiry on another node may be failing it right now).
    sqlx::query(
        "UPDATE commands SET updated_at = updated_at WHERE id = $1 AND device_id = $2 AND operation = $3",
    )
    .bind(cmd_id)
    .bind(device.as_str())
    .bind(operation.as_str())
    .execute(&mut **tx)
    .await?;
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
        return Ok(StateApplied::Stored);
    };
    let current = CommandStatus::parse(&row.get::<String, _>(0));
    let request: String = row.get(1);
    match current.accept(reported) {
        StatusChange::Advanced => {}
        // A final state repeated: the device did not see our clear (or republished its
        // retained state after a reconnect); clear again.
        StatusChange::Repeated if reported.is_final() => return Ok(StateApplied::Finished),
        StatusChange::Repeated | StatusChange::Ignored(_) => return Ok(StateApplied::Stored),
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
        record_inventory(tx, device, operation, cmd_id, &request, software, now).await?;
    }
    Ok(if reported.is_final() {
        StateApplied::Finished
    } else {
        StateApplied::Stored
    })
}

async fn upsert_software(
    tx: &mut Tx,
    device: &str,
    software_type: &str,
    name: &str,
    version: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO installed_software (device_id, software_type, name, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, software_type, name) \
         DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(device)
    .bind(software_type)
    .bind(name)
    .bind(version)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keeps `installed_software` and `model_installs` current after a successful command.
async fn record_inventory(
    tx: &mut Tx,
    device: &DeviceId,
    operation: &CommandOp,
    cmd_id: &str,
    request: &str,
    software: Option<&SoftwareList>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let dev = device.as_str();
    match operation {
        CommandOp::SoftwareList => {
            let Some(list) = software else {
                return Ok(());
            };
            sqlx::query("DELETE FROM installed_software WHERE device_id = $1")
                .bind(dev)
                .execute(&mut **tx)
                .await?;
            for group in &list.current_software_list {
                for m in &group.modules {
                    upsert_software(tx, dev, &group.software_type, &m.name, m.version.as_deref(), now)
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
                    ModuleAction::Install => {
                        upsert_software(tx, dev, software_type, &m.name, m.version.as_deref(), now).await?;
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
                    ModuleAction::Remove => {
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
