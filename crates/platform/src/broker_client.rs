//! The platform as a client of an external broker (EMQX, VerneMQ, HiveMQ,
//! rmqtt, Mosquitto): where it is, how the platform logs in, and the task
//! transport that publishes requests and session frames through it.
//!
//! The ingest reads the same broker with [`crate::telemetry::run`]; both
//! fail over along the address list, so an instance follows its cluster
//! when one node goes away.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use device_protocol::broker_url::BrokerAddress;

use crate::tasks::{OutgoingRequest, TaskTransport};

/// Session frames the broker still holds after this long are dropped: the
/// session has ended by then (as the embedded broker's transport does).
const SESSION_FRAME_EXPIRY_SECS: u32 = 30;
/// Requests waiting for the connection: a dispatch pass is at most a few
/// thousand.
const REQUEST_QUEUE: usize = 10_000;
/// Requests the broker holds unacknowledged at a time, whatever larger
/// Receive Maximum it offers. A broker reads one client's packets in order,
/// so a PINGREQ waits behind these: with 1,000 in flight (an rmqtt node
/// configured for ingest offers 1,024), a job over 1,000 devices kept a
/// cluster node forwarding past the keep-alive and the connection dropped.
const TASK_INFLIGHT: u16 = 64;
/// The first wait after a failed connect; doubled up to [`RETRY_MAX`].
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(250);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// An external broker or cluster, and the platform's login to it.
#[derive(Debug, Clone)]
pub struct BrokerEndpoint {
    /// Tried in order; after a failure the next one.
    pub addresses: Vec<BrokerAddress>,
    pub username: String,
    pub password: String,
    /// The CA that signed the brokers' certificates (PEM), for `mqtts://`.
    pub ca_pem: Option<Vec<u8>>,
}

impl BrokerEndpoint {
    /// The address for the `attempt`-th connect: round the list.
    pub fn address(&self, attempt: usize) -> Option<&BrokerAddress> {
        self.addresses.get(attempt % self.addresses.len().max(1))
    }

    fn transport(&self, address: &BrokerAddress) -> rumqttc::Transport {
        match (&self.ca_pem, address.tls) {
            (Some(ca), true) => rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }),
            _ => rumqttc::Transport::Tcp,
        }
    }

    /// MQTT 3.1.1 options for the `attempt`-th connect.
    pub fn options(&self, attempt: usize, client_id: &str) -> rumqttc::MqttOptions {
        let (host, port, transport) = match self.address(attempt) {
            Some(a) => (a.host.as_str(), a.port, self.transport(a)),
            None => ("127.0.0.1", 1883, rumqttc::Transport::Tcp),
        };
        let mut options = rumqttc::MqttOptions::new(client_id, host, port);
        options
            .set_credentials(&self.username, &self.password)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_transport(transport);
        options
    }

    /// MQTT 5 options for the `attempt`-th connect.
    fn options_v5(&self, attempt: usize, client_id: &str) -> rumqttc::v5::MqttOptions {
        let (host, port, transport) = match self.address(attempt) {
            Some(a) => (a.host.as_str(), a.port, self.transport(a)),
            None => ("127.0.0.1", 1883, rumqttc::Transport::Tcp),
        };
        let mut options = rumqttc::v5::MqttOptions::new(client_id, host, port);
        options
            .set_credentials(&self.username, &self.password)
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(TASK_INFLIGHT)
            .set_transport(transport);
        options
    }

    /// `mqtt://a:1883,mqtt://b:1883`, for logs.
    pub fn describe(&self) -> String {
        self.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Task requests and session frames published through an external broker
/// on a connection of their own (MQTT 5, so a request keeps its response
/// topic, correlation data and expiry). Requests survive a lost connection
/// and go out on the next. One that cannot be queued (more than
/// [`REQUEST_QUEUE`] waiting) is counted; its execution times out, and is
/// tried again if its job allows retries.
pub struct ClientTaskTransport {
    client: rumqttc::v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    dropped: std::sync::atomic::AtomicU64,
}

impl ClientTaskTransport {
    /// Connects as `client_id` once `ready` resolves and keeps the
    /// connection, moving along the address list after each failure.
    /// Requests sent before wait in the queue.
    pub fn connect(
        endpoint: BrokerEndpoint,
        client_id: &str,
        ready: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Arc<Self> {
        let client_id = client_id.to_owned();
        let (client, mut events) =
            rumqttc::v5::AsyncClient::new(endpoint.options_v5(0, &client_id), REQUEST_QUEUE);
        let task = tokio::spawn(async move {
            ready.await;
            let (mut attempt, mut retry) = (0, RETRY_FIRST);
            // What the broker had not acknowledged, and what still waited,
            // when a connection failed: rumqttc clears it when the next
            // CONNACK says the session is new (this one always starts
            // clean), so it is taken out here and handed back after.
            let mut carried = std::collections::VecDeque::new();
            loop {
                match events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(_))) => {
                        tracing::info!(
                            broker = %events.options.broker_address().0,
                            resent = carried.len(),
                            "task transport connected"
                        );
                        retry = RETRY_FIRST;
                        // Sent before anything new; a device that already
                        // had one takes it once (its seen-task list).
                        carried.append(&mut events.pending);
                        events.pending = std::mem::take(&mut carried);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "task transport lost the broker; trying the next address");
                        carried.append(&mut events.pending);
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                        attempt += 1;
                        events.options = endpoint.options_v5(attempt, &client_id);
                    }
                }
            }
        });
        Arc::new(ClientTaskTransport {
            client,
            task,
            dropped: Default::default(),
        })
    }

    fn publish(
        &self,
        topic: String,
        payload: Bytes,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        if let Err(e) = self.client.try_publish_with_properties(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload,
            properties,
        ) {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "task transport full; the request is not sent");
        }
    }
}

