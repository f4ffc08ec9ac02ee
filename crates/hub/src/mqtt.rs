//! The device endpoint: MQTT 3.1.1 and 5 with ntex-mqtt, plain and (optionally) TLS with rustls.
//!
//! ntex runs its own single-threaded runtimes (on tokio, the `tokio` feature of `ntex-net`), so
//! the endpoint lives on a thread of its own with `mqtt.workers` worker threads (one per core by
//! default); it reaches the rest of the hub through the [`Gateway`] (thread-safe) and receives
//! messages for devices through the [`crate::transport::Connections`] registry. Per connection:
//!
//! - CONNECT waits for an admission turn ([`Gateway::admit`]), then is checked by
//!   [`Gateway::authenticate_device`]; a refusal becomes the protocol's return code (v3.1.1) or
//!   reason code (v5).
//! - PUBLISH is checked and stored by [`Gateway::ingest`] before the handler returns, and ntex-mqtt
//!   sends PUBACK only when it returns: QoS 1 is acknowledged after storing. A topic outside the
//!   prefix gets PUBACK 0x87 (v5, QoS 1) or a disconnect (v5 QoS 0: DISCONNECT 0x87; v3.1.1).
//! - SUBSCRIBE outside the prefix: SUBACK 0x87 per filter (v5), disconnect (v3.1.1). Accepted
//!   filters are kept, and pending commands matching them are sent (retained), as a broker would
//!   deliver retained messages.
//! - The last will was checked at CONNECT; it is stored like a publish when the connection ends
//!   without a clean DISCONNECT (or with v5 reason 0x04).
//! - A newer connection of the same device takes over: the older one is closed (v5: 0x8E).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::v5::codec::{DisconnectReasonCode, PublishAckReason, SubscribeAckReason};
use ntex_mqtt::{Control, MqttServer, MqttServiceConfig, QoS, Reason, v3, v5};
use ntex_service::cfg::SharedCfg;
use proto::DeviceId;

use crate::gateway::{ConnectRefusal, Gateway, PublishRefusal};
use crate::ingest::DeviceMessage;
use crate::transport::{CloseReason, Outbound, filter_matches};

/// Why a connection's handler failed; decides how the connection ends.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not allowed (a publish outside the prefix): v3.1.1 disconnect, v5 DISCONNECT 0x87.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The message could not be stored: disconnect without acknowledging (the device resends).
    #[error("cannot store: {0}")]
    Storage(String),
    /// Reading the payload failed.
    #[error("payload: {0}")]
    Payload(String),
}

impl From<()> for EndpointError {
    fn from((): ()) -> Self {
        Self::Storage("internal error".into())
    }
}

impl TryFrom<EndpointError> for v5::PublishAck {
    type Error = EndpointError;

    fn try_from(err: EndpointError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// One way to write to a device.
#[derive(Clone)]
enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let topic = ByteString::from(topic);
        let payload = Bytes::from(payload);
        match self {
            Self::V3(s) => {
                let mut b = s.publish(topic);
                if retain {
                    b = b.retain();
                }
                ntex_rt::spawn(async move {
                    if let Err(e) = b.send_at_least_once(payload).await {
                        tracing::debug!(error = ?e, "publish to device not acknowledged");
                    }
                });
            }
            Self::V5(s) => {
                let b = s.publish(topic).retain(retain);
                ntex_rt::spawn(async move {
                    if let Err(e) = b.send_at_least_once(payload).await {
                        tracing::debug!(error = ?e, "publish to device not acknowledged");
                    }
                });
            }
        }
    }

    fn close(&self, reason: CloseReason) {
        match self {
            Self::V3(s) => s.close(),
            Self::V5(s) => s.close_with_reason(v5::codec::Disconnect {
                reason_code: match reason {
                    CloseReason::TakenOver => DisconnectReasonCode::SessionTakenOver,
                    CloseReason::Revoked => DisconnectReasonCode::NotAuthorized,
                    CloseReason::ServerShutdown => DisconnectReasonCode::ServerShuttingDown,
                },
                ..Default::default()
            }),
        }
    }
}

