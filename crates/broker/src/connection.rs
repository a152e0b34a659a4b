//! One client connection: CONNECT and authentication, then packets in,
//! deliveries out, until it ends. Protocol rules are checked here with the
//! statement they implement.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use mqtt::topic::SharedFilter;
use mqtt::{
    Auth, ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    PubResponse, Publish, PublishRef, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, encode, encode_publish,
};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::auth::{Action, AuthConversation, AuthStep, ClientIdentity, ConnectRequest};
use crate::broker::{BrokerShared, key, read, write};
use crate::message::Message;
use crate::persistence::Record;
use crate::receipt::{AckHold, Holding, Settled};
use crate::session::{Delivery, Inflight, Session, StoredWill, packet_id_of};
use crate::stats::add;
use crate::transport::Transport;
use crate::tree::Subscription;

/// Where a connection comes from.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub peer: SocketAddr,
    pub listener: &'static str,
    pub certificate_fingerprint: Option<String>,
}

/// Why a connection ends: the DISCONNECT reason an MQTT 5 client is sent
/// [MQTT-4.13.1-1], and whether the will goes out [MQTT-3.1.2-8].
#[derive(Debug)]
struct Ending {
    reason: Option<ReasonCode>,
    publish_will: bool,
    why: String,
}

impl Ending {
    fn protocol(reason: ReasonCode, why: impl Into<String>) -> Self {
        Ending {
            reason: Some(reason),
            publish_will: true,
            why: why.into(),
        }
    }

    fn closed(why: impl Into<String>) -> Self {
        Ending {
            reason: None,
            publish_will: true,
            why: why.into(),
        }
    }
}

impl From<DecodeError> for Ending {
    fn from(e: DecodeError) -> Self {
        Ending::protocol(e.reason_code(), e.to_string())
    }
}

/// What decoding the read buffer came to.
enum Next {
    Handled,
    /// An AUTH packet, for the authenticator to answer.
    Auth(Box<mqtt::Auth>),
    /// No whole packet in the buffer.
    NeedMore,
}

/// Counts open connections for the shutdown to wait on. Weak, so that a
/// hibernating connection does not keep a dropped broker alive.
struct OpenGuard(Weak<BrokerShared>);

impl OpenGuard {
    fn new(shared: &Arc<BrokerShared>) -> Self {
        shared.open_connections.send_modify(|n| *n += 1);
        OpenGuard(Arc::downgrade(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared
                .open_connections
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

/// What a connection knows once CONNACK has gone out.
struct Active {
    session: Arc<Session>,
    generation: u64,
    identity: ClientIdentity,
    /// The client's keep-alive in seconds, after any server override; 0 is none.
    keep_alive_secs: u16,
    client_receive_maximum: u16,
    /// The largest packet the client accepts [MQTT-3.1.2-25]; `u32::MAX` when it set none.
    client_max_packet: u32,
    client_alias_maximum: u16,
    /// Topic aliases and enhanced authentication, boxed together and made
    /// when first needed: most clients use neither, and every idle
    /// connection carries this pointer.
    rare: Option<Box<RareState>>,
    /// Milliseconds this connection waits with nothing to do before it
    /// hibernates; doubled each time it is woken soon after.
    idle_limit_ms: u32,
}

impl Active {
    /// How long the connection may stay silent: one and a half times its
    /// keep-alive [MQTT-3.1.2-24].
    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_secs > 0)
            .then(|| Duration::from_millis(u64::from(self.keep_alive_secs) * 1500))
    }

    fn idle_limit(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_limit_ms))
    }

    fn aliases(&self) -> Option<&TopicAliases> {
        self.rare.as_ref().map(|r| &r.aliases)
    }

    fn aliases_mut(&mut self) -> &mut TopicAliases {
        &mut self.rare.get_or_insert_default().aliases
    }

    fn enhanced_auth(&self) -> Option<&EnhancedAuth> {
        self.rare.as_ref()?.enhanced_auth.as_ref()
    }

    fn enhanced_auth_mut(&mut self) -> Option<&mut EnhancedAuth> {
        self.rare.as_mut()?.enhanced_auth.as_mut()
    }
}

/// What few connections need (see `Active::rare`).
#[derive(Default)]
struct RareState {
    aliases: TopicAliases,
    /// Only for a client that authenticated with a method [MQTT-4.12.0-6].
    enhanced_auth: Option<EnhancedAuth>,
}

/// Topic aliases of one connection, each direction its own; they live as
/// long as the network connection [MQTT-3.3.2-7].
#[derive(Default)]
struct TopicAliases {
    inbound: HashMap<u16, Arc<str>>,
    outbound: HashMap<Arc<str>, u16>,
}

/// What re-authentication needs: the method and the request it was made with.
struct EnhancedAuth {
    method: String,
    request: ConnectRequest,
    conversation: Option<AuthConversation>,
}

/// A connection's whole life. Not an `async fn`: its arguments would stay in
/// the task beside the `Connection` they are moved into (128 bytes each).
pub(crate) fn run(
    shared: Arc<BrokerShared>,
    transport: Transport,
    info: ConnectionInfo,
) -> impl Future<Output = ()> + Send {
    let open = OpenGuard::new(&shared);
    Connection::new(shared, transport, info, None, open).run()
}

struct Connection {
    shared: Arc<BrokerShared>,
    transport: Transport,
    info: ConnectionInfo,
    decoder: Decoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    open: OpenGuard,
    /// Acknowledgements not yet sent, oldest first: waiting for a keeping
    /// subscriber's receipt, or behind one that is, since PUBACKs and
    /// PUBRECs go in the order their PUBLISHes came [MQTT-4.6.0-2]
    /// [MQTT-4.6.0-3].
    held: std::collections::VecDeque<HeldAck>,
}

/// One acknowledgement a [`Connection`] holds back.
struct HeldAck {
    packet_id: u16,
    kind: Answer,
    reason: ReasonCode,
    hold: Option<Arc<AckHold>>,
}

/// Which packet a held acknowledgement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named as the packets they are
enum Answer {
    /// To a client's QoS 1 PUBLISH.
    PubAck,
    /// To a client's QoS 2 PUBLISH.
    PubRec,
    /// To a client's PUBREC of our QoS 2 PUBLISH: held until the journal has
    /// the delivery as released, or after a crash the PUBLISH would go
    /// again with an identifier the client has already let go.
    PubRel,
    /// To a client's PUBREL: held until the journal has the identifier
    /// free, or after a crash a new message under it would be taken for the
    /// old one.
    PubComp,
}

/// A connection while it hibernates (see `hibernation`): what it needs to
/// go on where it stopped, without a task, buffers or a reactor entry.
pub(crate) struct Hibernated {
    pub(crate) stream: mio::net::TcpStream,
    version: ProtocolVersion,
    active: Active,
    slept_at: Instant,
    /// How long before `slept_at` the last packet was read, in whole
    /// milliseconds (rounded down, so the keep-alive deadline it gives is
    /// never earlier than the client's due): a second `Instant` would be
    /// 12 bytes more per sleeper.
    quiet_ms: u32,
    open: OpenGuard,
}

