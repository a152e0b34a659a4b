//! `telemark broker --data DIR`: what the broker acknowledged survives
//! `kill -9`. A publisher streams QoS 1 and 2 messages to a persistent
//! session that is offline, the broker is killed at a different moment in
//! each of 50 runs and started again; then the subscriber drains its queue,
//! with one more kill half-way. Every acknowledged message arrives, and no
//! QoS 2 message arrives twice.

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

/// `telemark broker` journaling in `dir`, with `settings` added to its
/// `[broker]` section.
fn broker(port: u16, dir: &Path, settings: &str) -> KilledOnDrop {
    let config = dir.join("broker.toml");
    // Room for every message of the test in the offline session's queue.
    std::fs::write(
        &config,
        format!("[broker]\nmax_queued_messages = 100000\n{settings}"),
    )
    .expect("config");
    let child: Child = telemark()
        .args(["broker", "--tcp", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.join("journal"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("telemark broker starts");
    wait_for_port(port);
    KilledOnDrop(Some(child))
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

/// Every acknowledged message arrived; no QoS 2 message arrived twice.
fn check(publisher: &Publisher, subscriber: &Subscriber, what: &str, runs: u64) {
    let lost: Vec<u64> = publisher
        .acknowledged
        .iter()
        .copied()
        .filter(|seq| !subscriber.arrived.contains_key(seq))
        .collect();
    let twice: Vec<u64> = subscriber
        .arrived
        .iter()
        .filter(|(seq, n)| qos_of(**seq) == QoS::ExactlyOnce && **n > 1)
        .map(|(seq, _)| *seq)
        .collect();
    eprintln!(
        "{what}: {} sent, {} acknowledged, {} delivered, {} acknowledged and lost, {} QoS 2 delivered twice",
        publisher.next_seq,
        publisher.acknowledged.len(),
        subscriber.arrived.len(),
        lost.len(),
        twice.len()
    );
    assert!(
        publisher.acknowledged.len() as u64 >= runs * WINDOW as u64 / 2,
        "the publisher got acknowledgements in the runs ({})",
        publisher.acknowledged.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(twice.is_empty(), "QoS 2 delivered twice: {twice:?}");
}

#[test]
fn every_message_acknowledged_before_a_kill_9_is_delivered_and_qos2_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut running = broker(port, dir.path(), "");
    park_subscriber(port);
    let mut publisher = Publisher::default();
    for run in 0..RUNS {
        let mut client = connect(port, "publisher");
        publisher.publish_until_killed(&mut client, run);
        kill(running);
        publisher.read_until_closed(&mut client);
        running = broker(port, dir.path(), "");
    }
    publisher.finish(port);

    // The subscriber drains, with the broker killed half-way.
    let mut subscriber = Subscriber::default();
    let half = publisher.acknowledged.len() / 2;
    let mut keeper = connect(port, "keeper");
    assert!(
        subscriber.drain(&mut keeper, Duration::from_secs(5), half),
        "the queue was kept"
    );
    kill(running);
    subscriber.drain(&mut keeper, Duration::from_millis(300), usize::MAX);
    let _running = broker(port, dir.path(), "");
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(3), usize::MAX);
    check(
        &publisher,
        &subscriber,
        &format!("{RUNS} kills while publishing + 1 while delivering"),
        RUNS,
    );
}

/// With `fsync = "always"`, a power cut — simulated by cutting the journal
/// back to what was synced when the broker was killed, with torn bytes
/// after it — loses nothing acknowledged.
#[test]
fn a_power_cut_loses_nothing_acknowledged_with_fsync_always() {
    const CUTS: u64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let settings = "fsync = \"always\"\njournal_record_synced_length = true\n";
    let mut running = broker(port, dir.path(), settings);
    park_subscriber(port);
    let mut publisher = Publisher::default();
    let journal = dir.path().join("journal");
    for run in 0..CUTS {
        let mut client = connect(port, "publisher");
        publisher.publish_until_killed(&mut client, run * 5);
        kill(running);
        publisher.read_until_closed(&mut client);
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
        // Half a record the disk got to before the power went.
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).expect("seek");
        std::io::Write::write_all(&mut file, &[0x2a, 0, 0, 0, 0xde, 0xad]).expect("torn tail");
        drop(file);
        running = broker(port, dir.path(), settings);
    }
    publisher.finish(port);
    let mut subscriber = Subscriber::default();
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(3), usize::MAX);
    drop(running);
    check(&publisher, &subscriber, &format!("{CUTS} power cuts"), CUTS);
}