/// The state of one device connection (lives on its worker thread).
struct DeviceSession {
    gateway: Arc<Gateway>,
    device: DeviceId,
    sink: Sink,
    subscriptions: Rc<RefCell<Vec<String>>>,
    /// Set by a clean DISCONNECT: the last will is not published.
    graceful: Rc<Cell<bool>>,
    /// This connection's id in the hub's registry of live connections.
    connection: u64,
    /// When it was registered, ms.
    registered_at: i64,
}

impl DeviceSession {
    /// Publishes to the device if it subscribed to a matching filter (as a broker would).
    fn deliver(&self, message: Outbound) {
        deliver(&self.sink, &self.subscriptions, &self.device, message);
    }
}

fn deliver(sink: &Sink, subscriptions: &RefCell<Vec<String>>, device: &DeviceId, message: Outbound) {
    match message {
        Outbound::Publish {
            topic,
            payload,
            retain,
        } => {
            if subscriptions.borrow().iter().any(|f| filter_matches(f, &topic)) {
                sink.publish(topic, payload, retain);
            } else {
                tracing::debug!(device = %device, %topic, "device has no matching subscription; not sent");
            }
        }
        Outbound::Close(reason) => {
            tracing::info!(device = %device, ?reason, "closing device connection");
            sink.close(reason);
        }
    }
}

/// Accepts a device: registers the connection, starts the task that writes hub messages to it
/// and the one that cleans up (last will, registry) when it ends.
fn accept(
    gateway: &Arc<Gateway>,
    device: DeviceId,
    sink: Sink,
    io: &ntex_io::IoBoxed,
    will: Option<(String, Vec<u8>)>,
) -> DeviceSession {
    let registration = gateway.register(&device);
    let conn = registration.id;
    let mut rx = registration.rx;
    let session = DeviceSession {
        gateway: gateway.clone(),
        device: device.clone(),
        sink: sink.clone(),
        subscriptions: Rc::default(),
        graceful: Rc::default(),
        connection: conn,
        registered_at: registration.at,
    };
    let subscriptions = session.subscriptions.clone();
    let writer_device = device.clone();
    ntex_rt::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Outbound::Close(_));
            deliver(&sink, &subscriptions, &writer_device, message);
            if close {
                break;
            }
        }
    });
    let disconnected = io.on_disconnect();
    let graceful = session.graceful.clone();
    let gateway = gateway.clone();
    ntex_rt::spawn(async move {
        disconnected.await;
        // A connection taken over by a newer one of the same device (on this node or another)
        // does not publish its will: the device is evidently alive (as with MQTT 5's will delay,
        // which a reconnect cancels), and a will stored now could land after what the new
        // connection reported already (health "down" after "up").
        let live = gateway.unregister(&device, conn);
        if live
            && !graceful.get()
            && let Some((topic, payload)) = will
        {
            match gateway.ingest(&device, &topic, &payload).await {
                Ok(_) => tracing::info!(device = %device, %topic, "last will stored"),
                Err(e) => tracing::warn!(device = %device, %topic, error = %e, "last will not stored"),
            }
        }
        gateway.disconnected(&device, conn, live).await;
    });
    session
}

async fn connect_v3(
    gateway: Arc<Gateway>,
    c: v3::Connect,
) -> Result<v3::ConnectAck<DeviceSession>, EndpointError> {
    let Some(_turn) = gateway.admit().await else {
        return Ok(c.service_unavailable());
    };
    let p = c.packet();
    let will = p
        .last_will
        .as_ref()
        .map(|w| (w.topic.to_string(), w.message.to_vec()));
    let checked = gateway
        .authenticate_device(
            &p.client_id,
            p.username.as_deref(),
            p.password.as_deref(),
            will.as_ref().map(|w| w.0.as_str()),
        )
        .await;
    let device = match checked {
        Ok(d) => d,
        Err(ConnectRefusal::BadIdentifier(_)) => return Ok(c.identifier_rejected()),
        Err(ConnectRefusal::BadCredentials(_)) => return Ok(c.bad_username_or_pwd()),
        Err(ConnectRefusal::NotAuthorized(_)) => return Ok(c.not_authorized()),
        Err(ConnectRefusal::Unavailable(_)) => return Ok(c.service_unavailable()),
    };
    let session = accept(&gateway, device.clone(), Sink::V3(c.sink()), c.io(), will);
    if !gateway
        .still_authorized(&device, session.connection, p.password.as_deref())
        .await
    {
        return Ok(c.bad_username_or_pwd());
    }
    gateway
        .connected(&device, session.connection, session.registered_at)
        .await;
    Ok(c.ack(session, false))
}

