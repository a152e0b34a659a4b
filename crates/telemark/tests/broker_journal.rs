//! `telemark broker --data DIR`: what the broker acknowledged survives
//! `kill -9`. A publisher streams QoS 1 and 2 messages to a persistent
//! session that is offline, the broker is killed at a different moment in
//! each of 50 runs and started again; then the subscriber drains its queue,
//! with one more kill half-way. Every acknowledged message arrives, and no
//! QoS 2 message arrives twice.
//!
//! The same runs against Mosquitto with `persistence true`, side by side,
//! are a report rather than a test (`bench/persistence.sh`, ignored here).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mqtt::{
    Connect, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscriptionOptions,
};

const RUNS: u64 = 50;
const WINDOW: usize = 32;
const PER_RUN: u64 = 400;

/// The broker's log in `dir`, appended to by each start.
fn log(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .map(Stdio::from)
        .expect("log file")
}

/// The broker the runs kill and start again, in a directory of its own.
enum Engine<'a> {
    /// `telemark broker --data`, with these lines added to `[broker]`.
    Telemark(&'a str),
    /// Mosquitto with `persistence true`, with these lines added to its
    /// configuration.
    Mosquitto(&'a str),
}

impl Engine<'_> {
    fn start(&self, port: u16, dir: &Path) -> KilledOnDrop {
        let child: Child = match self {
            Engine::Telemark(settings) => {
                let config = dir.join("broker.toml");
                // Room for every message of the test in the offline session's queue.
                std::fs::write(
                    &config,
                    format!("[broker]\nmax_queued_messages = 100000\n{settings}"),
                )
                .expect("config");
                telemark()
                    .args(["broker", "--tcp", &format!("127.0.0.1:{port}")])
                    .arg("--config")
                    .arg(&config)
                    .arg("--data")
                    .arg(dir.join("journal"))
                    // The journal's own lines (recovery, compaction) are
                    // kept across restarts for the test to read.
                    .env("RUST_LOG", "warn,broker::persistence=debug")
                    .stdout(Stdio::null())
                    .stderr(log(dir))
                    .spawn()
                    .expect("telemark broker starts")
            }
            Engine::Mosquitto(settings) => {
                return start_mosquitto(
                    dir,
                    port,
                    &format!(
                        "persistence true\npersistence_location {}/\n\
                         max_queued_messages 100000\n{settings}",
                        dir.display()
                    ),
                );
            }
        };
        wait_for_port(port);
        KilledOnDrop(Some(child))
    }
}

fn kill(mut running: KilledOnDrop) {
    if let Some(mut child) = running.0.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
}

/// A 3.1.1 session that outlives its connections.
fn connect(port: u16, client_id: &str) -> RawClient {
    let (client, ack) = RawClient::connect(
        port,
        Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        },
    )
    .expect("connects");
    assert!(!ack.reason.is_error(), "{ack:?}");
    client
}

