//! Acknowledged means durable (DESIGN.md): every QoS 1 reading `serve`
//! acknowledged to a device is in its database after `kill -9` and a
//! restart, whenever the kill comes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use mqtt::{Connect, Packet, Properties, ProtocolVersion, Publish, QoS};

const MAC: &str = "00-11-22-33-66-01";
const RUNS: u64 = 20;
const WINDOW: usize = 32;

/// The device: a persistent 3.1.1 session with its MQTT secret.
fn device(port: u16, secret: &str) -> RawClient {
    let (client, ack) = RawClient::connect(
        port,
        Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: MAC.into(),
            will: None,
            username: Some(MAC.into()),
            password: Some(Bytes::copy_from_slice(secret.as_bytes())),
        },
    )
    .expect("the device connects");
    assert!(!ack.reason.is_error(), "{ack:?}");
    client
}

fn memory(ts: i64) -> String {
    format!(r#"{{"v":1,"ts":{ts},"total_kb":1000,"available_kb":250,"used_percent":75.0}}"#)
}

#[test]
fn every_reading_acknowledged_before_a_kill_9_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut platform = start_platform(&data, http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let device_id = register_device(http_port, &bearer, "DURABLE", "00:11:22:33:66:01");
    let (status, body) = http(
        http_port,
        "POST",
        &format!("/api/v1/devices/{device_id}/credentials"),
        &[("Authorization", bearer.as_str())],
        "",
    );
    assert_eq!(status, 201, "{body}");
    let secret = json_string(&body, "password");
    let topic = format!("dwr/311-a1/{MAC}/hardware/memory");
    // A second apart in device time, twenty days back (inside the ingest's
    // window): one reading of `memory.used_percent` per message.
    let t0 = (now_ms() - 20 * 86_400_000) / 1000 * 1000;
    let mut next_seq = 0u64;
    let mut acknowledged = Vec::new();

    for run in 0..RUNS {
        let mut device = device(mqtt_port, &secret);
        // Killed somewhere between 100 and 400 ms into the stream.
        let kill_at = Duration::from_millis(100 + (run * 97) % 300);
        let started = Instant::now();
        let mut in_flight: HashMap<u16, u64> = HashMap::new();
        let mut ack = |packet: Option<Packet>, in_flight: &mut HashMap<u16, u64>| match packet {
            Some(Packet::PubAck(a)) => {
                acknowledged.extend(in_flight.remove(&a.packet_id));
                true
            }
            Some(_) => true,
            None => false,
        };
        while started.elapsed() < kill_at {
            while in_flight.len() < WINDOW {
                let seq = next_seq;
                next_seq += 1;
                let packet_id = (seq % 65_535) as u16 + 1;
                device.send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id,
                    properties: Properties::default(),
                    payload: Bytes::from(memory(t0 + seq as i64 * 1000)),
                }));
                in_flight.insert(packet_id, seq);
            }
            ack(device.next(Duration::from_millis(5)), &mut in_flight);
        }
        platform.child.kill().expect("kill -9");
        platform.child.wait().expect("reaped");
        // What reached the device before the kill counts as acknowledged.
        while ack(device.next(Duration::from_millis(500)), &mut in_flight) {}
        platform = start_platform(&data, http_port, mqtt_port);
    }

    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let mut stored = BTreeSet::new();
    // At most 10,000 points a request.
    for chunk in (0..next_seq).step_by(10_000) {
        let from = t0 + chunk as i64 * 1000;
        let to = (t0 + next_seq as i64 * 1000).min(from + 10_000_000);
        let (status, body) = http(
            http_port,
            "GET",
            &format!(
                "/api/v1/devices/{device_id}/metrics/memory.used_percent?from={from}&to={to}&step=1000"
            ),
            &[("Authorization", bearer.as_str())],
            "",
        );
        assert_eq!(status, 200, "{body}");
        let series: serde_json::Value = serde_json::from_str(&body).expect("json");
        for point in series["points"].as_array().expect("points") {
            stored.insert(point["ts"].as_i64().expect("ts"));
        }
    }
    let lost: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|seq| !stored.contains(&(t0 + *seq as i64 * 1000)))
        .collect();
    eprintln!(
        "{RUNS} kills: {next_seq} sent, {} acknowledged, {} stored, {} acknowledged and lost",
        acknowledged.len(),
        stored.len(),
        lost.len()
    );
    assert!(
        acknowledged.len() as u64 >= RUNS * WINDOW as u64,
        "the device got acknowledgements in every run ({} in all)",
        acknowledged.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged readings lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    drop(platform);
}
