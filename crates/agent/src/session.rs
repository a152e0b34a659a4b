//! The agent's MQTT session: connect as the device (secret or client
//! certificate), announce `status` online with `offline` as the will,
//! publish readings on their intervals, keep them on disk while the broker
//! is away and send them in order when it is back; reconnect with jittered
//! exponential backoff so a fleet does not return all at once.

use std::time::Duration;

use device_protocol::{Reading, Status, Topic, VERSION};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

use crate::buffer::{Buffered, DiskBuffer};
use crate::collect::{SystemCollector, firmware};
use crate::{Provisioning, now_millis};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
}

/// The MQTT options of a device of the contract (id, credentials, will)
/// for its `attempt`-th connection: round its list of brokers.
pub fn device_options(p: &Provisioning, attempt: usize) -> Result<MqttOptions, AgentError> {
    let addresses = p.broker_addresses().map_err(AgentError::Config)?;
    let address = &addresses[attempt % addresses.len()];
    let mut options = MqttOptions::new(&p.device_id, &address.host, address.port);
    options
        .set_credentials(&p.device_id, p.secret.clone().unwrap_or_default())
        .set_keep_alive(Duration::from_secs(60))
        // QoS 1 in flight survives a reconnect.
        .set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_last_will(LastWill::new(
            Topic::Status.for_device(&p.model, &p.device_id),
            status("offline", None),
            QoS::AtLeastOnce,
            true,
        ));
    if address.tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &Option<std::path::PathBuf>,
                    what: &str|
         -> Result<Option<Vec<u8>>, AgentError> {
            path.as_ref()
                .map(|f| {
                    std::fs::read(f)
                        .map_err(|e| AgentError::Config(format!("{what} {}: {e}", f.display())))
                })
                .transpose()
        };
        let ca = read(&p.ca_file, "ca_file")?
            .ok_or_else(|| AgentError::Config("mqtts:// needs ca_file".into()))?;
        let client_auth = match (
            read(&p.certificate_file, "certificate_file")?,
            read(&p.key_file, "key_file")?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}

/// A `status` message; `online` carries the boot id so the platform sees a
/// reboot.
pub fn status(state: &str, boot_id: Option<&str>) -> Vec<u8> {
    Reading::Status(Status {
        v: VERSION,
        ts: now_millis(),
        state: state.to_owned(),
        boot_id: boot_id.map(str::to_owned),
    })
    .to_json()
}

/// Backoff after the `attempt`-th failure in a row: 0.5 s doubling to 60 s,
/// ±25 % jitter.
pub fn backoff(attempt: u32) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(7) as i32);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    Duration::from_secs_f64(base.min(60.0) * jitter)
}

enum Link {
    Up,
    Down,
    /// The client wrote a PUBLISH with this packet id (again, if resent).
    Sent(u16),
    /// The broker acknowledged it.
    Acked(u16),
    /// A message on one of the device's subscriptions (tasks, sessions).
    Message(String, bytes::Bytes),
}

/// Buffered readings handed to the client at once while catching up.
const CATCH_UP_WINDOW: usize = 100;

/// Which reading each packet id carries, so a buffered reading leaves the
/// disk only when the broker acknowledged it. Publishes are written in
/// the order they were asked for, so the n-th new packet id belongs to the
/// n-th publish; a packet id seen before is a resend of the same reading.
#[derive(Default)]
struct Acknowledgements {
    /// One entry per publish asked for and not yet written: the buffered
    /// reading's sequence number, or None for a live one.
    asked: std::collections::VecDeque<Option<u64>>,
    by_packet: std::collections::HashMap<u16, Option<u64>>,
}

impl Acknowledgements {
    fn sent(&mut self, packet_id: u16) {
        if !self.by_packet.contains_key(&packet_id)
            && let Some(tag) = self.asked.pop_front()
        {
            self.by_packet.insert(packet_id, tag);
        }
    }

