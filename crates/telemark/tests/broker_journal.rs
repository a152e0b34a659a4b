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

fn broker(port: u16, dir: &Path) -> KilledOnDrop {
    let config = dir.join("broker.toml");
    // Room for every message of the test in the offline session's queue.
    std::fs::write(&config, "[broker]\nmax_queued_messages = 100000\n").expect("config");
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
    if seq % 2 == 0 {
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

#[test]
fn every_message_acknowledged_before_a_kill_9_is_delivered_and_qos2_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut running = broker(port, dir.path());

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
    drop(keeper);

    let mut publisher = Publisher::default();
    for run in 0..RUNS {
        let mut client = connect(port, "publisher");
        publisher.resume(&mut client);
        let kill_at = Duration::from_millis(20 + (run * 37) % 180);
        let started = Instant::now();
        let last = publisher.next_seq + PER_RUN;
        while started.elapsed() < kill_at {
            while publisher.unfinished.len() < WINDOW && publisher.next_seq < last {
                let seq = publisher.next_seq;
                publisher.next_seq += 1;
                let packet_id = (seq % 65_535) as u16 + 1;
                publisher.publish(&mut client, seq, packet_id, false);
                publisher.unfinished.insert(packet_id, (seq, false));
            }
            let packet = client.next(Duration::from_millis(2));
            publisher.answer(&mut client, packet);
        }
        kill(running);
        // What reached the publisher before the kill counts as acknowledged.
        loop {
            let packet = client.next(Duration::from_millis(300));
            if !publisher.answer(&mut client, packet) {
                break;
            }
        }
        running = broker(port, dir.path());
    }
    // The publisher finishes what it has in flight.
    let mut client = connect(port, "publisher");
    publisher.resume(&mut client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !publisher.unfinished.is_empty() && Instant::now() < deadline {
        let packet = client.next(Duration::from_millis(200));
        publisher.answer(&mut client, packet);
    }
    assert!(publisher.unfinished.is_empty(), "publisher's flows finish");
    drop(client);

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
    let _running = broker(port, dir.path());
    let mut keeper = connect(port, "keeper");
    subscriber.drain(&mut keeper, Duration::from_secs(3), usize::MAX);

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
        "{RUNS} kills while publishing + 1 while delivering: {} sent, {} acknowledged, {} delivered, {} acknowledged and lost, {} QoS 2 delivered twice",
        publisher.next_seq,
        publisher.acknowledged.len(),
        subscriber.arrived.len(),
        lost.len(),
        twice.len()
    );
    assert!(
        publisher.acknowledged.len() as u64 >= RUNS * WINDOW as u64 / 2,
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
