//! The scenarios and the run that wires publishers, subscribers and the
//! broker's process readings together.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use mqtt::{Packet, ProtocolVersion, PubResponse, QoS};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BenchError;
use crate::client::{BenchConnection, publish};
use crate::payload::{STAMP_LEN, Stamp};
use crate::process::ProcessSample;
use crate::report::{Latency, Report};

/// What load to put on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Many publishers, one subscriber on a wildcard.
    FanIn,
    /// One publisher, many subscribers of one topic.
    FanOut,
    /// N publisher/subscriber pairs on their own topics.
    Pairs,
    /// Open connections and hold them; the broker's memory per connection.
    Idle,
    /// CONNECT→CONNACK→DISCONNECT as fast as it goes.
    Connect,
    /// Devices publishing their telemetry every few seconds, one platform subscriber.
    Fleet,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
            Scenario::Idle => "idle",
            Scenario::Connect => "connect",
            Scenario::Fleet => "fleet",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "fan-in" => Scenario::FanIn,
            "fan-out" => Scenario::FanOut,
            "pairs" => Scenario::Pairs,
            "idle" => Scenario::Idle,
            "connect" => Scenario::Connect,
            "fleet" => Scenario::Fleet,
            other => return Err(format!("unknown scenario {other:?}")),
        })
    }
}

/// Everything a run takes.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub addr: SocketAddr,
    /// Publishers (fan-in), subscribers (fan-out), pairs, devices (fleet),
    /// held connections (idle) or concurrent connectors (connect).
    pub connections: usize,
    pub payload: usize,
    pub qos: QoS,
    /// Total publish rate, messages per second; None for as fast as it goes.
    pub rate: Option<u64>,
    pub duration: Duration,
    pub version: ProtocolVersion,
    /// At the maximum rate, messages a publisher may have sent and not yet
    /// seen delivered (end to end, per subscriber it fans out to); 0 picks
    /// as many as a peer broker delivers with its defaults (`default_window`).
    /// Ignored with a fixed `rate`, which is open loop.
    pub window: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1..).
    pub sources: usize,
    pub broker_pid: Option<u32>,
    /// How often each fleet device publishes its telemetry.
    pub fleet_interval: Duration,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// Client ids and topics start with this, so two generators can share a broker.
    pub prefix: String,
    /// How long to wait for deliveries after publishing stops.
    pub drain: Duration,
    /// Sessions that outlive their connections (MQTT 5 expiry, 3.1.1 Clean
    /// Session 0), so a broker with persistence on logs what it queues.
    pub persistent: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: Scenario::Pairs,
            addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            connections: 10,
            payload: 64,
            qos: QoS::AtMostOnce,
            rate: None,
            duration: Duration::from_secs(10),
            version: ProtocolVersion::V3_1_1,
            window: 0,
            sources: 1,
            broker_pid: None,
            fleet_interval: Duration::from_secs(5),
            progress: false,
            prefix: "bench".to_owned(),
            drain: Duration::from_secs(5),
            persistent: false,
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    stop_subscribers: AtomicBool,
    /// Per publisher stream, summed over its subscribers: how far each has
    /// seen it (highest sequence + 1); and a wake-up for that publisher.
    delivered: Vec<(AtomicU64, tokio::sync::Notify)>,
}

impl Counters {
    fn new(streams: usize) -> Self {
        Counters {
            delivered: (0..streams)
                .map(|_| (AtomicU64::new(0), tokio::sync::Notify::new()))
                .collect(),
            ..Counters::default()
        }
    }
}

/// What one subscriber saw.
struct SubscriberResult {
    histogram: Histogram<u64>,
    duplicates: u64,
    out_of_order: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

fn source(options: &Options, index: usize) -> Option<IpAddr> {
    if options.sources <= 1 {
        return None;
    }
    let n = (index % options.sources.min(250)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n)))
}

/// Opens `count` connections, in order.
async fn open_many(
    options: &Options,
    role: &str,
    count: usize,
) -> Result<Vec<BenchConnection>, BenchError> {
    open_many_from(options, role, count, 0).await
}