    /// The buffered reading the broker just acknowledged, if it was one.
    fn acked(&mut self, packet_id: u16) -> Option<u64> {
        self.by_packet.remove(&packet_id).flatten()
    }
}

/// What the agent did, when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub published: u64,
    pub buffered: usize,
    pub dropped: u64,
}

/// Runs the agent until `stop` turns true.
pub async fn run(
    p: Provisioning,
    mut stop: watch::Receiver<bool>,
) -> Result<AgentReport, AgentError> {
    let options = device_options(&p, 0)?;
    let mut buffer = DiskBuffer::open(&p.buffer_dir, p.buffer_capacity);
    if !buffer.is_empty() {
        tracing::info!(
            waiting = buffer.len(),
            "readings from the last run wait to be sent"
        );
    }
    let (client, mut events) = AsyncClient::new(options, 256);
    // Terminal keystrokes and their echoes are small packets that must not
    // wait for the acknowledgement of the previous one (Nagle).
    let mut network = events.network_options();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let (link_tx, mut link) = mpsc::channel(8);
    let provisioning = p.clone();
    let poller = tokio::spawn(async move {
        let (mut failures, mut attempt) = (0u32, 0usize);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    if link_tx.send(Link::Up).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(packet_id))) => {
                    if link_tx.send(Link::Sent(packet_id)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if link_tx.send(Link::Acked(ack.pkid)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if link_tx
                        .send(Link::Message(publish.topic, publish.payload))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if link_tx.send(Link::Down).await.is_err() {
                        return;
                    }
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(error = %e, broker = %events.mqtt_options.broker_address().0, retry_in = ?wait, "broker unreachable");
                    tokio::time::sleep(wait).await;
                    // The next broker of the list; the buffer sends what
                    // was not acknowledged again on whichever it reaches.
                    attempt += 1;
                    if let Ok(next) = device_options(&provisioning, attempt) {
                        events.mqtt_options = next;
                    }
                }
            }
        }
    });
    let topic = |t: Topic| t.for_device(&p.model, &p.device_id);
    let every = |secs: u64| {
        let mut i = tokio::time::interval(Duration::from_secs(secs.max(1)));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let (mut hardware, mut network, mut lte, mut uptime, mut logs) = (
        every(p.intervals.hardware),
        every(p.intervals.network),
        every(p.intervals.lte),
        every(p.intervals.uptime),
        every(p.intervals.logs),
    );
    let mut collector = SystemCollector::new(p.log_file.clone());
    let mut connected = false;
    let mut report = AgentReport::default();
    let mut acks = Acknowledgements::default();
    let mut seen_tasks = SeenTasks::default();
    let mut firmware_resumed = false;
    let boot_id = p.tasks.boot_id();
    let sessions = crate::remote::Sessions::new(client.clone(), &p);
    let device_prefix = format!("{}/{}/{}/", device_protocol::PREFIX, p.model, p.device_id);
    loop {
        let readings: Vec<Reading> = tokio::select! {
            _ = stop.changed() => break,
            event = link.recv() => {
                match event {
                    Some(Link::Up) => {
                        connected = true;
                        tracing::info!("connected");
                        // Requests first, so none sent once we say online is missed.
                        for filter in [
                            device_protocol::task::request_filter(&p.model, &p.device_id),
                            device_protocol::session::input_filter(&p.model, &p.device_id),
                        ] {
                            if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                                tracing::warn!(error = %e, "subscription not sent");
                            }
                        }
                        if client.publish(topic(Topic::Status), QoS::AtLeastOnce, true, status("online", boot_id.as_deref())).await.is_ok() {
                            acks.asked.push_back(None);
                        }
                        if !buffer.is_empty() {
                            tracing::info!(count = buffer.len(), dropped = buffer.dropped(), "sending buffered readings");
                        }
                        if !firmware_resumed {
                            firmware_resumed = true;
                            resume_firmware(&client, &p, &mut seen_tasks);
                        }
                        [firmware(&p.firmware_file), collector.ipv4()].into_iter().flatten().collect()
                    }
                    Some(Link::Down) => {
                        connected = false;
                        sessions.end_all();
                        // Not acknowledged: sent again on the next connection.
                        buffer.rewind();
                        Vec::new()
                    }
                    Some(Link::Sent(packet_id)) => {
                        acks.sent(packet_id);
                        Vec::new()
                    }
                    Some(Link::Acked(packet_id)) => {
                        if let Some(seq) = acks.acked(packet_id) {
                            buffer.acknowledge(seq);
                        }
                        Vec::new()
                    }
                    Some(Link::Message(topic, payload)) => {
                        let suffix = topic.strip_prefix(&device_prefix).unwrap_or_default();
                        match device_protocol::session::parse_topic(suffix) {
                            Some(Ok((session, device_protocol::session::Direction::In))) => {
                                sessions.input(session, &payload).await;
                            }
                            Some(_) => {}
                            None => start_task(&client, &p, &sessions, &payload, &mut seen_tasks),
                        }
                        Vec::new()
                    }
                    None => break,
                }
            }
            _ = hardware.tick() => [collector.loadavg(), collector.memory(), collector.cpu()].into_iter().flatten().collect(),
            _ = network.tick() => collector.traffic().into_iter().collect(),
            _ = lte.tick() => collector.lte().into_iter().collect(),
            _ = uptime.tick() => collector.uptime().into_iter().collect(),
            _ = logs.tick() => [collector.syslog(), collector.dmesg()].into_iter().flatten().collect(),
        };
        for reading in readings {
            let t = reading.topic();
            let payload = reading.to_json();
            // Live only once what waited is out: readings keep their order.
            if connected && buffer.is_empty() {
                if client
                    .publish(topic(t), QoS::AtLeastOnce, t.retain(), payload)
                    .await
                    .is_ok()
                {
                    acks.asked.push_back(None);
                    report.published += 1;
                }
            } else {
                buffer.push(Buffered {
                    topic: topic(t),
                    payload: String::from_utf8_lossy(&payload).into_owned(),
                    retain: t.retain(),
                });
            }
        }
        // Catching up: keep a window of buffered readings with the client,
        // each leaving the disk when the broker acknowledges it.
        if connected && buffer.in_flight() < CATCH_UP_WINDOW / 2 {
            let room = CATCH_UP_WINDOW - buffer.in_flight();
            for (seq, item) in buffer.next_unsent(room) {
                if client
                    .publish(
                        item.topic,
                        QoS::AtLeastOnce,
                        item.retain,
                        item.payload.into_bytes(),
                    )
                    .await
                    .is_ok()
                {
                    acks.asked.push_back(Some(seq));
                    report.published += 1;
                }
            }
        }
    }
    if connected {
        // A clean goodbye sends no will: say offline ourselves.
        let _ = client
            .publish(
                topic(Topic::Status),
                QoS::AtLeastOnce,
                true,
                status("offline", None),
            )
            .await;
        let _ = client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    poller.abort();
    report.buffered = buffer.len();
    report.dropped = buffer.dropped();
    Ok(report)
}

