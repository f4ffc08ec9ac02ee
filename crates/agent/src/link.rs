//! The hub link actor: the MQTT connection to the hub's device endpoint (rumqttc, MQTT 3.1.1).
//!
//! On every (re)connect it registers the inference service (with a retained last will saying
//! `down`), publishes the twin facts, the capabilities and `up`, subscribes to its command
//! topics, and then drains the [`Outbox`] in order with at most `window` messages in flight. A
//! message leaves the outbox only when its PUBACK arrives (the hub acknowledges after storing).
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were requested, which is how
//! an acknowledgement is matched to an outbox row. On a lost connection the in-flight rows are
//! simply sent again after reconnecting (events carry idempotency keys; command states are
//! idempotent at the hub), with exponential backoff between attempts.
//!
//! The same actor is the thin-edge mode's connection to a device's local broker
//! ([`LinkConfig::local`], `edgemlops-agent infer --mqtt`): no credentials, plain `te/` topics
//! (outbox topics lose their `devices/<id>/` prefix on the wire), and only the service's
//! registration and health are announced (thin-edge's own agent owns the device's twin,
//! capabilities and commands).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proto::command::{CommandCapability, CommandOp};
use proto::edgemlops::{DeviceFacts, INFER_SERVICE};
use proto::telemetry::{EntityRegistration, EntityType, Health, HealthStatus};
use proto::topic::{Channel, EntityTopicId};
use proto::{DeviceId, DeviceTopic, TeTopic};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;

use crate::commands::OpsMsg;
use crate::outbox::Outbox;

/// The full topic of a te/ channel of an entity of `device`.
pub fn topic(device: &DeviceId, entity: EntityTopicId, channel: Channel) -> String {
    DeviceTopic::new(
        device.clone(),
        TeTopic::new(entity, channel).expect("the agent's own topics are valid"),
    )
    .to_string()
}

/// The inference service entity.
pub fn service() -> EntityTopicId {
    EntityTopicId::main_service(INFER_SERVICE).expect("the service name is a valid segment")
}

/// Messages to the link.
#[derive(Debug)]
pub enum LinkMsg {
    /// Publish the health of the inference service now (retained, not queued).
    Health(HealthStatus),
    /// Disconnect cleanly (after publishing `down`) and stop.
    Shutdown,
}

/// What the link needs to know.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The device.
    pub device: DeviceId,
    /// Hub host.
    pub host: String,
    /// Hub MQTT port.
    pub port: u16,
    /// Device token.
    pub token: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    /// Largest backoff.
    pub reconnect_max: Duration,
    /// Outbox messages in flight.
    pub window: usize,
    /// Twin facts.
    pub facts: DeviceFacts,
    /// Software types `software_update` handles.
    pub software_types: Vec<String>,
    /// A thin-edge device's local broker instead of the hub.
    pub local: bool,
}

impl LinkConfig {
    /// The topic on the wire: as stored for the hub, or without the `devices/<id>/` prefix for a
    /// local broker.
    pub fn wire(&self, topic: &str) -> String {
        if self.local {
            let prefix = self.device.prefix();
            topic.strip_prefix(prefix.as_str()).unwrap_or(topic).to_owned()
        } else {
            topic.to_owned()
        }
    }
}

fn health_payload(status: HealthStatus) -> Vec<u8> {
    let mut h = Health::new(status);
    h.pid = Some(std::process::id());
    h.time = Some(proto::Timestamp::now());
    h.to_json()
}