/// Runs one scenario and reports what it measured.
pub async fn run(options: &Options) -> Result<Report, BenchError> {
    if options.connections == 0 {
        return Err(BenchError::Options("connections must be at least 1".into()));
    }
    match options.scenario {
        Scenario::Idle => run_idle(options).await,
        Scenario::Connect => run_connect(options).await,
        _ => run_flow(options).await,
    }
}

struct Plan {
    /// Topics each publisher sends to, round robin.
    publishers: Vec<Vec<String>>,
    /// Filter of each subscriber.
    subscribers: Vec<String>,
    /// Deliveries per acknowledged publish.
    fan: u64,
    /// Per-publisher rate, messages per second.
    per_publisher_rate: Option<f64>,
}

fn plan(options: &Options) -> Plan {
    let p = &options.prefix;
    let n = options.connections;
    let rate = |publishers: usize| options.rate.map(|r| r as f64 / publishers as f64);
    match options.scenario {
        Scenario::FanIn => Plan {
            publishers: (0..n).map(|i| vec![format!("{p}/fanin/{i}")]).collect(),
            subscribers: vec![format!("{p}/fanin/+")],
            fan: 1,
            per_publisher_rate: rate(n),
        },
        Scenario::FanOut => Plan {
            publishers: vec![vec![format!("{p}/fanout")]],
            subscribers: (0..n).map(|_| format!("{p}/fanout")).collect(),
            fan: n as u64,
            per_publisher_rate: rate(1),
        },
        Scenario::Pairs => Plan {
            publishers: (0..n).map(|i| vec![format!("{p}/pairs/{i}")]).collect(),
            subscribers: (0..n).map(|i| format!("{p}/pairs/{i}")).collect(),
            fan: 1,
            per_publisher_rate: rate(n),
        },
        Scenario::Fleet | Scenario::Idle | Scenario::Connect => {
            // DESIGN.md's device topics: dwr/{model}/{device-id}/...
            let topics = [
                "hardware/loadavg",
                "hardware/memory",
                "hardware/lte",
                "network/traffic",
            ];
            let per_device = topics.len() as f64 / options.fleet_interval.as_secs_f64().max(0.001);
            Plan {
                publishers: (0..n)
                    .map(|i| {
                        let mac = format!(
                            "00-11-{:02x}-{:02x}-{:02x}-{:02x}",
                            (i >> 24) & 0xff,
                            (i >> 16) & 0xff,
                            (i >> 8) & 0xff,
                            i & 0xff
                        );
                        topics
                            .iter()
                            .map(|t| format!("{p}/311-a1/{mac}/{t}"))
                            .collect()
                    })
                    .collect(),
                subscribers: vec![format!("{p}/+/+/#")],
                fan: 1,
                per_publisher_rate: Some(options.rate.map_or(per_device, |r| r as f64 / n as f64)),
            }
        }
    }
}

/// The window a publisher gets when none is asked for: as much as a peer
/// broker delivers with its default settings without dropping, so that
/// every broker is measured at its pace and not by what it throws away.
/// - Fan-in at QoS 1 and 2: 1,000 in all, Mosquitto's default queue for the
///   one subscriber (`max_queued_messages`), which a slower broker fills.
/// - Fan-in at QoS 0: 4 per publisher at least. Mosquitto sends QoS 0 on or
///   drops it, and bounds only the packets not yet written to the socket:
///   with 1,000 publishers it delivered every message at 4 and 16 each (its
///   `$SYS` counters, 64 B and 1 KiB), and dropped 1 KiB messages at 64.
///   One message each would make every publisher a ping-pong, one `recv`
///   and one ACK per message, and measure the loopback, not the broker.
/// - Otherwise 64 per subscriber.
fn default_window(scenario: Scenario, qos: QoS, publishers: usize) -> usize {
    let share_of_1000 = (1000 / publishers.max(1)).max(1);
    match (scenario, qos) {
        (Scenario::FanIn, QoS::AtMostOnce) => share_of_1000.max(4),
        (Scenario::FanIn, _) => share_of_1000,
        _ => 64,
    }
}