/// Requests already started, so a redelivery (QoS 1 after a reconnect)
/// does not run a task twice.
#[derive(Default)]
pub(crate) struct SeenTasks {
    order: std::collections::VecDeque<(i64, u32)>,
    set: std::collections::HashSet<(i64, u32)>,
}

impl SeenTasks {
    const KEEP: usize = 1024;

    /// True the first time a request is seen.
    pub(crate) fn first(&mut self, id: i64, attempt: u32) -> bool {
        if !self.set.insert((id, attempt)) {
            return false;
        }
        self.order.push_back((id, attempt));
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// Starts a task request: answers go to the contract's topics; a reboot is
/// acknowledged before its command runs.
fn start_task(
    client: &AsyncClient,
    p: &Provisioning,
    sessions: &crate::remote::Sessions,
    payload: &[u8],
    seen: &mut SeenTasks,
) {
    use device_protocol::task::TaskRequest;
    let request: TaskRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a task request that is not the contract's; ignored");
            return;
        }
    };
    if !seen.first(request.id, request.attempt) {
        return;
    }
    tracing::info!(id = request.id, attempt = request.attempt, kind = %request.kind, "task");
    let (client, p, sessions) = (client.clone(), p.clone(), sessions.clone());
    tokio::spawn(async move {
        let outcome = match request.kind.as_str() {
            "remote_session" => crate::tasks::Outcome::Final(sessions.open(&request).await),
            "firmware_update" | "firmware_rollback" => {
                let progress = progress_to(&client, &p, &request);
                crate::firmware::run(&request, &p, &progress).await
            }
            _ => crate::tasks::run(&request, &p).await,
        };
        deliver(&client, &p, &request, outcome).await;
    });
}