async fn connect_v5(
    gateway: Arc<Gateway>,
    c: v5::Connect,
) -> Result<v5::ConnectAck<DeviceSession>, EndpointError> {
    use v5::codec::ConnectAckReason as R;
    let Some(_turn) = gateway.admit().await else {
        return Ok(c.failed(R::ServerUnavailable));
    };
    let p = c.packet();
    let will = p
        .last_will
        .as_ref()
        .map(|w| (w.topic.to_string(), w.message.to_vec()));
    let checked = gateway
        .authenticate_device(
            &p.client_id,
            p.username.as_deref(),
            p.password.as_deref(),
            will.as_ref().map(|w| w.0.as_str()),
        )
        .await;
    let device = match checked {
        Ok(d) => d,
        Err(ConnectRefusal::BadIdentifier(_)) => return Ok(c.failed(R::ClientIdentifierNotValid)),
        Err(ConnectRefusal::BadCredentials(_)) => return Ok(c.failed(R::BadUserNameOrPassword)),
        Err(ConnectRefusal::NotAuthorized(_)) => return Ok(c.failed(R::NotAuthorized)),
        Err(ConnectRefusal::Unavailable(_)) => return Ok(c.failed(R::ServerUnavailable)),
    };
    let session = accept(&gateway, device.clone(), Sink::V5(c.sink()), c.io(), will);
    if !gateway
        .still_authorized(&device, session.connection, p.password.as_deref())
        .await
    {
        return Ok(c.failed(R::BadUserNameOrPassword));
    }
    gateway
        .connected(&device, session.connection, session.registered_at)
        .await;
    Ok(c.ack(session))
}

/// Stores what [`understand`] made of a publish; asks the connection to clear a finished
/// command.
async fn store(
    session: &DeviceSession,
    message: Result<DeviceMessage, PublishRefusal>,
) -> Result<(), PublishRefusal> {
    let outcome = session.gateway.store(&session.device, message?).await?;
    if let Some(clear) = Gateway::clear_command(&session.device, &outcome) {
        session.deliver(clear);
    }
    Ok(())
}

/// Reads a publish's payload and understands it, consuming the packet: its topic and payload
/// live in the connection's read buffer, which must not stay pinned while the message waits for
/// its commit.
async fn understand<P: PublishPacket>(
    session: &DeviceSession,
    p: P,
) -> Result<Result<DeviceMessage, PublishRefusal>, EndpointError> {
    let payload = p
        .read_payload()
        .await
        .map_err(|e| EndpointError::Payload(e.to_string()))?;
    Ok(session
        .gateway
        .understand(&session.device, p.topic_str(), &payload))
}

/// What the endpoint needs of a v3.1.1 or v5 publish.
trait PublishPacket {
    async fn read_payload(&self) -> Result<Bytes, ntex_mqtt::error::PayloadError>;
    fn topic_str(&self) -> &str;
}

impl PublishPacket for v3::Publish {
    async fn read_payload(&self) -> Result<Bytes, ntex_mqtt::error::PayloadError> {
        self.read_all().await
    }
    fn topic_str(&self) -> &str {
        self.publish_topic()
    }
}

impl PublishPacket for v5::Publish {
    async fn read_payload(&self) -> Result<Bytes, ntex_mqtt::error::PayloadError> {
        self.read_all().await
    }
    fn topic_str(&self) -> &str {
        self.publish_topic()
    }
}