impl Hibernated {
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.active.session
    }

    /// When the client's last packet was read.
    fn last_read(&self) -> Instant {
        self.slept_at - Duration::from_millis(u64::from(self.quiet_ms))
    }

    /// When the keep-alive runs out [MQTT-3.1.2-24]: it is woken then.
    pub(crate) fn keep_alive_deadline(&self) -> Option<std::time::Instant> {
        self.active
            .keep_alive()
            .map(|k| (self.last_read() + k).into_std())
    }
}

/// How the serve loop stopped.
enum Served {
    Ended(Ending),
    /// Nothing to do for `idle_limit`: hand the connection to hibernation.
    Idle {
        last_read: Instant,
    },
}

/// A connection that slept longer than this before it was woken was idle:
/// its idle limit goes back to the configured one. Woken sooner, its limit
/// becomes twice its last quiet spell, up to this: a device publishing every
/// few seconds hibernates once and then stays awake.
const LONGEST_IDLE_LIMIT: Duration = Duration::from_secs(10);

fn configured_idle_limit_ms(settings: &crate::settings::Settings) -> u32 {
    settings.hibernate_after_ms.try_into().unwrap_or(u32::MAX)
}

/// Brings a hibernated connection back as a task.
pub(crate) async fn wake_up(sleeper: Box<Hibernated>) {
    let last_read = sleeper.last_read();
    let Hibernated {
        stream,
        version,
        mut active,
        slept_at,
        open,
        ..
    } = *sleeper;
    let Some(shared) = open.0.upgrade() else {
        return;
    };
    let configured = configured_idle_limit_ms(&shared.settings);
    let slept = slept_at.elapsed();
    // Woken soon: a device with a period. Waiting twice its last quiet
    // spell keeps it awake from now on instead of a sleep per message.
    active.idle_limit_ms = if slept < LONGEST_IDLE_LIMIT {
        let longest = LONGEST_IDLE_LIMIT.as_millis() as u32;
        (active
            .idle_limit_ms
            .saturating_add(slept.as_millis() as u32))
        .saturating_mul(2)
        .min(longest.max(configured))
    } else {
        configured
    };
    let stream = match tokio::net::TcpStream::from_std(stream.into()) {
        Ok(stream) => stream,
        Err(e) => {
            debug!(client_id = %active.session.client_id, error = %e, "cannot wake a hibernated connection");
            leave(&shared, &active, true);
            return;
        }
    };
    // Only plain TCP hibernates; what else a `ConnectionInfo` holds is
    // needed at CONNECT only.
    let info = ConnectionInfo {
        peer: stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        listener: "tcp",
        certificate_fingerprint: None,
    };
    Connection::new(shared, Transport::tcp(stream), info, Some(version), open)
        .live(active, Some(last_read))
        .await;
}

/// The protocol level of a CONNECT that did not decode, read from its
/// variable header, so the refusal can be a CONNACK the client understands.
fn sniff_connect_level(buf: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]));
    buf.get(i + 3 + name_len).copied()
}

impl Connection {
    /// A connection before CONNECT (`version` None: the decoder learns it),
    /// or one woken from hibernation with the version it has.
    fn new(
        shared: Arc<BrokerShared>,
        transport: Transport,
        info: ConnectionInfo,
        version: Option<ProtocolVersion>,
        open: OpenGuard,
    ) -> Self {
        let mut decoder = version.map_or_else(Decoder::new, Decoder::with_version);
        decoder.set_max_packet_size(shared.settings.max_packet_size as usize);
        Connection {
            shared,
            transport,
            info,
            decoder,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version: version.unwrap_or(ProtocolVersion::V3_1_1),
            open,
            held: std::collections::VecDeque::new(),
        }
    }

    async fn run(mut self) {
        // Every step boxed: their state is needed once, and would otherwise
        // take room in every connection's task for the connection's life.
        let Some(connect) = Box::pin(self.read_connect()).await else {
            Box::pin(self.transport.close()).await;
            return;
        };
        let Some(active) = Box::pin(self.accept(connect)).await else {
            Box::pin(self.refused()).await;
            return;
        };
        self.shared
            .stats
            .clients_connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        add(&self.shared.stats.connections_total, 1);
        self.shared.auth.connected(&active.identity);
        debug!(client_id = %active.session.client_id, peer = %self.info.peer, version = %self.version, "connected");
        self.live(active, None).await;
    }

    /// Serves a connection after CONNACK (or after hibernation, from
    /// `last_read`) until it ends or hibernates.
    async fn live(mut self, mut active: Active, resumed: Option<Instant>) {
        match Box::pin(self.serve(&mut active, resumed)).await {
            Served::Ended(ending) => Box::pin(self.finish(active, ending)).await,
            Served::Idle { last_read } => self.hibernate(active, last_read),
        }
    }

    /// Gives up the task: the socket goes to the hibernation's epoll set,
    /// the rest into a `Hibernated`.
    fn hibernate(self, active: Active, last_read: Instant) {
        let Connection {
            shared,
            transport,
            version,
            open,
            ..
        } = self;
        // Only plain TCP comes here (`can_hibernate`).
        let Some(Ok(stream)) = transport.into_tcp().map(tokio::net::TcpStream::into_std) else {
            debug!(client_id = %active.session.client_id, "cannot hibernate: the socket is lost");
            leave(&shared, &active, true);
            return;
        };
        let now = Instant::now();
        let sleeper = Box::new(Hibernated {
            stream: mio::net::TcpStream::from_std(stream),
            version,
            active,
            slept_at: now,
            quiet_ms: now
                .saturating_duration_since(last_read)
                .as_millis()
                .try_into()
                .unwrap_or(u32::MAX),
            open,
        });
        let session = sleeper.session().clone();
        let generation = sleeper.active.generation;
        match shared.hibernation.sleep(sleeper) {
            // What came in while it fell asleep wakes it at once.
            Ok(()) => {
                if shared.is_shutting_down() || session.lock().has_work(generation) {
                    shared.wake_hibernated(&session);
                }
            }
            Err(sleeper) => {
                tokio::spawn(wake_up(sleeper));
            }
        }
    }

    /// The end of a connection refused at CONNECT: the CONNACK, then close.
    async fn refused(&mut self) {
        let _ = self.flush().await;
        self.transport.close_and_drain(self.drain_idle()).await;
    }