fn qos_of(seq: u64) -> QoS {
    if seq.is_multiple_of(2) {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The publisher's side of its session: what it sent and has not finished.
#[derive(Default)]
struct Publisher {
    next_seq: u64,
    /// packet id → (message number, PUBREC received)
    unfinished: BTreeMap<u16, (u64, bool)>,
    acknowledged: BTreeSet<u64>,
}

impl Publisher {
    fn publish(&mut self, client: &mut RawClient, seq: u64, packet_id: u16, dup: bool) {
        client.send(&Packet::Publish(Publish {
            dup,
            qos: qos_of(seq),
            retain: false,
            topic: format!("load/{}", seq % 7),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from(seq.to_string()),
        }));
    }

    /// On a resumed session, unfinished flows go again [MQTT-4.4.0-1].
    fn resume(&mut self, client: &mut RawClient) {
        let unfinished: Vec<(u16, (u64, bool))> =
            self.unfinished.iter().map(|(k, v)| (*k, *v)).collect();
        for (packet_id, (seq, released)) in unfinished {
            if released {
                client.send(&Packet::PubRel(PubResponse::new(packet_id)));
            } else {
                self.publish(client, seq, packet_id, true);
            }
        }
    }

    /// Handles one packet; false when the connection is gone.
    fn answer(&mut self, client: &mut RawClient, packet: Option<Packet>) -> bool {
        match packet {
            Some(Packet::PubAck(ack)) => {
                if let Some((seq, _)) = self.unfinished.remove(&ack.packet_id) {
                    self.acknowledged.insert(seq);
                }
                true
            }
            Some(Packet::PubRec(rec)) => {
                if let Some((seq, released)) = self.unfinished.get_mut(&rec.packet_id) {
                    self.acknowledged.insert(*seq);
                    *released = true;
                }
                client.send(&Packet::PubRel(PubResponse::new(rec.packet_id)));
                true
            }
            Some(Packet::PubComp(comp)) => {
                self.unfinished.remove(&comp.packet_id);
                true
            }
            Some(_) => true,
            None => false,
        }
    }
}

/// The subscriber's side: how often each message arrived, and the QoS 2
/// identifiers it holds until PUBREL (its session state, kept across
/// connections as a client must).
#[derive(Default)]
struct Subscriber {
    arrived: HashMap<u64, u32>,
    awaiting_release: HashSet<u16>,
    /// Message numbers in the order they arrived.
    order: Vec<u64>,
}

impl Subscriber {
    /// Reads until nothing comes for `quiet` or `stop_after` messages
    /// arrived; false if the connection went.
    fn drain(&mut self, client: &mut RawClient, quiet: Duration, stop_after: usize) -> bool {
        let mut taken = 0;
        while taken < stop_after {
            match client.next(quiet) {
                Some(Packet::Publish(p)) => {
                    let seq: u64 = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("a numbered message");
                    match p.qos {
                        QoS::AtLeastOnce => {
                            *self.arrived.entry(seq).or_default() += 1;
                            self.order.push(seq);
                            taken += 1;
                            client.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
                        }
                        QoS::ExactlyOnce => {
                            // [MQTT-4.3.3-9] a PUBLISH with an identifier
                            // awaiting PUBREL is the same message again.
                            if self.awaiting_release.insert(p.packet_id) {
                                *self.arrived.entry(seq).or_default() += 1;
                                taken += 1;
                            }
                            client.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
                        }
                        QoS::AtMostOnce => panic!("QoS 0 delivery of {seq}"),
                    }
                }
                Some(Packet::PubRel(rel)) => {
                    self.awaiting_release.remove(&rel.packet_id);
                    client.send(&Packet::PubComp(PubResponse::new(rel.packet_id)));
                }
                Some(_) => {}
                None => return false,
            }
        }
        true
    }
}

impl Publisher {
    /// Resumes, then publishes with up to `WINDOW` unfinished until the
    /// moment this run's kill comes.
    fn publish_until_killed(&mut self, client: &mut RawClient, run: u64) {
        self.resume(client);
        let kill_at = Duration::from_millis(20 + (run * 37) % 180);
        let started = Instant::now();
        let last = self.next_seq + PER_RUN;
        while started.elapsed() < kill_at {
            while self.unfinished.len() < WINDOW && self.next_seq < last {
                let seq = self.next_seq;
                self.next_seq += 1;
                let packet_id = (seq % 65_535) as u16 + 1;
                self.publish(client, seq, packet_id, false);
                self.unfinished.insert(packet_id, (seq, false));
            }
            let packet = client.next(Duration::from_millis(2));
            self.answer(client, packet);
        }
    }

    /// What reached the publisher before the kill counts as acknowledged.
    fn read_until_closed(&mut self, client: &mut RawClient) {
        loop {
            let packet = client.next(Duration::from_millis(300));
            if !self.answer(client, packet) {
                return;
            }
        }
    }

    /// Reconnects and finishes every flow it has in flight.
    fn finish(&mut self, port: u16) {
        let mut client = connect(port, "publisher");
        self.resume(&mut client);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.unfinished.is_empty() && Instant::now() < deadline {
            let packet = client.next(Duration::from_millis(200));
            self.answer(&mut client, packet);
        }
        assert!(self.unfinished.is_empty(), "publisher's flows finish");
    }
}

/// A persistent session subscribed to `load/#` at QoS 2, then offline.
fn park_subscriber(port: u16) {
    let mut keeper = connect(port, "keeper");
    keeper.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            "load/#".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..SubscriptionOptions::default()
            },
        )],
    }));
    assert!(matches!(
        keeper.next(Duration::from_secs(5)),
        Some(Packet::SubAck(_))
    ));
    keeper.send(&Packet::Disconnect(mqtt::Disconnect::new(
        mqtt::ReasonCode::Success,
    )));
}