async fn publish_v3(session: &v3::Session<DeviceSession>, p: v3::Publish) -> Result<(), EndpointError> {
    let message = understand(session, p).await?;
    match store(session, message).await {
        Ok(()) => Ok(()),
        Err(PublishRefusal::NotAuthorized(e)) => Err(EndpointError::NotAuthorized(e.to_string())),
        // 3.1.1 cannot say "refused" in a PUBACK; disconnecting would only make the device
        // resend the same bad message forever. It is counted and logged, not stored.
        Err(PublishRefusal::InvalidPayload(_)) => Ok(()),
        Err(PublishRefusal::Storage(e)) => Err(EndpointError::Storage(e.to_string())),
    }
}

async fn publish_v5(
    session: &v5::Session<DeviceSession>,
    p: v5::Publish,
) -> Result<v5::PublishAck, EndpointError> {
    let qos0 = p.qos() == QoS::AtMostOnce;
    let message = understand(session, p).await?;
    let ack = v5::PublishAck::new;
    match store(session, message).await {
        Ok(()) => Ok(ack(PublishAckReason::Success)),
        Err(PublishRefusal::NotAuthorized(e)) if qos0 => Err(EndpointError::NotAuthorized(e.to_string())),
        Err(PublishRefusal::NotAuthorized(e)) => {
            Ok(ack(PublishAckReason::NotAuthorized).reason(ByteString::from(e.to_string())))
        }
        Err(PublishRefusal::InvalidPayload(e)) => {
            Ok(ack(PublishAckReason::PayloadFormatInvalid).reason(ByteString::from(e.to_string())))
        }
        Err(PublishRefusal::Storage(e)) => Err(EndpointError::Storage(e.to_string())),
    }
}

/// Grants QoS 0 or 1 (commands are sent with QoS 1; QoS 2 is not offered).
fn granted(q: QoS) -> QoS {
    if q == QoS::AtMostOnce {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

async fn subscribed(session: &DeviceSession, accepted: Vec<String>) {
    if accepted.is_empty() {
        return;
    }
    session
        .subscriptions
        .borrow_mut()
        .extend(accepted.iter().cloned());
    for message in session.gateway.subscribed(&session.device, &accepted).await {
        session.deliver(message);
    }
}

async fn protocol_v3(
    session: &v3::Session<DeviceSession>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, EndpointError> {
    match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            let mut accepted = Vec::new();
            let mut refused = false;
            for mut sub in s.iter_mut() {
                let filter = sub.topic().to_string();
                if session
                    .gateway
                    .check_subscription(&session.device, &filter)
                    .is_ok()
                {
                    sub.confirm(granted(sub.qos()));
                    accepted.push(filter);
                } else {
                    refused = true;
                }
            }
            if refused {
                // DESIGN.md section 3: outside the prefix, v3.1.1 is disconnected.
                return Ok(v3::ProtocolMessage::Subscribe(s).disconnect());
            }
            let ack = s.ack();
            subscribed(session, accepted).await;
            Ok(ack)
        }
        v3::ProtocolMessage::Unsubscribe(s) => {
            let gone: Vec<String> = s.iter().map(ToString::to_string).collect();
            session.subscriptions.borrow_mut().retain(|f| !gone.contains(f));
            Ok(s.ack())
        }
        v3::ProtocolMessage::Disconnect(d) => {
            session.graceful.set(true);
            Ok(d.ack())
        }
        other => Ok(other.ack()),
    }
}

async fn protocol_v5(
    session: &v5::Session<DeviceSession>,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, EndpointError> {
    match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            let mut accepted = Vec::new();
            for mut sub in s.iter_mut() {
                let filter = sub.topic().to_string();
                if session
                    .gateway
                    .check_subscription(&session.device, &filter)
                    .is_ok()
                {
                    sub.confirm(granted(sub.options().qos));
                    accepted.push(filter);
                } else {
                    sub.fail(SubscribeAckReason::NotAuthorized);
                }
            }
            let ack = s.ack();
            subscribed(session, accepted).await;
            Ok(ack)
        }
        v5::ProtocolMessage::Unsubscribe(s) => {
            let gone: Vec<String> = s.iter().map(ToString::to_string).collect();
            session.subscriptions.borrow_mut().retain(|f| !gone.contains(f));
            Ok(s.ack())
        }
        v5::ProtocolMessage::Disconnect(d) => {
            let with_will = d.packet().reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
            session.graceful.set(!with_will);
            Ok(d.ack())
        }
        other => Ok(other.ack()),
    }
}