async fn run_flow(options: &Options) -> Result<Report, BenchError> {
    let plan = plan(options);
    let counters = Arc::new(Counters::new(plan.publishers.len()));
    let window = match options.window {
        0 => default_window(options.scenario, options.qos, plan.publishers.len()),
        w => w,
    };
    let start = std::time::Instant::now();

    let mut subscribers = open_many(options, "sub", plan.subscribers.len()).await?;
    for (conn, filter) in subscribers.iter_mut().zip(&plan.subscribers) {
        conn.subscribe(filter, options.qos).await?;
    }
    let publishers = open_many(options, "pub", plan.publishers.len()).await?;

    let mut sub_tasks = JoinSet::new();
    for conn in subscribers {
        let counters = counters.clone();
        sub_tasks.spawn(subscribe_loop(conn, start, counters));
    }
    let before = options.broker_pid.and_then(ProcessSample::read);
    let generator_before = ProcessSample::read(std::process::id());
    let t0 = Instant::now();
    let deadline = t0 + options.duration;
    let mut pub_tasks = JoinSet::new();
    for (stream, (conn, topics)) in publishers.into_iter().zip(plan.publishers).enumerate() {
        let counters = counters.clone();
        let settings = PublisherSettings {
            stream: stream as u32,
            topics,
            qos: options.qos,
            payload: options.payload.max(STAMP_LEN),
            rate: plan.per_publisher_rate,
            window,
            fan: plan.fan,
            deadline,
            drain: options.drain,
            // Spread fleet devices over their interval instead of a thundering herd.
            offset: if options.scenario == Scenario::Fleet {
                options
                    .fleet_interval
                    .mul_f64((stream as f64 * 0.618_034).fract())
            } else {
                Duration::ZERO
            },
        };
        pub_tasks.spawn(publish_loop(conn, settings, start, counters));
    }

    // Progress while publishing.
    let mut last = (0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while Instant::now() < deadline {
        tokio::select! {
            _ = ticker.tick() => {
                let sent = counters.sent.load(Ordering::Relaxed);
                let received = counters.received.load(Ordering::Relaxed);
                if options.progress {
                    eprintln!(
                        "[{}] {:>3.0}s  sent {:>9}/s  received {:>9}/s",
                        options.scenario.name(),
                        t0.elapsed().as_secs_f64(),
                        sent - last.0,
                        received - last.1
                    );
                }
                last = (sent, received);
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let mut publish_errors = Vec::new();
    while let Some(joined) = pub_tasks.join_next().await {
        match joined {
            Ok(Err(e)) => publish_errors.push(e),
            Err(e) => publish_errors.push(BenchError::Options(e.to_string())),
            Ok(Ok(())) => {}
        }
    }
    let publish_secs = t0
        .elapsed()
        .as_secs_f64()
        .min(options.duration.as_secs_f64())
        .max(0.001);
    // Drain: wait for what was acknowledged (or sent, at QoS 0) to arrive.
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);
    let expected = if options.qos == QoS::AtMostOnce {
        sent
    } else {
        acked
    } * plan.fan;
    let drain_until = Instant::now() + options.drain;
    while counters.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    counters.stop_subscribers.store(true, Ordering::Relaxed);
    let after = options.broker_pid.and_then(ProcessSample::read);
    let generator_after = ProcessSample::read(std::process::id());
    let mut merged = histogram();
    let (mut duplicates, mut out_of_order) = (0, 0);
    while let Some(joined) = sub_tasks.join_next().await {
        if let Ok(result) = joined {
            let _ = merged.add(&result.histogram);
            duplicates += result.duplicates;
            out_of_order += result.out_of_order;
        }
    }
    if let Some(e) = publish_errors.into_iter().next() {
        return Err(e);
    }
    let received = counters.received.load(Ordering::Relaxed);
    let receive_secs = elapsed.max(0.001);
    Ok(Report {
        scenario: options.scenario.name().to_owned(),
        connections: options.connections,
        payload_bytes: options.payload.max(STAMP_LEN),
        qos: options.qos as u8,
        rate: options.rate,
        duration_secs: publish_secs,
        sent,
        acked,
        received,
        expected,
        lost: if options.qos == QoS::AtMostOnce {
            0
        } else {
            expected.saturating_sub(received)
        },
        duplicates,
        out_of_order,
        sent_per_sec: sent as f64 / publish_secs,
        received_per_sec: received as f64
            / receive_secs.min(publish_secs + options.drain.as_secs_f64()),
        latency: Latency::from_histogram(&merged),
        window: options.rate.is_none().then_some(window),
        broker_cpu_percent: match (&before, &after) {
            (Some(b), Some(a)) => Some(ProcessSample::cpu_percent(b, a, elapsed)),
            _ => None,
        },
        broker_cpu_us_per_message: match (&before, &after) {
            (Some(b), Some(a)) if received > 0 => {
                Some(ProcessSample::cpu_seconds(b, a) * 1e6 / received as f64)
            }
            _ => None,
        },
        generator_cpu_percent: match (&generator_before, &generator_after) {
            (Some(b), Some(a)) => Some(ProcessSample::cpu_percent(b, a, elapsed)),
            _ => None,
        },
        broker_peak_rss_kib: after.map(|a| a.peak_rss_kib),
        ..Report::default()
    })
}

struct PublisherSettings {
    stream: u32,
    topics: Vec<String>,
    qos: QoS,
    payload: usize,
    rate: Option<f64>,
    window: usize,
    fan: u64,
    deadline: Instant,
    drain: Duration,
    offset: Duration,
}

async fn publish_loop(
    mut conn: BenchConnection,
    s: PublisherSettings,
    start: std::time::Instant,
    counters: Arc<Counters>,
) -> Result<(), BenchError> {
    let period = s
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    // Max rate is a closed loop: at most `window` messages on their way per
    // subscriber, so no broker has to drop to keep up and loss means loss.
    let closed_loop = period.is_none();
    let (delivered, wake) = match counters.delivered.get(s.stream as usize) {
        Some((d, w)) => (d, w),
        None => return Err(BenchError::Options("stream without a counter".into())),
    };
    let mut next_send = Instant::now() + s.offset;
    let mut sequence = 0u64;
    let mut inflight = 0usize;
    let mut next_id = 1u16;
    let mut body = vec![0u8; s.payload];
    let qos0 = s.qos == QoS::AtMostOnce;
    let mut last_progress = (0u64, Instant::now());
    loop {
        let now = Instant::now();
        if now >= s.deadline {
            break;
        }
        let mut batch = 0;
        loop {
            if batch >= 64 || (!qos0 && inflight >= conn.send_quota) {
                break;
            }
            if closed_loop {
                let outstanding =
                    (sequence * s.fan).saturating_sub(delivered.load(Ordering::Relaxed));
                if outstanding >= s.window as u64 * s.fan {
                    break;
                }
            } else if let Some(p) = period {
                if Instant::now() < next_send {
                    break;
                }
                next_send += p;
            }
            Stamp::now(start, s.stream, sequence).write(&mut body);
            let topic = &s.topics[(sequence as usize) % s.topics.len()];
            let id = if qos0 {
                0
            } else {
                let id = next_id;
                next_id = next_id.checked_add(1).unwrap_or(1);
                inflight += 1;
                id
            };
            conn.push(&publish(topic, s.qos, id, Bytes::copy_from_slice(&body)));
            sequence += 1;
            batch += 1;
        }
        if batch > 0 {
            conn.flush().await?;
            counters.sent.fetch_add(batch as u64, Ordering::Relaxed);
            if batch == 64 {
                // More may be allowed right away; let the other tasks run first.
                tokio::task::yield_now().await;
                continue;
            }
        }
        if closed_loop {
            // A window that stops moving means messages were lost: give up
            // rather than wait for them until the deadline.
            let seen = delivered.load(Ordering::Relaxed);
            if seen != last_progress.0 {
                last_progress = (seen, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let wake_at = match period {
            Some(_) => next_send.min(s.deadline),
            None => (Instant::now() + Duration::from_millis(100)).min(s.deadline),
        };
        tokio::select! {
            read = conn.read_more(), if !qos0 => {
                read?;
                inflight -= handle_acks(&mut conn, &counters)?.min(inflight);
                conn.flush().await?;
            }
            _ = wake.notified(), if closed_loop => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
    // Wait for the acknowledgements still due.
    let until = s.deadline + s.drain;
    while inflight > 0 {
        tokio::select! {
            read = conn.read_more() => {
                read?;
                inflight -= handle_acks(&mut conn, &counters)?.min(inflight);
                conn.flush().await?;
            }
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    conn.disconnect().await;
    Ok(())
}

/// Processes buffered acknowledgements; returns how many flows completed.
fn handle_acks(conn: &mut BenchConnection, counters: &Counters) -> Result<usize, BenchError> {
    let mut done = 0;
    while let Some(packet) = conn.decoder.decode(&mut conn.rbuf)? {
        match packet {
            Packet::PubAck(_) | Packet::PubComp(_) => done += 1,
            Packet::PubRec(rec) => conn.push(&Packet::PubRel(PubResponse::new(rec.packet_id))),
            Packet::Disconnect(_) => return Err(BenchError::Closed),
            _ => {}
        }
    }
    counters.acked.fetch_add(done as u64, Ordering::Relaxed);
    Ok(done)
}

async fn subscribe_loop(
    mut conn: BenchConnection,
    start: std::time::Instant,
    counters: Arc<Counters>,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        histogram: histogram(),
        duplicates: 0,
        out_of_order: 0,
    };
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut per_stream: HashMap<u32, u64> = HashMap::new();
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            read = conn.read_more() => {
                if read.is_err() {
                    break;
                }
            }
            _ = poll.tick() => {
                if counters.stop_subscribers.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
        }
        let mut received = 0u64;
        loop {
            let packet = match conn.decoder.decode(&mut conn.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => return result,
            };
            match packet {
                Packet::Publish(p) => {
                    received += 1;
                    if let Some(stamp) = Stamp::read(&p.payload) {
                        let _ = result.histogram.record(stamp.latency_micros(start).max(1));
                        // A stream's window moves to its highest sequence
                        // seen: a QoS 0 message the broker dropped (as it may)
                        // does not hold its publisher back for the rest of the run.
                        let advance = match last.get(&stamp.stream) {
                            Some(prev) if stamp.sequence == *prev => {
                                result.duplicates += 1;
                                0
                            }
                            Some(prev) if stamp.sequence < *prev => {
                                result.out_of_order += 1;
                                0
                            }
                            Some(prev) => stamp.sequence - prev,
                            None => stamp.sequence + 1,
                        };
                        if advance > 0 {
                            last.insert(stamp.stream, stamp.sequence);
                            *per_stream.entry(stamp.stream).or_default() += advance;
                        }
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {
                            conn.push(&Packet::PubAck(PubResponse::new(p.packet_id)))
                        }
                        QoS::ExactlyOnce => {
                            conn.push(&Packet::PubRec(PubResponse::new(p.packet_id)))
                        }
                    }
                }
                Packet::PubRel(rel) => conn.push(&Packet::PubComp(PubResponse::new(rel.packet_id))),
                _ => {}
            }
        }
        counters.received.fetch_add(received, Ordering::Relaxed);
        for (stream, n) in per_stream.drain() {
            if let Some((delivered, wake)) = counters.delivered.get(stream as usize) {
                delivered.fetch_add(n, Ordering::Relaxed);
                wake.notify_one();
            }
        }
        if conn.flush().await.is_err() {
            break;
        }
    }
    conn.disconnect().await;
    result
}

async fn run_idle(options: &Options) -> Result<Report, BenchError> {
    let before = options.broker_pid.and_then(ProcessSample::read);
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(options.connections);
    let chunk = 10_000;
    while held.len() < options.connections {
        let n = chunk.min(options.connections - held.len());
        let mut sub_options = options.clone();
        sub_options.prefix = format!("{}-{}", options.prefix, held.len());
        let opened = open_many_from(&sub_options, "idle", n, held.len()).await?;
        held.extend(opened);
        if options.progress {
            eprintln!("[idle] {:>7} connections open", held.len());
        }
    }
    let opening = t0.elapsed().as_secs_f64();
    // Let the broker settle, then hold for the duration.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = options.broker_pid.and_then(ProcessSample::read);
    tokio::time::sleep(options.duration).await;
    let after = options.broker_pid.and_then(ProcessSample::read);
    let count = held.len();
    drop(held);
    Ok(Report {
        scenario: "idle".into(),
        connections: options.connections,
        held: count,
        // Opened 512 at a time, each held: the table of every open
        // connection grows as they arrive.
        connects_per_sec: count as f64 / opening.max(0.001),
        duration_secs: t0.elapsed().as_secs_f64(),
        broker_peak_rss_kib: after.map(|a| a.peak_rss_kib),
        broker_cpu_percent: match (&during, &after) {
            (Some(d), Some(a)) => Some(ProcessSample::cpu_percent(
                d,
                a,
                options.duration.as_secs_f64(),
            )),
            _ => None,
        },
        broker_bytes_per_connection: match (&before, &during) {
            (Some(b), Some(d)) if count > 0 => {
                Some(d.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0 / count as f64)
            }
            _ => None,
        },
        ..Report::default()
    })
}

/// Like `open_many`, numbering sources from `offset` so every loopback
/// address gets its share.
async fn open_many_from(
    options: &Options,
    role: &str,
    count: usize,
    offset: usize,
) -> Result<Vec<BenchConnection>, BenchError> {
    let mut out = Vec::with_capacity(count);
    let parallel = 512;
    let mut index = 0;
    while index < count {
        let mut set = JoinSet::new();
        for i in index..(index + parallel).min(count) {
            let id = format!("{}-{role}-{i}", options.prefix);
            let addr = options.addr;
            let src = source(options, offset + i);
            let version = options.version;
            let persistent = options.persistent;
            set.spawn(async move {
                let conn = BenchConnection::connect(addr, src, &id, version, persistent).await;
                (i, conn)
            });
        }
        let mut batch = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (i, conn) = joined.map_err(|e| BenchError::Options(e.to_string()))?;
            batch.push((i, conn?));
        }
        // Publishers and subscribers are paired by position.
        batch.sort_by_key(|(i, _)| *i);
        out.extend(batch.into_iter().map(|(_, c)| c));
        index += parallel;
    }
    Ok(out)
}

async fn run_connect(options: &Options) -> Result<Report, BenchError> {
    let before = options.broker_pid.and_then(ProcessSample::read);
    let connected = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + options.duration;
    let mut set = JoinSet::new();
    for worker in 0..options.connections {
        let options = options.clone();
        let connected = connected.clone();
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let id = format!("{}-connect-{worker}-{n}", options.prefix);
                let conn = BenchConnection::connect(
                    options.addr,
                    source(&options, worker),
                    &id,
                    options.version,
                    options.persistent,
                )
                .await?;
                conn.disconnect().await;
                connected.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<(), BenchError>(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        if let Ok(Err(e)) = joined {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = options.broker_pid.and_then(ProcessSample::read);
    let total = connected.load(Ordering::Relaxed);
    Ok(Report {
        scenario: "connect".into(),
        connections: options.connections,
        duration_secs: elapsed,
        connects_per_sec: total as f64 / elapsed,
        broker_cpu_percent: match (&before, &after) {
            (Some(b), Some(a)) => Some(ProcessSample::cpu_percent(b, a, elapsed)),
            _ => None,
        },
        broker_peak_rss_kib: after.map(|a| a.peak_rss_kib),
        ..Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_windows_stay_within_what_a_peer_delivers() {
        assert_eq!(default_window(Scenario::FanIn, QoS::AtLeastOnce, 1000), 1);
        assert_eq!(default_window(Scenario::FanIn, QoS::AtLeastOnce, 100), 10);
        assert_eq!(default_window(Scenario::FanIn, QoS::AtMostOnce, 1000), 4);
        assert_eq!(default_window(Scenario::FanIn, QoS::AtMostOnce, 100), 10);
        assert_eq!(default_window(Scenario::FanIn, QoS::AtMostOnce, 0), 1000);
        assert_eq!(default_window(Scenario::Pairs, QoS::AtMostOnce, 100), 64);
        assert_eq!(default_window(Scenario::FanOut, QoS::ExactlyOnce, 1), 64);
    }
}