/// Sends in-progress answers of a request as they come.
fn progress_to(
    client: &AsyncClient,
    p: &Provisioning,
    request: &device_protocol::task::TaskRequest,
) -> impl Fn(device_protocol::task::TaskAnswer) + use<> {
    let topic = device_protocol::task::status_topic(&p.model, &p.device_id, request.id);
    let client = client.clone();
    move |answer: device_protocol::task::TaskAnswer| {
        // Progress may be dropped when the queue is full; the final answer is not.
        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, answer.to_json());
    }
}

/// An update the agent was in when it or the device stopped: the answer
/// after the reboot, another reboot for a rollback, or the rest of the
/// download.
fn resume_firmware(client: &AsyncClient, p: &Provisioning, seen: &mut SeenTasks) {
    if let Some(request) = crate::firmware::unfinished(p) {
        // Its redelivered request is the same work, not a second one.
        seen.first(request.id, request.attempt);
    } else {
        return;
    }
    let (client, p) = (client.clone(), p.clone());
    tokio::spawn(async move {
        let Some((request, resumed)) = crate::firmware::after_start(&p).await else {
            return;
        };
        let outcome = match resumed {
            crate::firmware::Resumed::Done(outcome) => outcome,
            crate::firmware::Resumed::Download => {
                tracing::info!(id = request.id, "carrying on with a firmware download");
                let progress = progress_to(&client, &p, &request);
                crate::firmware::run(&request, &p, &progress).await
            }
        };
        deliver(&client, &p, &request, outcome).await;
    });
}

/// Publishes a task's outcome; a reboot is acknowledged first and its
/// command run after.
async fn deliver(
    client: &AsyncClient,
    p: &Provisioning,
    request: &device_protocol::task::TaskRequest,
    outcome: crate::tasks::Outcome,
) {
    use device_protocol::task;
    let answer_to = |final_: bool| {
        if final_ {
            task::result_topic(&p.model, &p.device_id, request.id)
        } else {
            task::status_topic(&p.model, &p.device_id, request.id)
        }
    };
    match outcome {
        crate::tasks::Outcome::Final(answer) => {
            let _ = client
                .publish(answer_to(true), QoS::AtLeastOnce, false, answer.to_json())
                .await;
        }
        crate::tasks::Outcome::Reboot(ack) => {
            let _ = client
                .publish(answer_to(false), QoS::AtLeastOnce, false, ack.to_json())
                .await;
            // Let the acknowledgement leave before the system goes down.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = crate::tasks::reboot(&p.tasks).await {
                let mut failed = task::TaskAnswer::new(request, task::AnswerState::Failed);
                failed.ts = now_millis();
                failed.error = Some(e);
                let _ = client
                    .publish(answer_to(true), QoS::AtLeastOnce, false, failed.to_json())
                    .await;
            }
        }
    }
}