async fn control_v5(ctl: Control<EndpointError>) -> Result<Option<v5::codec::Encoded>, EndpointError> {
    let reason_code = match &ctl {
        Control::Stop(Reason::Error(e)) => match e.get_ref() {
            EndpointError::NotAuthorized(_) => DisconnectReasonCode::NotAuthorized,
            EndpointError::Storage(_) => DisconnectReasonCode::UnspecifiedError,
            EndpointError::Payload(_) => DisconnectReasonCode::PayloadFormatInvalid,
        },
        _ => return Ok(None),
    };
    Ok(Some(
        v5::codec::Packet::from(v5::codec::Disconnect {
            reason_code,
            ..Default::default()
        })
        .into(),
    ))
}

async fn control_v3(_ctl: Control<EndpointError>) -> Result<Option<v3::codec::Encoded>, EndpointError> {
    Ok(None)
}

/// Publishes one connection may have in flight (being stored) at once. More stay unread in the
/// socket, so TCP back-pressure slows the device instead of the hub buffering without bound.
const MAX_IN_FLIGHT: usize = 16;

/// The in-flight limit of a connection. ntex-mqtt 9.0.0's own limit lets every request through
/// once it has seen a publish (its flag for publishes whose payload arrives in chunks is never
/// reset between publishes), so a client decided how many publishes the hub held: measured,
/// 10,000 devices with 100 each in flight took 4 GB. This one counts publishes and other packets,
/// and lets only the payload chunks of a publish still being received pass a full count.
#[derive(Clone, Copy, Debug)]
struct InFlightLimit;

struct InFlightLimited<S> {
    service: S,
    count: Rc<InFlightCount>,
    /// A publish whose payload is still arriving: its chunks must reach it.
    streaming: Cell<bool>,
}

#[derive(Default)]
struct InFlightCount {
    current: Cell<usize>,
    waker: ntex_util::task::LocalWaker,
}

/// Decrements the count when a request is done (or dropped with its connection).
struct InFlightGuard(Rc<InFlightCount>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.current.set(self.0.current.get().saturating_sub(1));
        self.0.waker.wake();
    }
}

impl<S, AppSt> ntex_service::Middleware<S, v3::Session<AppSt>> for InFlightLimit {
    type Service = InFlightLimited<S>;
    fn create(&self, _: &v3::Session<AppSt>, service: S) -> Self::Service {
        InFlightLimited {
            service,
            count: Rc::default(),
            streaming: Cell::new(false),
        }
    }
}

impl<S, AppSt> ntex_service::Middleware<S, v5::Session<AppSt>> for InFlightLimit {
    type Service = InFlightLimited<S>;
    fn create(&self, _: &v5::Session<AppSt>, service: S) -> Self::Service {
        InFlightLimited {
            service,
            count: Rc::default(),
            streaming: Cell::new(false),
        }
    }
}

/// What the limit needs to know of a decoded packet.
trait Decoded {
    /// A payload chunk: `Some(last chunk?)`.
    fn chunk(&self) -> Option<bool>;
    /// A publish whose payload has not arrived whole.
    fn incomplete_publish(&self) -> bool;
}

impl Decoded for v3::codec::Decoded {
    fn chunk(&self) -> Option<bool> {
        match self {
            Self::PayloadChunk(_, eof) => Some(*eof),
            _ => None,
        }
    }
    fn incomplete_publish(&self) -> bool {
        matches!(self, Self::Publish(p, bytes, _) if (bytes.len() as u64) < u64::from(p.payload_size))
    }
}