impl ClientTaskTransport {
    /// Prometheus text: the requests and frames this connection could not queue.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP telemark_task_transport_dropped_total task requests and session frames the external broker connection could not queue\n\
             # TYPE telemark_task_transport_dropped_total counter\n\
             telemark_task_transport_dropped_total {}\n",
            self.dropped.load(std::sync::atomic::Ordering::Relaxed)
        )
    }
}

impl Drop for ClientTaskTransport {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TaskTransport for ClientTaskTransport {
    fn send(&self, request: OutgoingRequest) {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            // [MQTT-3.3.2-5] the broker drops a request still held at its deadline.
            message_expiry_interval: Some(request.expiry_secs),
            response_topic: Some(request.response_topic),
            correlation_data: Some(request.correlation),
            ..Default::default()
        };
        self.publish(request.topic, request.payload, properties);
    }

    fn send_session(&self, topic: String, payload: Bytes) {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            message_expiry_interval: Some(SESSION_FRAME_EXPIRY_SECS),
            ..Default::default()
        };
        self.publish(topic, payload, properties);
    }
}

/// Presence behind an external broker, whose connections the platform does
/// not see: every instance reads every device's `status` (retained, and the
/// will the broker publishes for a device gone without a goodbye) on a
/// subscription of its own, not shared, so each sees one device's reports in
/// the broker's order; on each (re)connect the retained ones bring it up to
/// date. Where the cluster reports its clients' connections on `$SYS`
/// topics (EMQX, rmqtt's sys-topic plugin), those count too: a device that
/// says goodbye without an `offline` status, or never reports one, is still
/// seen to come and go. Runs until `stop`.
pub async fn follow_presence(
    ingest: Arc<crate::telemetry::Ingest>,
    presence: Arc<crate::presence::PresenceRecorder>,
    endpoint: BrokerEndpoint,
    client_id: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let filters = [
        format!("{}/+/+/status", device_protocol::PREFIX),
        format!("{CLIENT_EVENTS}+/clients/+/connected"),
        format!("{CLIENT_EVENTS}+/clients/+/disconnected"),
    ];
    let (client, mut events) = AsyncClient::new(endpoint.options(0, &client_id), 1024);
    let (mut attempt, mut retry) = (0, RETRY_FIRST);
    let mut order = ClientEventOrder::default();
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = stop.changed() => {
                let _ = client.disconnect().await;
                return;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                retry = RETRY_FIRST;
                let filters = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::warn!(error = %e, "presence cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic.starts_with(CLIENT_EVENTS) => {
                if let Some(event) = ClientEvent::parse(&p.topic, &p.payload)
                    && order.is_news(&event)
                {
                    ingest
                        .presence_from_client_event(&event.client_id, event.online, &presence)
                        .await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                ingest
                    .presence_from_status(&p.topic, &p.payload, &presence)
                    .await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "presence lost the broker; trying the next address");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.changed() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
                attempt += 1;
                events.mqtt_options = endpoint.options(attempt, &client_id);
            }
        }
    }
}

/// Where EMQX and rmqtt report a client's connections:
/// `$SYS/brokers/{node}/clients/{client id}/connected|disconnected`.
const CLIENT_EVENTS: &str = "$SYS/brokers/";

/// Why a connection ends when a newer one of the same client took its
/// place (rmqtt: `Kicked`; EMQX: `takenover`, `discarded`): the client is
/// still there.
const REPLACED: [&str; 3] = ["Kicked", "takenover", "discarded"];