/// What one engine's crash runs counted.
struct Tally {
    sent: u64,
    acknowledged: usize,
    delivered: usize,
    /// Acknowledged to the publisher and never delivered.
    lost: Vec<u64>,
    /// QoS 2 messages delivered more than once.
    twice: Vec<u64>,
    /// What the broker logged in all its starts.
    log: String,
}

impl Tally {
    fn of(publisher: &Publisher, subscriber: &Subscriber, dir: &Path) -> Tally {
        Tally {
            log: std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default(),
            sent: publisher.next_seq,
            acknowledged: publisher.acknowledged.len(),
            delivered: subscriber.arrived.len(),
            lost: publisher
                .acknowledged
                .iter()
                .copied()
                .filter(|seq| !subscriber.arrived.contains_key(seq))
                .collect(),
            twice: subscriber
                .arrived
                .iter()
                .filter(|(seq, n)| qos_of(**seq) == QoS::ExactlyOnce && **n > 1)
                .map(|(seq, _)| *seq)
                .collect(),
        }
    }

    /// Every acknowledged message arrived; no QoS 2 message arrived twice.
    fn assert_nothing_lost(&self, what: &str, runs: u64) {
        eprintln!(
            "{what}: {} sent, {} acknowledged, {} delivered, {} acknowledged and lost, {} QoS 2 delivered twice",
            self.sent,
            self.acknowledged,
            self.delivered,
            self.lost.len(),
            self.twice.len()
        );
        assert!(
            self.acknowledged as u64 >= runs * WINDOW as u64 / 2,
            "the publisher got acknowledgements in the runs ({})",
            self.acknowledged
        );
        assert!(
            self.lost.is_empty(),
            "{} acknowledged messages lost, e.g. {:?}; the broker logged:\n{}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(10)],
            self.log
        );
        assert!(
            self.twice.is_empty(),
            "QoS 2 delivered twice: {:?}",
            self.twice
        );
    }
}

/// `runs` kills while publishing and one while the subscriber drains;
/// `after_kill` sees the engine's directory before each start.
fn crash_runs(engine: &Engine, runs: u64, after_kill: &mut dyn FnMut(&Path)) -> Tally {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut running = engine.start(port, dir.path());
    park_subscriber(port);
    let mut publisher = Publisher::default();
    for run in 0..runs {
        let mut client = connect(port, "publisher");
        publisher.publish_until_killed(&mut client, run);
        kill(running);
        publisher.read_until_closed(&mut client);
        after_kill(dir.path());
        running = engine.start(port, dir.path());
    }
    publisher.finish(port);

    // The subscriber drains, with the broker killed half-way.
    let mut subscriber = Subscriber::default();
    let half = publisher.acknowledged.len() / 2;
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(5), half);
    kill(running);
    subscriber.drain(&mut keeper, Duration::from_millis(300), usize::MAX);
    after_kill(dir.path());
    let _running = engine.start(port, dir.path());
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(3), usize::MAX);
    Tally::of(&publisher, &subscriber, dir.path())
}

#[test]
fn every_message_acknowledged_before_a_kill_9_is_delivered_and_qos2_once() {
    crash_runs(&Engine::Telemark(""), RUNS, &mut |_| {}).assert_nothing_lost(
        &format!("{RUNS} kills while publishing + 1 while delivering"),
        RUNS,
    );
}

/// Compaction while the broker runs copies each queued message from the
/// old journal to the new one (the writer keeps no message bodies): with a
/// tiny threshold it compacts while thousands of messages are queued, and
/// the starts after it recover them from the copied records.
#[test]
fn compacting_under_load_between_kills_loses_nothing() {
    const KILLS: u64 = 12;
    let tally = crash_runs(
        &Engine::Telemark("journal_compact_bytes = 16384\n"),
        KILLS,
        &mut |_| {},
    );
    let compactions = tally.log.matches("journal compacted").count();
    assert!(
        compactions > 0,
        "the journal compacted while running ({compactions} times)"
    );
    tally.assert_nothing_lost(&format!("{KILLS} kills, {compactions} compactions"), KILLS);
}

/// The broker's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("VmRSS")
}