impl Decoded for v5::codec::Decoded {
    fn chunk(&self) -> Option<bool> {
        match self {
            Self::PayloadChunk(_, eof) => Some(*eof),
            _ => None,
        }
    }
    fn incomplete_publish(&self) -> bool {
        matches!(self, Self::Publish(p, bytes, _) if (bytes.len() as u64) < u64::from(p.payload_size))
    }
}

impl<S, St, Req> ntex_service::Service<St, Req> for InFlightLimited<S>
where
    S: ntex_service::Service<St, Req>,
    Req: Decoded,
{
    type Res = S::Res;
    type Error = S::Error;

    async fn ready(&self, ctx: ntex_service::Ctx<'_, Self, St>) -> Result<(), S::Error> {
        if !self.streaming.get() {
            std::future::poll_fn(|cx| {
                self.count.waker.register(cx.waker());
                if self.count.current.get() < MAX_IN_FLIGHT {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
        }
        ctx.ready(&self.service).await
    }

    async fn call(&self, req: Req, ctx: ntex_service::Ctx<'_, Self, St>) -> Result<S::Res, S::Error> {
        if let Some(last) = req.chunk() {
            if last {
                self.streaming.set(false);
            }
            return ctx.call(&self.service, req).await;
        }
        self.streaming.set(req.incomplete_publish());
        self.count.current.set(self.count.current.get() + 1);
        let _done = InFlightGuard(self.count.clone());
        ctx.call(&self.service, req).await
    }

    ntex_service::forward_shutdown!(St, service);
}

/// The MQTT service (both protocol versions) for one worker (a macro: the factory's type is
/// unnameable).
macro_rules! mqtt_service {
    ($hub:expr) => {{
        let h3: Arc<Gateway> = $hub;
        let h5 = h3.clone();
        MqttServer::new()
            .v3(
                v3::MqttServer::new(async |s: &v3::Session<DeviceSession>, p| publish_v3(s, p).await)
                    .control(control_v3)
                    .protocol(async |s: &v3::Session<DeviceSession>, m| protocol_v3(s, m).await)
                    .replace_middlewares(InFlightLimit)
                    .build(move |c| connect_v3(h3.clone(), c)),
            )
            .v5(
                v5::MqttServer::new(async |s: &v5::Session<DeviceSession>, p| publish_v5(s, p).await)
                    .control(control_v5)
                    .protocol(async |s: &v5::Session<DeviceSession>, m| protocol_v5(s, m).await)
                    .replace_middlewares(InFlightLimit)
                    .build(move |c| connect_v5(h5.clone(), c)),
            )
    }};
}

/// The running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Bound plain address.
    pub plain: Option<SocketAddr>,
    /// Bound TLS address.
    pub tls: Option<SocketAddr>,
    server: ntex_server::Server<ntex_server::net::Connection>,
    thread: std::thread::JoinHandle<()>,
}

/// Listeners the endpoint serves.
#[derive(Debug)]
pub struct Listeners {
    /// Plain MQTT.
    pub plain: Option<std::net::TcpListener>,
    /// MQTT over TLS with its rustls configuration.
    pub tls: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
}

/// Starts the endpoint on its own thread.
pub fn start(
    hub: Arc<Gateway>,
    listeners: Listeners,
    workers: usize,
    max_packet_bytes: u32,
) -> std::io::Result<Endpoint> {
    let plain = listeners
        .plain
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    let tls = listeners.tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let (ready_tx, ready_rx) =
        std::sync::mpsc::channel::<std::io::Result<ntex_server::Server<ntex_server::net::Connection>>>();
    let thread = std::thread::Builder::new().name("mqtt".into()).spawn(move || {
        let system = ntex_rt::System::build()
            .name("mqtt")
            .disable_signals()
            .build(ntex_net::DefaultRuntime);
        let result = system.block_on(async move {
            let cfg = || -> SharedCfg {
                SharedCfg::new("MQTT")
                    .add(MqttServiceConfig::new().set_max_size(max_packet_bytes))
                    .into()
            };
            let built = (|| -> std::io::Result<_> {
                let mut builder = ntex_server::net::build().workers(workers).disable_signals();
                if let Some(l) = listeners.plain {
                    let hub = hub.clone();
                    builder = builder.listen("mqtt", l, cfg(), async move |_| mqtt_service!(hub.clone()))?;
                }
                if let Some((l, config)) = listeners.tls {
                    let hub = hub.clone();
                    builder = builder.listen("mqtts", l, cfg(), async move |_| {
                        ntex_service::service(ntex_tls::rustls::TlsAcceptor::new(config.clone()))
                            .map_err(|e| tracing::debug!(error = ?e, "TLS handshake failed"))
                            .and_then(ntex_service::service(mqtt_service!(hub.clone())).map_err(
                                |e| tracing::debug!(error = ?e, "device connection ended with an error"),
                            ))
                    })?;
                }
                Ok(builder.run())
            })();
            match built {
                Ok(server) => {
                    let _ = ready_tx.send(Ok(server.clone()));
                    server.await
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(())
                }
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "device endpoint stopped with an error");
        }
    })?;
    let server = ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("the device endpoint thread ended during start"))??;
    Ok(Endpoint {
        plain,
        tls,
        server,
        thread,
    })
}

impl Endpoint {
    /// Stops accepting, closes device connections, and waits for the endpoint thread.
    pub async fn stop(self, connections: &crate::transport::Connections) {
        connections.close_all(CloseReason::ServerShutdown);
        self.server.stop(true).await;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ntex_service::{Ctx, Pipeline, Service};

    use super::*;

    /// Holds every publish until released; chunks pass at once.
    struct Held(Rc<tokio::sync::Semaphore>);

    impl Service<(), v3::codec::Decoded> for Held {
        type Res = ();
        type Error = ();
        async fn call(&self, req: v3::codec::Decoded, _: Ctx<'_, Self, ()>) -> Result<(), ()> {
            if req.chunk().is_none() {
                self.0.acquire().await.map_err(|_| ())?.forget();
            }
            Ok(())
        }
    }

    fn publish(payload: usize, arrived: usize) -> v3::codec::Decoded {
        let p = v3::codec::Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from_static("devices/d/te/device/main///m/x"),
            packet_id: std::num::NonZeroU16::new(1),
            payload_size: u32::try_from(payload).unwrap(),
        };
        v3::codec::Decoded::Publish(p, Bytes::from(vec![b'1'; arrived]), 0)
    }

    async fn is_ready(p: &Pipeline<v3::codec::Decoded, (), ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), p.ready())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_connection_has_at_most_16_publishes_in_flight_but_chunks_of_a_streamed_one_pass() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let release = Rc::new(tokio::sync::Semaphore::new(0));
                let limited = InFlightLimited {
                    service: Held(release.clone()),
                    count: Rc::default(),
                    streaming: Cell::new(false),
                };
                let p = Pipeline::new((), limited);
                for _ in 0..MAX_IN_FLIGHT {
                    assert!(is_ready(&p).await);
                    tokio::task::spawn_local(p.call_static(publish(1, 1)));
                    tokio::task::yield_now().await;
                }
                assert!(!is_ready(&p).await, "17th publish admitted");
                release.add_permits(1);
                tokio::task::yield_now().await;
                assert!(is_ready(&p).await, "a finished publish frees a place");

                // The place taken by a publish whose payload is still arriving: its chunks
                // pass the full count; after the last one the limit holds again.
                tokio::task::spawn_local(p.call_static(publish(100, 10)));
                tokio::task::yield_now().await;
                assert!(is_ready(&p).await, "chunks of the streamed publish must pass");
                p.call(v3::codec::Decoded::PayloadChunk(Bytes::from(vec![0; 50]), false))
                    .await
                    .unwrap();
                assert!(is_ready(&p).await);
                p.call(v3::codec::Decoded::PayloadChunk(Bytes::from(vec![0; 40]), true))
                    .await
                    .unwrap();
                assert!(!is_ready(&p).await, "the limit holds again after the last chunk");
            })
            .await;
    }
}