/// Runs the link until [`LinkMsg::Shutdown`].
pub async fn run(
    config: LinkConfig,
    outbox: Outbox,
    ops: mpsc::Sender<OpsMsg>,
    mut rx: mpsc::Receiver<LinkMsg>,
) {
    let mut backoff = config.reconnect_min;
    let health_topic = config.wire(&topic(&config.device, service(), Channel::Health));
    loop {
        let mut opts = if config.local {
            MqttOptions::new(
                format!("{INFER_SERVICE}-{}", config.device),
                config.host.clone(),
                config.port,
            )
        } else {
            let mut o = MqttOptions::new(config.device.as_str(), config.host.clone(), config.port);
            o.set_credentials(config.device.as_str(), config.token.clone());
            o
        };
        opts.set_keep_alive(config.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(4 << 20, 4 << 20)
            .set_inflight(config.window.clamp(1, 1000) as u16)
            .set_last_will(LastWill::new(
                health_topic.clone(),
                health_payload(HealthStatus::Down),
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut eventloop) = AsyncClient::new(opts, config.window + 64);
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let poller = tokio::spawn(async move {
            loop {
                let e = eventloop.poll().await;
                let stop = e.is_err();
                if ev_tx.send(e).await.is_err() || stop {
                    break;
                }
            }
        });
        let outcome = session(&config, &client, &mut ev_rx, &outbox, &ops, &mut rx, &mut backoff).await;
        poller.abort();
        match outcome {
            SessionEnd::Shutdown => return,
            SessionEnd::Lost(reason) => {
                tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, local = config.local, "MQTT connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    msg = rx.recv() => if matches!(msg, Some(LinkMsg::Shutdown) | None) { return },
                }
                backoff = (backoff * 2).min(config.reconnect_max);
            }
        }
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Publishes registration, facts, capabilities and health, subscribes; returns the publishes made.
async fn announce(config: &LinkConfig, client: &AsyncClient) -> Result<usize, rumqttc::ClientError> {
    let dev = &config.device;
    let mut registration = EntityRegistration::new(EntityType::Service);
    registration.name = Some(INFER_SERVICE.into());
    registration.type_label = Some("service".into());
    let caps = [
        (CommandOp::SoftwareList, config.software_types.clone()),
        (CommandOp::SoftwareUpdate, config.software_types.clone()),
        (CommandOp::Restart, Vec::new()),
        (CommandOp::LogUpload, vec!["edgemlops-agent".into()]),
    ];
    let mut retained = vec![
        (
            topic(dev, service(), Channel::EntityMetadata),
            registration.to_json(),
        ),
        (
            topic(
                dev,
                EntityTopicId::main_device(),
                Channel::Twin {
                    fragment: proto::edgemlops::DEVICE_FACTS_FRAGMENT.into(),
                },
            ),
            config.facts.to_json(),
        ),
    ];
    for (op, types) in caps {
        let cap = CommandCapability {
            types,
            ..CommandCapability::default()
        };
        retained.push((
            topic(
                dev,
                EntityTopicId::main_device(),
                Channel::CommandMetadata { operation: op },
            ),
            cap.to_json(),
        ));
    }
    retained.push((
        topic(dev, service(), Channel::Health),
        health_payload(HealthStatus::Up),
    ));
    if config.local {
        // The service's own entity and health only.
        let own = [
            topic(dev, service(), Channel::EntityMetadata),
            topic(dev, service(), Channel::Health),
        ];
        retained.retain(|(t, _)| own.contains(t));
    }
    let count = retained.len();
    for (t, p) in retained {
        client.publish(config.wire(&t), QoS::AtLeastOnce, true, p).await?;
    }
    if config.local {
        return Ok(count);
    }
    let filter = format!("{}/te/device/main///cmd/+/+", dev.prefix().trim_end_matches('/'));
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    Ok(count)
}

async fn session(
    config: &LinkConfig,
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    outbox: &Outbox,
    ops: &mpsc::Sender<OpsMsg>,
    rx: &mut mpsc::Receiver<LinkMsg>,
    backoff: &mut Duration,
) -> SessionEnd {
    // Wait for the CONNACK.
    loop {
        match tokio::time::timeout(Duration::from_secs(15), events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::ConnAck(_))))) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return SessionEnd::Lost(e.to_string()),
            Ok(None) => return SessionEnd::Lost("event loop stopped".into()),
            Err(_) => return SessionEnd::Lost("no CONNACK within 15 s".into()),
        }
    }
    if config.local {
        tracing::info!(broker = %format!("{}:{}", config.host, config.port), "connected to the local broker");
    } else {
        tracing::info!(device = %config.device, "connected to the hub");
    }
    *backoff = config.reconnect_min;
    // One entry per requested publish, in order: the outbox row it carries, if any.
    let mut requested: VecDeque<Option<i64>> = VecDeque::new();
    match announce(config, client).await {
        Ok(n) => requested.extend(std::iter::repeat_n(None, n)),
        Err(e) => return SessionEnd::Lost(e.to_string()),
    }
    let mut in_flight: HashMap<u16, i64> = HashMap::new();
    let mut unmatched = 0usize;
    let mut last_sent = 0i64;
    loop {
        let window = config.window.saturating_sub(unmatched + in_flight.len());
        if window > 0 {
            match outbox.after(last_sent, window).await {
                Ok(batch) => {
                    for m in batch {
                        if let Err(e) = client
                            .publish(config.wire(&m.topic), QoS::AtLeastOnce, m.retain, m.payload)
                            .await
                        {
                            return SessionEnd::Lost(e.to_string());
                        }
                        requested.push_back(Some(m.seq));
                        unmatched += 1;
                        last_sent = m.seq;
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the outbox failed"),
            }
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(Some(seq)) = requested.pop_front() {
                        unmatched = unmatched.saturating_sub(1);
                        in_flight.insert(pkid, seq);
                    }
                }
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(seq) = in_flight.remove(&ack.pkid)
                        && let Err(e) = outbox.ack(seq).await
                    {
                        tracing::error!(error = %e, "removing an acknowledged message failed");
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    match DeviceTopic::parse(&p.topic) {
                        // An empty payload is the requester clearing a finished command.
                        Ok(_) if p.payload.is_empty() => {}
                        Ok(t) => {
                            if let Channel::Command { operation, cmd_id } = t.topic.channel() {
                                let msg = OpsMsg::Command {
                                    topic: p.topic.clone(),
                                    operation: operation.clone(),
                                    cmd_id: cmd_id.clone(),
                                    payload: p.payload.to_vec(),
                                };
                                let _ = ops.send(msg).await;
                            }
                        }
                        Err(e) => tracing::warn!(topic = %p.topic, error = %e, "ignoring a message on an unexpected topic"),
                    }
                }
                Some(Ok(Event::Incoming(Packet::Disconnect))) => return SessionEnd::Lost("the hub disconnected".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                None => return SessionEnd::Lost("event loop stopped".into()),
            },
            _ = outbox.pushed(), if config.window > unmatched + in_flight.len() => {}
            msg = rx.recv() => match msg {
                Some(LinkMsg::Health(status)) => {
                    let t = config.wire(&topic(&config.device, service(), Channel::Health));
                    if client.publish(t, QoS::AtLeastOnce, true, health_payload(status)).await.is_ok() {
                        requested.push_back(None);
                    }
                }
                Some(LinkMsg::Shutdown) | None => {
                    let t = config.wire(&topic(&config.device, service(), Channel::Health));
                    let _ = client.publish(t, QoS::AtLeastOnce, true, health_payload(HealthStatus::Down)).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = client.disconnect().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return SessionEnd::Shutdown;
                }
            },
        }
    }
}