    /// The end of a connection that got as far as CONNACK; boxed, so its
    /// state is not part of every connection's task.
    async fn finish(&mut self, active: Active, ending: Ending) {
        debug!(client_id = %active.session.client_id, why = %ending.why, "disconnected");
        if let Some(reason) = ending.reason {
            let violation = reason.is_error()
                && !matches!(
                    reason,
                    ReasonCode::KeepAliveTimeout
                        | ReasonCode::SessionTakenOver
                        | ReasonCode::ServerShuttingDown
                        | ReasonCode::AdministrativeAction
                );
            if violation {
                add(&self.shared.stats.malformed_packets, 1);
            }
            // [MQTT-4.13.1-1] MQTT 5: DISCONNECT with the reason, then close.
            if self.version.is_v5() && reason.allowed_in(mqtt::PacketType::Disconnect) {
                let mut d = Disconnect::new(reason);
                if reason.is_error() {
                    d.properties.reason_string = Some(ending.why.clone());
                }
                self.send(&active, Packet::Disconnect(d));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
        leave(&self.shared, &active, ending.publish_will);
        if ending.reason.is_some() {
            self.transport.close_and_drain(self.drain_idle()).await;
        } else {
            self.transport.close().await;
        }
    }

    fn drain_idle(&self) -> Duration {
        if self.shared.is_shutting_down() {
            crate::transport::DRAIN_IDLE_AT_SHUTDOWN
        } else {
            crate::transport::DRAIN_IDLE
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = self.transport.write_all(&self.wbuf).await;
        add(&self.shared.stats.bytes_sent, self.wbuf.len() as u64);
        // Give the buffer back: an idle connection holds no write buffer.
        self.wbuf = BytesMut::new();
        result
    }

    /// Encodes a packet into the write buffer. A packet too large for the
    /// client loses its reason string and user properties first
    /// [MQTT-3.1.2-25].
    fn send(&mut self, active: &Active, packet: Packet) {
        self.send_limited(Some(active.client_max_packet as usize), packet);
    }

    fn send_limited(&mut self, max: Option<usize>, mut packet: Packet) {
        let start = self.wbuf.len();
        if encode(&packet, self.version, &mut self.wbuf).is_err() {
            return;
        }
        if let Some(max) = max
            && self.wbuf.len() - start > max
        {
            self.wbuf.truncate(start);
            strip_diagnostics(&mut packet);
            if encode(&packet, self.version, &mut self.wbuf).is_err()
                || self.wbuf.len() - start > max
            {
                self.wbuf.truncate(start);
                return;
            }
        }
        add(&self.shared.stats.messages_sent, 1);
    }

    fn connack(&mut self, reason: ReasonCode, why: &str) {
        let mut properties = Properties::default();
        if self.version.is_v5() {
            properties.reason_string = Some(why.to_owned());
        }
        if reason.is_error() {
            add(
                &self.shared.stats.auth_failures,
                u64::from(matches!(
                    reason,
                    ReasonCode::BadUserNameOrPassword
                        | ReasonCode::NotAuthorized
                        | ReasonCode::BadAuthenticationMethod
                )),
            );
            add(
                &self.shared.stats.client_id_refusals,
                u64::from(reason == ReasonCode::ClientIdentifierNotValid),
            );
        }
        self.send_limited(
            None,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties,
            }),
        );
    }

    /// Reads one packet, waiting at most `limit`.
    async fn read_packet(&mut self, limit: Duration) -> Result<Packet, Ending> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.rbuf)? {
                add(&self.shared.stats.messages_received, 1);
                return Ok(packet);
            }
            match tokio::time::timeout_at(deadline, self.transport.read(&mut self.rbuf)).await {
                Err(_) => return Err(Ending::closed("timed out")),
                Ok(Ok(0)) => return Err(Ending::closed("connection closed")),
                Ok(Ok(n)) => add(&self.shared.stats.bytes_received, n as u64),
                Ok(Err(e)) => return Err(Ending::closed(e.to_string())),
            }
        }
    }

    /// The first packet must be CONNECT [MQTT-3.1.0-1], within the connect
    /// timeout.
    async fn read_connect(&mut self) -> Option<Connect> {
        let deadline =
            Instant::now() + Duration::from_secs(self.shared.settings.connect_timeout_secs);
        let mut level = None;
        let error = loop {
            level = level.or_else(|| sniff_connect_level(&self.rbuf));
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(connect))) => {
                    add(&self.shared.stats.messages_received, 1);
                    // Unboxed here: a box moved out of in the caller would be
                    // freed only at the end of the connection (840 bytes).
                    return Some(*connect);
                }
                Ok(Some(_)) => return None,
                Ok(None) => {}
                Err(e) => break e,
            }
            match tokio::time::timeout_at(deadline, self.transport.read(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => add(&self.shared.stats.bytes_received, n as u64),
                _ => return None,
            }
        };
        add(&self.shared.stats.malformed_packets, 1);
        debug!(peer = %self.info.peer, %error, "refused before CONNACK");
        let reason = error.reason_code();
        if reason == ReasonCode::UnsupportedProtocolVersion {
            // [MQTT-3.1.2-2] CONNACK 0x01 (0x84 in 5.0), then close.
            self.version = ProtocolVersion::V3_1_1;
            self.connack(reason, &error.to_string());
        } else if level == Some(5) {
            // [MQTT-4.13.1-1] a malformed MQTT 5 CONNECT gets a CONNACK with the reason.
            self.version = ProtocolVersion::V5;
            let reason = if reason.allowed_in(mqtt::PacketType::ConnAck) {
                reason
            } else {
                ReasonCode::MalformedPacket
            };
            self.connack(reason, &error.to_string());
        }
        let _ = self.flush().await;
        None
    }

    /// Checks CONNECT, authenticates, attaches the session and answers CONNACK.
    async fn accept(&mut self, connect: Connect) -> Option<Active> {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        self.version = connect.protocol;
        let v5 = self.version.is_v5();

        if shared.is_shutting_down() {
            self.connack(ReasonCode::ServerUnavailable, "server shutting down");
            return None;
        }
        let mut assigned_client_id = None;
        let bound_to_username = settings
            .client_id_must_match_username
            .then_some(connect.username.as_deref())
            .flatten();
        let client_id = if connect.client_id.is_empty() {
            // [MQTT-3.1.3-8] 3.1.1 refuses an empty id with a persistent
            // session; 3.1 requires an id (MQTT 3.1 §3.1); 5.0 assigns one
            // [MQTT-3.2.2-16].
            if self.version == ProtocolVersion::V3_1 || (!v5 && !connect.clean_start) {
                self.connack(
                    ReasonCode::ClientIdentifierNotValid,
                    "empty client identifier",
                );
                return None;
            }
            // A login bound to its user name is given that name [MQTT-3.1.3-6].
            let id = bound_to_username.map_or_else(|| shared.next_client_id(), str::to_owned);
            if v5 {
                assigned_client_id = Some(id.clone());
            }
            id
        } else {
            connect.client_id.clone()
        };
        // The broker's own sessions (the platform's ingest) cannot be
        // named, resumed or taken over from a listener.
        if shared.is_reserved_client_id(&client_id) {
            warn!(peer = %self.info.peer, client_id = %client_id, "CONNECT refused: client identifier reserved for an in-process session");
            self.connack(
                ReasonCode::ClientIdentifierNotValid,
                "client identifier reserved",
            );
            return None;
        }
        if let Some(username) = bound_to_username
            && username != client_id
        {
            warn!(peer = %self.info.peer, client_id = %client_id, username, "CONNECT refused: client identifier is not the user name");
            self.connack(
                ReasonCode::ClientIdentifierNotValid,
                "client identifier must be the user name",
            );
            return None;
        }
        let connected = shared
            .stats
            .clients_connected
            .load(std::sync::atomic::Ordering::Relaxed);
        if connected as usize >= settings.max_connections {
            self.connack(ReasonCode::ServerBusy, "connection limit reached");
            return None;
        }

        let request = ConnectRequest {
            client_id: client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.clone(),
            peer: self.info.peer,
            listener: self.info.listener,
            certificate_fingerprint: self.info.certificate_fingerprint.clone(),
            protocol: self.version,
        };
        let auth_method = if v5 {
            connect.properties.authentication_method.clone()
        } else {
            None
        };
        let mut auth_data_out = None;
        let identity = match &auth_method {
            Some(method) => {
                let mut conversation = AuthConversation::default();
                let mut data = connect.properties.authentication_data.clone();
                loop {
                    match shared
                        .auth
                        .enhanced_auth(&request, method, data.take(), &mut conversation)
                        .await
                    {
                        AuthStep::Continue(out) => {
                            // [MQTT-4.12.0-1] continue with AUTH 0x18.
                            self.send_limited(
                                None,
                                Packet::Auth(Auth {
                                    reason: ReasonCode::ContinueAuthentication,
                                    properties: Properties {
                                        authentication_method: Some(method.clone()),
                                        authentication_data: out,
                                        ..Properties::default()
                                    },
                                }),
                            );
                            if self.flush().await.is_err() {
                                return None;
                            }
                            let limit = Duration::from_secs(settings.connect_timeout_secs);
                            match self.read_packet(limit).await {
                                Ok(Packet::Auth(auth))
                                    if auth.reason == ReasonCode::ContinueAuthentication
                                        && auth.properties.authentication_method.as_deref()
                                            == Some(method) =>
                                {
                                    conversation.step += 1;
                                    data = auth.properties.authentication_data;
                                }
                                Ok(_) => {
                                    // [MQTT-4.12.0-4] [MQTT-4.12.0-5] only AUTH with the same method.
                                    self.connack(
                                        ReasonCode::ProtocolError,
                                        "expected AUTH with the same method",
                                    );
                                    return None;
                                }
                                Err(_) => return None,
                            }
                        }
                        AuthStep::Success(identity, out) => {
                            auth_data_out = out;
                            break identity;
                        }
                        AuthStep::Failure(reason) => {
                            self.connack(reason, "authentication failed");
                            return None;
                        }
                    }
                }
            }
            None => match shared.auth.authenticate(&request).await {
                Ok(identity) => identity,
                Err(reason) => {
                    self.connack(reason, "authentication failed");
                    return None;
                }
            },
        };

        let will = connect.will.clone().and_then(|will| {
            if shared.will_allowed(&identity, &will) {
                let delay = if v5 {
                    will.properties.will_delay_interval.unwrap_or(0)
                } else {
                    0
                };
                Some(Box::new(StoredWill {
                    will,
                    delay: Duration::from_secs(u64::from(delay)),
                }))
            } else {
                debug!(client_id = %client_id, topic = %will.topic, "will not authorized; dropped");
                None
            }
        });

        // [MQTT-3.1.2-23] 5.0: the session lives as long as the client asks,
        // capped by the server. 3.1.1: clean session ends it with the
        // connection, otherwise it is kept (up to the server's cap).
        let requested = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested.min(settings.max_session_expiry);

        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if v5 && keep_alive > settings.max_keep_alive {
            // [MQTT-3.2.2-21] the client uses the Server Keep Alive instead.
            keep_alive = settings.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }

        // The password has done its work; keeping it would pin the CONNECT's
        // read buffer for the life of the connection.
        let mut request = request;
        request.password = None;
        // One copy of the id for the session and the identity when they agree.
        let client_id: Arc<str> = if *identity.client_id == *client_id {
            identity.client_id.clone()
        } else {
            client_id.into()
        };
        let attached = shared.attach(&client_id, self.version, connect.clean_start, expiry, will);
        attached
            .session
            .lock()
            .set_queue_limit(identity.max_queued_messages.map(|limit| limit as usize));
        if attached.session_present {
            // What the client may read is decided by the ACL of now, not of
            // when it subscribed (a device moved to another model, say).
            shared.revoke_unauthorized(&attached.session, &identity);
        }
        let p = &connect.properties;
        let active = Active {
            session: attached.session,
            generation: attached.generation,
            identity,
            keep_alive_secs: keep_alive,
            client_receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            client_max_packet: p.maximum_packet_size.unwrap_or(u32::MAX),
            client_alias_maximum: if v5 {
                p.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            idle_limit_ms: configured_idle_limit_ms(settings),
            rare: auth_method.clone().map(|method| {
                Box::new(RareState {
                    aliases: TopicAliases::default(),
                    enhanced_auth: Some(EnhancedAuth {
                        method,
                        request,
                        conversation: None,
                    }),
                })
            }),
        };

        let mut properties = Properties::default();
        if v5 {
            properties.receive_maximum = Some(settings.receive_maximum);
            properties.topic_alias_maximum = Some(settings.topic_alias_maximum);
            properties.maximum_packet_size = Some(settings.max_packet_size);
            properties.assigned_client_identifier = assigned_client_id;
            properties.server_keep_alive = server_keep_alive;
            if expiry != requested {
                properties.session_expiry_interval = Some(expiry);
            }
            properties.authentication_method = auth_method;
            properties.authentication_data = auth_data_out;
        }
        // [MQTT-3.2.2-2] [MQTT-3.2.2-3] session present only when resumed.
        self.send(
            &active,
            Packet::ConnAck(ConnAck {
                session_present: attached.session_present,
                reason: ReasonCode::Success,
                properties,
            }),
        );
        Some(active)
    }

    async fn serve(&mut self, active: &mut Active, resumed: Option<Instant>) -> Served {
        let mut last_read = resumed.unwrap_or_else(Instant::now);
        let mut last_write = Instant::now();
        let can_hibernate = self.transport.is_tcp()
            && active.idle_limit_ms > 0
            && self.shared.hibernation.available();
        // One timer for the keep-alive and for hibernation, armed once and
        // moved on only when it fires: a timer re-registered at every packet
        // costs a lock on the timer wheel per message.
        let next_timer =
            |last_read: Instant, last_write: Instant, active: &Active, now: Instant| {
                let keep_alive = active.keep_alive().map(|k| last_read + k);
                let idle = can_hibernate.then(|| {
                    // A limit passed with work pending is looked at again later.
                    let at = last_read.max(last_write) + active.idle_limit();
                    if at <= now {
                        now + active.idle_limit()
                    } else {
                        at
                    }
                });
                match (keep_alive, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
        let mut timer = next_timer(last_read, last_write, active, Instant::now())
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        if resumed.is_none() {
            self.resend_inflight(active);
        }
        let mut woken = false;
        // Deliveries in the last write, and a counter for the occasional
        // yield after a single one (see below).
        let mut batched = 0u32;
        let mut probe = 0u8;
        // One registration with the session's wake-up for as long as it does
        // not fire, instead of a new one at every turn of the loop.
        let session = active.session.clone();
        let mut wake = std::pin::pin!(session.wake.notified());
        loop {
            if self.shared.is_shutting_down() {
                // Shutdown wakes every session; what is queued goes out first.
                self.fill(active, &mut 0);
                return Served::Ended(Ending {
                    reason: Some(ReasonCode::ServerShuttingDown),
                    publish_will: true,
                    why: "server shutting down".into(),
                });
            }
            // Packets that arrived together with CONNECT or in one read.
            loop {
                // Only AUTH may wait (on the authenticator). Decoding and
                // handling the rest in a plain function keeps a packet (400
                // bytes) out of the state this loop holds while it waits.
                let handled = match self.handle_next(active) {
                    Ok(Next::Handled) => Ok(()),
                    Ok(Next::Auth(auth)) => Box::pin(self.handle_auth(active, *auth)).await,
                    Ok(Next::NeedMore) => break,
                    Err(ending) => Err(ending),
                };
                if let Err(ending) = handled {
                    return Served::Ended(ending);
                }
            }
            if std::mem::take(&mut woken) && last_write.elapsed() < BUSY_WRITER {
                // Woken for a delivery soon after a write that carried
                // several: a subscriber fed by many (fan-in). Let the tasks
                // already ready run first; what they route here goes out in
                // this write instead of a write each (fan-in wrote 0.74
                // times per message). One fed by one publisher at a time (a
                // terminal, a request and its answer) writes at once: the
                // yield only delayed it (pairs at one message in flight: p99
                // 0.6-0.9 ms with it, 0.3 ms without). Now and then a single
                // write yields too, to notice a subscriber that became busy.
                probe = probe.wrapping_add(1);
                if batched > 1 || probe == 0 {
                    tokio::task::yield_now().await;
                }
            }
            if !self.held.is_empty()
                && let Err(ending) = self.release_held(active)
            {
                return Served::Ended(ending);
            }
            // One wake-up may stand for many queued messages: when the write
            // buffer filled up before the queue emptied, go round again.
            let mut written = 0;
            let Some(more) = self.fill(active, &mut written) else {
                // Taken over: the session has a newer connection. Pass on a
                // wake-up this connection may have taken from it.
                active.session.wake.notify_one();
                return Served::Ended(Ending {
                    reason: Some(ReasonCode::SessionTakenOver),
                    publish_will: true,
                    why: "session taken over".into(),
                });
            };
            if !self.wbuf.is_empty() {
                last_write = Instant::now();
                batched = written;
            }
            if let Err(e) = self.flush().await {
                return Served::Ended(Ending::closed(e.to_string()));
            }
            if self.rbuf.is_empty() {
                // Nothing half-read: no buffer is held while waiting (the
                // transport allocates one when data is there).
                self.rbuf = BytesMut::new();
            }
            // A client whose acknowledgements wait is read no further than
            // the Receive Maximum it was given: the held queue stays bounded
            // for 3.1.1 clients too, who were never told one.
            let may_read = self.held.len() < usize::from(self.shared.settings.receive_maximum);
            tokio::select! {
                biased;
                read = self.transport.read(&mut self.rbuf), if may_read => match read {
                    Ok(0) => return Served::Ended(Ending::closed("connection closed by client")),
                    Ok(n) => {
                        add(&self.shared.stats.bytes_received, n as u64);
                        last_read = Instant::now();
                    }
                    Err(e) => return Served::Ended(Ending::closed(e.to_string())),
                },
                _ = wake.as_mut() => {
                    woken = true;
                    wake.set(session.wake.notified());
                }
                _ = std::future::ready(()), if more => {}
                _ = timer_fired(&mut timer) => {
                    let now = Instant::now();
                    if active.keep_alive().is_some_and(|k| last_read + k <= now) {
                        // [MQTT-3.1.2-24] nothing within 1.5 × keep alive.
                        return Served::Ended(Ending::protocol(ReasonCode::KeepAliveTimeout, "keep alive timeout"));
                    }
                    if can_hibernate
                        && last_read.max(last_write) + active.idle_limit() <= now
                        && self.rbuf.is_empty()
                        && self.held.is_empty()
                        && active.enhanced_auth().is_none_or(|a| a.conversation.is_none())
                        && active.session.lock().settle_idle(active.generation)
                    {
                        return Served::Idle { last_read };
                    }
                    if let (Some(t), Some(at)) = (timer.as_mut(), next_timer(last_read, last_write, active, now)) {
                        t.as_mut().reset(at);
                    }
                }
            }
        }
    }

    /// Decodes the next whole packet in the read buffer and handles it,
    /// unless it is an AUTH, which is handed back to be awaited.
    fn handle_next(&mut self, active: &mut Active) -> Result<Next, Ending> {
        match self.decoder.decode(&mut self.rbuf)? {
            None => Ok(Next::NeedMore),
            Some(packet) => {
                add(&self.shared.stats.messages_received, 1);
                match packet {
                    Packet::Auth(auth) => Ok(Next::Auth(Box::new(auth))),
                    packet => self.handle(active, packet).map(|()| Next::Handled),
                }
            }
        }
    }

    fn handle(&mut self, active: &mut Active, packet: Packet) -> Result<(), Ending> {
        let v5 = self.version.is_v5();
        match packet {
            Packet::Publish(publish) => self.handle_publish(active, publish),
            Packet::PubAck(ack) => {
                let mut state = active.session.lock();
                if let Some(seq) = state.complete(ack.packet_id, false, Some(QoS::AtLeastOnce)) {
                    self.shared.record_done(&active.session, &state, seq);
                }
                Ok(())
            }
            Packet::PubRec(rec) => {
                let mut state = active.session.lock();
                if rec.reason.is_error() {
                    // [MQTT-4.3.3] a PUBREC with an error ends the flow.
                    if let Some(seq) = state.complete(rec.packet_id, false, Some(QoS::ExactlyOnce))
                    {
                        self.shared.record_done(&active.session, &state, seq);
                    }
                    return Ok(());
                }
                let released = state.release(rec.packet_id);
                let mut holding = Holding::new(&active.session);
                if let Some(seq) = released
                    && seq != 0
                {
                    self.shared.record_kept(
                        Record::Released {
                            session: key(&active.session, &state),
                            seq,
                        },
                        &mut holding,
                    );
                }
                drop(state);
                let hold = holding.into_hold();
                let known = released.is_some();
                // [MQTT-4.3.3-4] answer PUBREC with PUBREL.
                let reason = if known || !v5 {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.answer_or_hold(active, Answer::PubRel, rec.packet_id, reason, hold);
                Ok(())
            }
            Packet::PubRel(rel) => {
                // [MQTT-4.3.3-11] PUBREL releases the id; answer PUBCOMP.
                let mut state = active.session.lock();
                let known = state.release_incoming(rel.packet_id);
                let mut holding = Holding::new(&active.session);
                if known && state.epoch() != 0 {
                    self.shared.record_kept(
                        Record::ReceiveDone {
                            session: key(&active.session, &state),
                            packet_id: rel.packet_id,
                        },
                        &mut holding,
                    );
                }
                drop(state);
                let hold = holding.into_hold();
                let reason = if known || !v5 {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.answer_or_hold(active, Answer::PubComp, rel.packet_id, reason, hold);
                Ok(())
            }
            Packet::PubComp(comp) => {
                let mut state = active.session.lock();
                if let Some(seq) = state.complete(comp.packet_id, true, None) {
                    self.shared.record_done(&active.session, &state, seq);
                }
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                self.handle_subscribe(active, subscribe);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.handle_unsubscribe(active, unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                // [MQTT-3.12.4-1]
                self.send(active, Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    let mut state = active.session.lock();
                    // [MQTT-3.14.2-2] zero at CONNECT cannot become non-zero.
                    if state.expiry_interval == 0 && expiry != 0 {
                        return Err(Ending::protocol(
                            ReasonCode::ProtocolError,
                            "session expiry set at DISCONNECT after 0 at CONNECT [MQTT-3.14.2-2]",
                        ));
                    }
                    state.expiry_interval = expiry.min(self.shared.settings.max_session_expiry);
                }
                Err(Ending {
                    reason: None,
                    // [MQTT-3.1.2-10] a normal DISCONNECT deletes the will;
                    // 0x04 asks for it to be sent.
                    publish_will: disconnect.reason == ReasonCode::DisconnectWithWillMessage,
                    why: format!("DISCONNECT {}", disconnect.reason),
                })
            }
            Packet::Auth(_) => Err(Ending::protocol(
                ReasonCode::ImplementationSpecificError,
                "AUTH is handled before this point",
            )),
            Packet::Connect(_) => Err(Ending::protocol(
                ReasonCode::ProtocolError,
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Ending::protocol(
                    ReasonCode::ProtocolError,
                    "a client does not send this packet to a server",
                ))
            }
        }
    }

    /// Re-authentication [MQTT-4.12.1]: runs through the same hook as CONNECT.
    async fn handle_auth(&mut self, active: &mut Active, auth: Auth) -> Result<(), Ending> {
        let Some(enhanced) = active.enhanced_auth_mut() else {
            // [MQTT-4.12.0-6] no AUTH without a method at CONNECT.
            return Err(Ending::protocol(
                ReasonCode::ProtocolError,
                "AUTH without enhanced authentication",
            ));
        };
        if auth.properties.authentication_method.as_deref() != Some(enhanced.method.as_str()) {
            // [MQTT-4.12.1-1] the same method as at CONNECT.
            return Err(Ending::protocol(
                ReasonCode::ProtocolError,
                "AUTH with another method",
            ));
        }
        match (auth.reason, enhanced.conversation.is_some()) {
            (ReasonCode::ReAuthenticate, false) => {
                enhanced.conversation = Some(AuthConversation::default())
            }
            (ReasonCode::ContinueAuthentication, true) => {
                if let Some(c) = enhanced.conversation.as_mut() {
                    c.step += 1;
                }
            }
            _ => {
                return Err(Ending::protocol(
                    ReasonCode::ProtocolError,
                    "unexpected AUTH reason code",
                ));
            }
        }
        let shared = self.shared.clone();
        let mut conversation = enhanced.conversation.take().unwrap_or_default();
        let step = shared
            .auth
            .enhanced_auth(
                &enhanced.request,
                &enhanced.method,
                auth.properties.authentication_data,
                &mut conversation,
            )
            .await;
        let method = enhanced.method.clone();
        let (reason, data) = match step {
            AuthStep::Continue(data) => {
                enhanced.conversation = Some(conversation);
                (ReasonCode::ContinueAuthentication, data)
            }
            AuthStep::Success(identity, data) => {
                active.identity = identity;
                (ReasonCode::Success, data)
            }
            AuthStep::Failure(reason) => {
                return Err(Ending::protocol(reason, "re-authentication failed"));
            }
        };
        self.send(
            active,
            Packet::Auth(Auth {
                reason,
                properties: Properties {
                    authentication_method: Some(method),
                    authentication_data: data,
                    ..Properties::default()
                },
            }),
        );
        Ok(())
    }

    fn handle_publish(&mut self, active: &mut Active, mut publish: Publish) -> Result<(), Ending> {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let v5 = self.version.is_v5();
        add(&shared.stats.publish_received, 1);
        // [MQTT-3.3.4-6] subscription identifiers are the server's to send.
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(Ending::protocol(
                ReasonCode::ProtocolError,
                "PUBLISH from a client with a subscription identifier [MQTT-3.3.4-6]",
            ));
        }
        // One allocation for the topic from here on: every delivery and
        // alias shares it.
        let topic: Arc<str> = match publish.properties.topic_alias {
            Some(alias) => {
                // [MQTT-3.3.2-9] [MQTT-3.3.2-10] 0 or above our maximum is invalid.
                if alias == 0 || alias > settings.topic_alias_maximum {
                    return Err(Ending::protocol(
                        ReasonCode::TopicAliasInvalid,
                        "topic alias out of range",
                    ));
                }
                if publish.topic.is_empty() {
                    match active.aliases().and_then(|a| a.inbound.get(&alias)) {
                        Some(topic) => topic.clone(),
                        None => {
                            return Err(Ending::protocol(
                                ReasonCode::ProtocolError,
                                "topic alias used before it was set [MQTT-3.3.2.3.4]",
                            ));
                        }
                    }
                } else {
                    let topic: Arc<str> = std::mem::take(&mut publish.topic).into();
                    active.aliases_mut().inbound.insert(alias, topic.clone());
                    topic
                }
            }
            None if publish.topic.is_empty() => {
                return Err(Ending::protocol(
                    ReasonCode::ProtocolError,
                    "empty topic without a topic alias [MQTT-4.7.3-1]",
                ));
            }
            None => std::mem::take(&mut publish.topic).into(),
        };
        let id = publish.packet_id;
        if publish.qos == QoS::ExactlyOnce
            && self
                .held
                .iter()
                .any(|h| h.kind == Answer::PubRec && h.packet_id == id)
        {
            // Resent while its PUBREC waits for a receipt: that PUBREC
            // answers both, and the message goes on once [MQTT-4.3.3-10].
            return Ok(());
        }
        if v5 && publish.qos != QoS::AtMostOnce {
            // [MQTT-3.3.4-7] no more unacknowledged QoS 1 and 2 PUBLISHes
            // than our Receive Maximum: DISCONNECT 0x93 (3.2.2.3.3).
            let unanswered = self
                .held
                .iter()
                .filter(|h| h.kind != Answer::PubRel)
                .count()
                + active
                    .session
                    .lock()
                    .traffic()
                    .map_or(0, |t| t.incoming_qos2.len());
            if unanswered >= usize::from(settings.receive_maximum) {
                return Err(Ending::protocol(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                ));
            }
        }
        if publish.qos == QoS::ExactlyOnce {
            let state = active.session.lock();
            let received = state.traffic().map_or(0, |t| t.incoming_qos2.len());
            if state
                .traffic()
                .is_some_and(|t| t.incoming_qos2.contains(&id))
            {
                // A resent QoS 2 PUBLISH before PUBREL: acknowledged again,
                // delivered once [MQTT-4.3.3-10].
                drop(state);
                self.send(active, Packet::PubRec(PubResponse::new(id)));
                return Ok(());
            }
            // More unacknowledged QoS 2 than our Receive Maximum, which the
            // client must not send [MQTT-3.3.4-7]: DISCONNECT 0x93 (3.2.2.3.3).
            // A 3.1.1 client was never told a Receive Maximum; its packet
            // identifiers bound what it can have in flight.
            if v5 && received >= usize::from(settings.receive_maximum) {
                return Err(Ending::protocol(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                ));
            }
        }

        let refusal = if topic.len() > settings.max_topic_length
            || topic.split('/').count() > settings.max_topic_levels
        {
            Some(ReasonCode::TopicNameInvalid)
        } else if crate::broker::is_server_topic(&topic) {
            // `$SYS` topics are the server's [MQTT-4.7.2].
            Some(ReasonCode::NotAuthorized)
        } else if !shared
            .auth
            .authorize(&active.identity, Action::Publish, &topic)
        {
            Some(ReasonCode::NotAuthorized)
        } else if v5
            && publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            // [MQTT-3.3.2.3.2] payload said to be UTF-8 is not.
            Some(ReasonCode::PayloadFormatInvalid)
        } else {
            None
        };

        // A subscriber that keeps messages holds the acknowledgement.
        let mut holding = (publish.qos != QoS::AtMostOnce).then(|| Holding::new(&active.session));
        let reason = match refusal {
            Some(reason) => {
                debug!(client_id = %active.session.client_id, topic = %topic, %reason, "PUBLISH refused");
                reason
            }
            None => {
                let message = Arc::new(Message {
                    topic,
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                    properties: Message::forwardable(publish.properties),
                    publisher: Some(active.session.client_id.clone()),
                    received_at: std::time::Instant::now(),
                });
                // [MQTT-3.3.1-5] [MQTT-3.3.1-6] retained: stored, replaced or
                // cleared. Past the retained limits the PUBLISH is refused
                // whole with 0x97 Quota exceeded (3.3.4), not routed.
                let refused = if message.retain {
                    let mut retained = write(&shared.retained);
                    let refused = retained.set(message.clone()).err();
                    if refused.is_none() {
                        shared.record_retained(&message, holding.as_mut());
                    }
                    refused
                } else {
                    None
                };
                if let Some(refusal) = refused {
                    add(&shared.stats.retained_refused, 1);
                    debug!(client_id = %active.session.client_id, topic = %message.topic, %refusal, "retained PUBLISH refused");
                    ReasonCode::QuotaExceeded
                } else {
                    let mut logged = Vec::new();
                    let routed = shared.route_holding(&message, holding.as_mut(), &mut logged);
                    // A persistent session's QoS 2 identifier awaits PUBREL
                    // in the journal too, or a resend after a crash would
                    // be delivered twice [MQTT-4.3.3-9].
                    let received = if publish.qos == QoS::ExactlyOnce {
                        let state = active.session.lock();
                        (state.epoch() != 0).then(|| (key(&active.session, &state), id))
                    } else {
                        None
                    };
                    shared.record_route(&message, logged, received, holding.as_mut());
                    if routed == 0 && v5 {
                        ReasonCode::NoMatchingSubscribers
                    } else {
                        ReasonCode::Success
                    }
                }
            }
        };
        let hold = holding.and_then(Holding::into_hold);
        // 3.1.1 has no negative acknowledgement: the message is acknowledged
        // and not delivered [MQTT-3.3.5-2].
        let reason = if v5 { reason } else { ReasonCode::Success };
        match publish.qos {
            QoS::AtMostOnce => {}
            // [MQTT-4.3.2-4] PUBACK after taking ownership.
            QoS::AtLeastOnce => self.answer_or_hold(active, Answer::PubAck, id, reason, hold),
            QoS::ExactlyOnce => self.answer_or_hold(active, Answer::PubRec, id, reason, hold),
        }
        Ok(())
    }

    /// Sends an answer now, or holds it while `hold` waits or an earlier
    /// answer is held: answers go in the order of what they answer
    /// [MQTT-4.6.0-2] [MQTT-4.6.0-3] [MQTT-4.6.0-4].
    fn answer_or_hold(
        &mut self,
        active: &Active,
        kind: Answer,
        packet_id: u16,
        reason: ReasonCode,
        hold: Option<Arc<AckHold>>,
    ) {
        if hold.is_some() || !self.held.is_empty() {
            self.held.push_back(HeldAck {
                packet_id,
                kind,
                reason,
                hold,
            });
        } else {
            self.answer(active, kind, packet_id, reason);
        }
    }

    fn answer(&mut self, active: &Active, kind: Answer, packet_id: u16, reason: ReasonCode) {
        let response = PubResponse::with_reason(packet_id, reason);
        let packet = match kind {
            Answer::PubAck => Packet::PubAck(response),
            Answer::PubRec => {
                // Known as received only now: a PUBLISH resent after a lost
                // one must be taken again, not just answered.
                if !reason.is_error() {
                    active
                        .session
                        .lock()
                        .traffic_mut()
                        .incoming_qos2
                        .insert(packet_id);
                }
                Packet::PubRec(response)
            }
            Answer::PubRel => Packet::PubRel(response),
            Answer::PubComp => Packet::PubComp(response),
        };
        self.send(active, packet);
    }

    /// Sends the held acknowledgements that may go now, oldest first. A
    /// message a keeping subscriber lost ends the connection without its
    /// acknowledgement (nor any after it), so the client sends them again.
    fn release_held(&mut self, active: &Active) -> Result<(), Ending> {
        while let Some(front) = self.held.front() {
            match front.hold.as_ref().map_or(Settled::Kept, |h| h.settled()) {
                Settled::Waiting => break,
                Settled::Lost => {
                    return Err(Ending::protocol(
                        ReasonCode::ServerBusy,
                        "a message could not be kept; send it again",
                    ));
                }
                Settled::Kept => {
                    let Some(held) = self.held.pop_front() else {
                        break;
                    };
                    self.answer(active, held.kind, held.packet_id, held.reason);
                }
            }
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, active: &mut Active, subscribe: Subscribe) {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in subscribe.filters {
            let shared_filter = SharedFilter::parse(&filter);
            let inner = shared_filter.map_or(filter.as_str(), |s| s.filter);
            if filter.len() > settings.max_topic_length
                || inner.split('/').count() > settings.max_topic_levels
            {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            if !shared
                .auth
                .authorize(&active.identity, Action::Subscribe, inner)
            {
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            let existed = {
                let mut state = active.session.lock();
                let existed = state.subscriptions.contains(&filter);
                if !existed && state.subscriptions.len() >= settings.max_subscriptions_per_client {
                    reasons.push(ReasonCode::QuotaExceeded);
                    continue;
                }
                state.subscriptions.insert(filter.clone(), subscription);
                if state.epoch() != 0 {
                    shared.record(Record::Subscribed {
                        session: key(&active.session, &state),
                        filter: filter.clone(),
                        subscription,
                    });
                }
                existed
            };
            // [MQTT-3.8.4-3] a subscription to the same filter replaces the old.
            write(&shared.tree).subscribe(active.session.client_id.clone(), &filter, subscription);
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] retain handling;
            // shared subscriptions get no retained messages [MQTT-4.8.2].
            let send_retained = shared_filter.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in read(&shared.retained).matching(inner) {
                    if !message.is_expired() {
                        retained.push((message, options.qos, identifier));
                    }
                }
            }
        }
        // [MQTT-3.8.4-1] SUBACK with one reason per filter, in order [MQTT-3.9.3-1].
        self.send(
            active,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
        for (message, qos, identifier) in retained {
            // [MQTT-3.3.1-8] retained messages sent at subscribe keep RETAIN set.
            shared.deliver(
                &active.session,
                &message,
                qos,
                true,
                identifier.into_iter().collect(),
            );
        }
    }

    fn handle_unsubscribe(&mut self, active: &mut Active, unsubscribe: Unsubscribe) {
        let shared = self.shared.clone();
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = {
                let mut state = active.session.lock();
                let existed = state.subscriptions.remove(filter).is_some();
                if existed && state.epoch() != 0 {
                    shared.record(Record::Unsubscribed {
                        session: key(&active.session, &state),
                        filter: filter.clone(),
                    });
                }
                existed
            };
            if existed {
                write(&shared.tree).unsubscribe(&active.session.client_id, filter);
            }
            // [MQTT-3.10.4-5] UNSUBACK even when nothing was removed.
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.send(
            active,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
    }

    /// On a resumed session, unacknowledged PUBLISH packets go again with DUP
    /// set and PUBRELs again [MQTT-4.4.0-1], before anything new.
    fn resend_inflight(&mut self, active: &mut Active) {
        let session = active.session.clone();
        let mut state = session.lock();
        let Some(traffic) = state.traffic() else {
            return;
        };
        let mut too_large = Vec::new();
        for (id, inflight) in traffic.inflight.iter() {
            match inflight {
                Inflight::Publish(delivery) => {
                    if !self.write_publish(active, delivery, *id, true) {
                        too_large.push(*id);
                    }
                }
                Inflight::Released(_) => {
                    self.send(active, Packet::PubRel(PubResponse::new(*id)));
                }
            }
        }
        for id in too_large {
            if let Some(seq) = state.complete(id, false, None) {
                self.shared.record_done(&session, &state, seq);
            }
        }
    }

    /// Moves queued deliveries into the write buffer while the client's
    /// Receive Maximum allows [MQTT-3.3.4-7], in order [MQTT-4.6.0-6].
    /// Some(true) when it stopped only because the buffer is full; None when
    /// the session has been taken over (its queue is the new connection's).
    /// Adds the deliveries it wrote to `written`.
    fn fill(&mut self, active: &mut Active, written: &mut u32) -> Option<bool> {
        let session = active.session.clone();
        let mut state = session.lock();
        if state.generation != active.generation {
            return None;
        }
        let limit = usize::from(
            active
                .client_receive_maximum
                .min(self.shared.settings.max_inflight),
        );
        if state.queued() == 0 {
            return Some(false);
        }
        let persistent = state.epoch() != 0;
        let mut dropped = Vec::new();
        let more = self.fill_from(
            active,
            state.traffic_mut(),
            limit,
            written,
            persistent.then_some(&mut dropped),
        );
        for seq in dropped {
            self.shared.record_done(&session, &state, seq);
        }
        Some(more)
    }

    /// [`Self::fill`] on the session's traffic, its state locked. The
    /// journaled deliveries it drops (expired, too large) go to `dropped`.
    fn fill_from(
        &mut self,
        active: &mut Active,
        traffic: &mut crate::session::Traffic,
        limit: usize,
        written: &mut u32,
        mut dropped: Option<&mut Vec<u64>>,
    ) -> bool {
        let mut lose = |delivery: &Delivery| {
            if let Some(dropped) = dropped.as_deref_mut()
                && delivery.seq != 0
            {
                dropped.push(delivery.seq);
            }
        };
        loop {
            let Some(front) = traffic.queue.front() else {
                return false;
            };
            if front.qos != QoS::AtMostOnce && traffic.inflight.len() >= limit {
                return false;
            }
            if self.wbuf.len() >= 256 * 1024 {
                return true;
            }
            let Some(delivery) = traffic.queue.pop_front() else {
                return false;
            };
            // [MQTT-3.3.2-5] expired messages are not sent.
            if delivery.message.is_expired() {
                add(&self.shared.stats.messages_dropped, 1);
                lose(&delivery);
                continue;
            }
            let id = if delivery.qos == QoS::AtMostOnce {
                0
            } else if delivery.seq != 0 {
                // A journaled delivery's identifier is its number's; it
                // waits while an older message still holds it.
                let id = packet_id_of(delivery.seq);
                if !traffic.claim_packet_id(id) {
                    traffic.queue.push_front(delivery);
                    return false;
                }
                id
            } else {
                match traffic.allocate_packet_id() {
                    Some(id) => id,
                    None => {
                        traffic.queue.push_front(delivery);
                        return false;
                    }
                }
            };
            if self.write_publish(active, &delivery, id, false) {
                *written += 1;
                if id != 0 {
                    traffic.push_inflight(id, Inflight::Publish(delivery));
                }
            } else {
                if id != 0 {
                    traffic.release_packet_id(id);
                }
                add(&self.shared.stats.messages_dropped, 1);
                lose(&delivery);
            }
        }
    }

    /// Writes one PUBLISH for a delivery. False when it is larger than the
    /// client accepts: such a message is dropped as if sent [MQTT-3.1.2-25].
    fn write_publish(
        &mut self,
        active: &mut Active,
        delivery: &Delivery,
        id: u16,
        dup: bool,
    ) -> bool {
        let v5 = self.version.is_v5();
        let message = &delivery.message;
        let mut properties = Properties::default();
        let mut topic: &str = &message.topic;
        let mut new_alias = None;
        if v5 {
            properties = message.properties.clone();
            // [MQTT-3.3.2-6] the expiry interval left, not the one published.
            if let Some(left) = message.remaining_expiry() {
                properties.message_expiry_interval = Some(left);
            }
            properties.subscription_identifiers = delivery.subscription_ids.clone();
            if active.client_alias_maximum > 0 {
                let aliases = active.aliases_mut();
                match aliases.outbound.get(&message.topic) {
                    Some(alias) => {
                        properties.topic_alias = Some(*alias);
                        topic = "";
                    }
                    None => {
                        let next = aliases.outbound.len() + 1;
                        // [MQTT-3.3.2-11] never above the client's maximum.
                        if next <= usize::from(active.client_alias_maximum) {
                            let alias = next as u16;
                            properties.topic_alias = Some(alias);
                            new_alias = Some(alias);
                        }
                    }
                }
            }
        }
        let publish = PublishRef {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id: id,
            properties: &properties,
            payload: &message.payload,
        };
        let start = self.wbuf.len();
        if encode_publish(&publish, self.version, &mut self.wbuf).is_err() {
            return false;
        }
        if self.wbuf.len() - start > active.client_max_packet as usize {
            self.wbuf.truncate(start);
            return false;
        }
        if let Some(alias) = new_alias {
            active
                .aliases_mut()
                .outbound
                .insert(message.topic.clone(), alias);
        }
        add(&self.shared.stats.messages_sent, 1);
        add(&self.shared.stats.publish_sent, 1);
        true
    }
}

/// A connected client goes: its session is detached (the will goes out
/// unless `publish_will` is false) and it is counted out. A socket lost
/// without a word (moving in or out of hibernation) goes as a close by the
/// network, will included.
fn leave(shared: &Arc<BrokerShared>, active: &Active, publish_will: bool) {
    if shared.detach(&active.session, active.generation, publish_will) {
        shared.auth.disconnected(&active.identity);
    }
    shared
        .stats
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

fn strip_diagnostics(packet: &mut Packet) {
    let properties = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return,
    };
    properties.reason_string = None;
    properties.user_properties.clear();
}

/// Writes closer together than this mark a busy subscriber, worth a yield
/// before its next write.
const BUSY_WRITER: Duration = Duration::from_micros(200);

/// Resolves when the connection's timer fires; never without one.
async fn timer_fired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}