/// With a data directory, queues past `max_queued_bytes_total` go to disk
/// instead of being dropped: 24 MiB queued for an offline session under a
/// 1 MiB bound, the broker's memory does not grow by them, a `kill -9`
/// later every message arrives, in order.
#[test]
fn queues_past_the_memory_bound_go_to_disk_and_all_arrive_in_order() {
    const MESSAGES: u64 = 24_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let engine =
        Engine::Telemark("max_queued_bytes_total = 1048576\nmax_queued_bytes = 268435456\n");
    let mut running = engine.start(port, dir.path());
    park_subscriber(port);
    let pid = running.0.as_ref().map(|c| c.id()).expect("pid");
    let before = rss_kib(pid);

    let mut client = connect(port, "publisher");
    let mut unacked = HashSet::new();
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (next < MESSAGES || !unacked.is_empty()) && Instant::now() < deadline {
        while unacked.len() < 64 && next < MESSAGES {
            let packet_id = (next % 60_000) as u16 + 1;
            client.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "load/spill".into(),
                packet_id,
                properties: Properties::default(),
                // The number, zero-padded to 1 KiB.
                payload: Bytes::from(format!("{next:0>1024}")),
            }));
            unacked.insert(packet_id);
            next += 1;
        }
        match client.next(Duration::from_secs(5)) {
            Some(Packet::PubAck(ack)) => {
                unacked.remove(&ack.packet_id);
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        next == MESSAGES && unacked.is_empty(),
        "every message acknowledged"
    );
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    let spill = dir.path().join("journal").join("spill");
    let on_disk: u64 = std::fs::read_dir(&spill)
        .expect("spill directory")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "{MESSAGES} messages of 1 KiB queued: broker memory grew {grown_mib} MiB, {} MiB on disk",
        on_disk >> 20
    );
    assert!(
        on_disk > 20 << 20,
        "the queue went to disk ({on_disk} bytes)"
    );
    assert!(
        grown_mib < 12,
        "the broker's memory grew {grown_mib} MiB for 24 MiB queued under a 1 MiB bound"
    );

    // The journal, not the spill file, is what survives a crash.
    kill(running);
    running = engine.start(port, dir.path());
    let mut subscriber = Subscriber::default();
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(5), usize::MAX);
    drop(running);
    assert_eq!(
        subscriber.order,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message arrives once, in order"
    );
}

/// Cuts the journal back to what was synced when the broker was killed,
/// with half a record after it that the disk got to before the power went.
fn cut_power(dir: &Path) {
    let journal = dir.join("journal");
    let synced: u64 = std::fs::read_to_string(journal.join("journal.synced"))
        .expect("synced length")
        .trim()
        .parse()
        .expect("a number");
    let path = journal.join("journal");
    let written = std::fs::metadata(&path).expect("journal").len();
    assert!(written >= synced, "the file holds what was synced");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("journal");
    file.set_len(synced).expect("cut to the synced length");
    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).expect("seek");
    std::io::Write::write_all(&mut file, &[0x2a, 0, 0, 0, 0xde, 0xad]).expect("torn tail");
}

/// With `fsync = "always"`, a power cut loses nothing acknowledged.
#[test]
fn a_power_cut_loses_nothing_acknowledged_with_fsync_always() {
    const CUTS: u64 = 8;
    let settings = "fsync = \"always\"\njournal_record_synced_length = true\n";
    crash_runs(&Engine::Telemark(settings), CUTS, &mut cut_power)
        .assert_nothing_lost(&format!("{CUTS} power cuts"), CUTS);
}

/// The same crash runs against Telemark and Mosquitto with `persistence
/// true`, one after the other, as a table (`bench/persistence.sh`).
#[test]
#[ignore = "a report, run by bench/persistence.sh"]
fn side_by_side_with_mosquitto() {
    let engines = [
        (
            "Telemark, fsync = \"always\" (default)",
            Engine::Telemark(""),
        ),
        (
            "Telemark, fsync = \"batch\"",
            Engine::Telemark("fsync = \"batch\"\n"),
        ),
        (
            "Telemark, fsync = \"never\"",
            Engine::Telemark("fsync = \"never\"\n"),
        ),
        (
            "Mosquitto, persistence true (defaults)",
            Engine::Mosquitto(""),
        ),
        (
            "Mosquitto, persistence true, autosave_on_changes, autosave_interval 1",
            Engine::Mosquitto("autosave_on_changes true\nautosave_interval 1\n"),
        ),
    ];
    println!(
        "| broker | kills | sent | acknowledged | delivered | acknowledged and lost | QoS 2 delivered twice |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, engine) in &engines {
        let tally = crash_runs(engine, RUNS, &mut |_| {});
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            RUNS + 1,
            tally.sent,
            tally.acknowledged,
            tally.delivered,
            tally.lost.len(),
            tally.twice.len()
        );
    }
}