/// A broker's report that a client connected or disconnected.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    pub client_id: String,
    pub online: bool,
    /// When, in ms since the epoch, as the reporting node saw it.
    pub at: i64,
    /// A disconnect because a newer connection replaced this one.
    pub replaced: bool,
}

impl ClientEvent {
    /// The event a `$SYS/brokers/…/clients/…` message reports; `None` for
    /// anything else or a payload without the client and its time.
    pub fn parse(topic: &str, payload: &[u8]) -> Option<ClientEvent> {
        let rest = topic.strip_prefix(CLIENT_EVENTS)?;
        let mut parts = rest.split('/');
        let (_node, "clients", client_id, what, None) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next(),
        ) else {
            return None;
        };
        let online = match what {
            "connected" => true,
            "disconnected" => false,
            _ => return None,
        };
        let body: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let field = if online {
            "connected_at"
        } else {
            "disconnected_at"
        };
        // Milliseconds in both brokers; EMQX also sends `ts`.
        let at = body[field].as_i64().or_else(|| body["ts"].as_i64())?;
        let reason = body["reason"].as_str().unwrap_or_default();
        Some(ClientEvent {
            client_id: client_id.to_owned(),
            online,
            at,
            replaced: !online && REPLACED.contains(&reason),
        })
    }
}

/// Orders one client's events from several nodes, which arrive in no
/// common order: a reconnect to another node may be reported before the
/// old connection's end. An event older than the last one taken for its
/// client is stale, and the end of a connection a newer one replaced says
/// nothing about the client.
#[derive(Debug, Default)]
pub struct ClientEventOrder {
    last: std::collections::HashMap<String, i64>,
}

impl ClientEventOrder {
    pub fn is_news(&mut self, event: &ClientEvent) -> bool {
        if event.replaced {
            return false;
        }
        match self.last.get_mut(&event.client_id) {
            Some(last) if *last > event.at => false,
            Some(last) => {
                *last = event.at;
                true
            }
            None => {
                self.last.insert(event.client_id.clone(), event.at);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, body: serde_json::Value) -> Option<ClientEvent> {
        ClientEvent::parse(topic, body.to_string().as_bytes())
    }

    #[test]
    fn rmqtt_and_emqx_client_events_are_read() {
        let on = event(
            "$SYS/brokers/1/clients/00-11-22-33-44-55/connected",
            serde_json::json!({"clientid": "00-11-22-33-44-55", "connected_at": 1_000, "session_present": false}),
        )
        .expect("connected");
        assert!(on.online && on.at == 1_000 && !on.replaced);
        let kicked = event(
            "$SYS/brokers/2/clients/00-11-22-33-44-55/disconnected",
            serde_json::json!({"disconnected_at": 2_000, "reason": "Kicked"}),
        )
        .expect("disconnected");
        assert!(!kicked.online && kicked.replaced);
        let emqx = event(
            "$SYS/brokers/emqx@10.0.0.1/clients/dev1/disconnected",
            serde_json::json!({"reason": "normal", "ts": 3_000}),
        )
        .expect("EMQX");
        assert_eq!(
            (emqx.client_id.as_str(), emqx.online, emqx.at, emqx.replaced),
            ("dev1", false, 3_000, false)
        );
        for (topic, body) in [
            (
                "$SYS/brokers/1/clients/x/subscribed",
                serde_json::json!({"ts": 1}),
            ),
            (
                "$SYS/brokers/1/clients/x/connected/more",
                serde_json::json!({"connected_at": 1}),
            ),
            (
                "$SYS/brokers/1/session/x/created",
                serde_json::json!({"ts": 1}),
            ),
            (
                "$SYS/brokers/1/clients/x/connected",
                serde_json::json!({"clientid": "x"}),
            ),
        ] {
            assert_eq!(event(topic, body), None, "{topic}");
        }
        assert_eq!(
            ClientEvent::parse("$SYS/brokers/1/clients/x/connected", b"not json"),
            None
        );
    }

    #[test]
    fn a_late_or_replaced_disconnect_does_not_take_a_client_offline() {
        let mut order = ClientEventOrder::default();
        let at = |online, at, replaced| ClientEvent {
            client_id: "d".into(),
            online,
            at,
            replaced,
        };
        assert!(order.is_news(&at(true, 100, false)));
        // Reconnected on another node: the new connection first, then the
        // old one's end, replaced or merely reported late.
        assert!(order.is_news(&at(true, 200, false)));
        assert!(!order.is_news(&at(false, 250, true)));
        assert!(!order.is_news(&at(false, 150, false)));
        assert!(order.is_news(&at(false, 300, false)));
        assert!(!order.is_news(&at(true, 200, false)));
        assert!(order.is_news(&at(true, 300, false)));
    }
}
