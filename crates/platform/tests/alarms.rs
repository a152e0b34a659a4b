//! The alarm engine, the ingest and the presence writer on a real SQLite
//! store. The alarm engine is fed through the real ingest: an
//! LTE fade raises an alarm after the rule's duration and clears when the
//! signal is back; offline and firmware rules; webhook calls, signed, reach
//! a local HTTP receiver and are audited.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{OneDevice, one_device};
use device_protocol::{Firmware, Lte, Reading, VERSION};
use platform::alarms::{AlarmEngine, run_webhooks, signature};
use platform::telemetry::Ingest;
use platform::webhook_target::WebhookPolicy;
use store::{NewAlarmRule, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local webhook receiver: keeps (signature header, body) of each POST.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    receiver_on("127.0.0.1").await
}

async fn receiver_on(address: &str) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind((address, 0))
        .await
        .expect("bind");
    let url = format!(
        "http://{}/hooks/alarms",
        listener.local_addr().expect("addr")
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers, then the body by its length.
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        let signature = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("x-telemark-signature:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .unwrap_or_default();
                        let body = text[end + 4..end + 4 + length].to_owned();
                        seen.lock().expect("lock").push((signature, body));
                        break;
                    }
                }
            }
            let _ = socket
                .write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    (url, got)
}

fn lte(ts: i64, rsrp: f64) -> Vec<u8> {
    Reading::Lte(Lte {
        v: VERSION,
        ts,
        technology: "lte".into(),
        rsrp_dbm: Some(rsrp),
        rsrq_db: Some(-12.0),
        sinr_db: Some(3.0),
        rssi_dbm: None,
        band: Some("B20".into()),
        carrier_aggregation: Vec::new(),
        operator: None,
        cell_id: None,
        smcc: None,
        smnc: None,
    })
    .to_json()
}

async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_signal_fade_raises_and_clears_an_alarm_and_tells_the_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let OneDevice {
        operator,
        root,
        model,
        device,
    } = one_device(&store).await;
    let rule = |name: &str, kind: &str| NewAlarmRule {
        organisation_id: operator.id,
        model_id: Some(model.id),
        name: name.into(),
        kind: kind.into(),
        metric: None,
        comparison: None,
        threshold: None,
        duration_secs: 0,
        expected_firmware: None,
        severity: "major".into(),
    };
    store
        .create_alarm_rule(
            &root,
            &NewAlarmRule {
                metric: Some("lte.rsrp_dbm".into()),
                comparison: Some("<".into()),
                threshold: Some(-110.0),
                duration_secs: 30,
                ..rule("Weak LTE signal", "threshold")
            },
        )
        .await
        .expect("rule");
    let (url, calls) = receiver().await;
    store
        .create_webhook(&root, operator.id, &url, "hook-secret")
        .await
        .expect("webhook");
    // Hooks to an inside address the operator did not allow, stored
    // before the rule existed (the API refuses them now): never called.
    let (inside_url, inside_calls) = receiver_on("127.0.0.2").await;
    let port = inside_url
        .split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .expect("port");
    for sneaky in [
        inside_url.clone(),
        format!("http://[::ffff:127.0.0.2]:{port}/x"),
        format!("http://localhost:{port}/x"),
    ] {
        store
            .create_webhook(&root, operator.id, &sneaky, "hook-secret")
            .await
            .expect("webhook");
    }
    let (engine, events) = AlarmEngine::new(store.clone()).await.expect("engine");
    // The operator's allowlist lets the test's receiver on 127.0.0.1 in.
    tokio::spawn(run_webhooks(
        store.clone(),
        Arc::new(tokio::sync::Mutex::new(events)),
        WebhookPolicy::new(["127.0.0.1".to_owned()]),
    ));
    let ingest = Ingest::with_alarms(store.clone(), engine.clone());
    let topic = "dwr/311-a1/00-11-22-33-44-55/hardware/lte";
    let open = || async {
        store
            .alarms(
                &root,
                &store::AlarmQuery {
                    state: Some("open".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("alarms")
    };

    // The fade starts; 20 s of it is not yet an alarm, 31 s is.
    let t0 = store::now_millis() - 3_600_000;
    ingest.handle(topic, &lte(t0, -95.0)).await;
    ingest.handle(topic, &lte(t0 + 10_000, -114.0)).await;
    ingest.handle(topic, &lte(t0 + 30_000, -116.0)).await;
    assert!(
        open().await.is_empty(),
        "20 s below the threshold is not 30"
    );
    ingest.handle(topic, &lte(t0 + 41_000, -117.5)).await;
    let alarms = open().await;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].state, "active");
    assert_eq!(alarms[0].device_id, device);
    assert!(
        alarms[0].message.contains("lte.rsrp_dbm -117.5 < -110"),
        "{}",
        alarms[0].message
    );
    // Still fading: no second alarm.
    ingest.handle(topic, &lte(t0 + 51_000, -119.0)).await;
    assert_eq!(open().await.len(), 1);
    assert!(
        eventually(|| calls.lock().expect("lock").len() == 1).await,
        "raised reaches the webhook"
    );
    {
        let calls = calls.lock().expect("lock");
        let (sig, body) = &calls[0];
        assert!(body.contains("\"event\":\"alarm.raised\""), "{body}");
        assert_eq!(
            sig,
            &signature("hook-secret", body.as_bytes()),
            "signed with the webhook's secret"
        );
    }
    // Acknowledged by an engineer, then the signal recovers: cleared.
    let acked = store
        .acknowledge_alarm(&root, alarms[0].id, "noc-engineer")
        .await
        .expect("ack");
    assert_eq!(acked.state, "acknowledged");
    assert!(
        store
            .acknowledge_alarm(&root, alarms[0].id, "again")
            .await
            .is_err()
    );
    ingest.handle(topic, &lte(t0 + 61_000, -92.0)).await;
    assert!(open().await.is_empty());
    let history = store
        .alarms(
            &root,
            &store::AlarmQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(history[0].state, "cleared");
    assert_eq!(history[0].acknowledged_by.as_deref(), Some("noc-engineer"));
    assert!(
        eventually(|| calls
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, b)| b.contains("alarm.cleared")))
        .await
    );
    let mut audited = 0;
    for _ in 0..100 {
        audited = store
            .audit_log(
                &root,
                &store::AuditQuery {
                    search: Some("webhook.delivered".into()),
                    before_id: None,
                    limit: 10,
                },
            )
            .await
            .expect("audit")
            .len();
        if audited >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audited >= 2, "deliveries are audited");
    assert!(
        inside_calls.lock().expect("lock").is_empty(),
        "an inside address was called"
    );
    let refused = store
        .audit_log(
            &root,
            &store::AuditQuery {
                search: Some("webhook.failed".into()),
                before_id: None,
                limit: 20,
            },
        )
        .await
        .expect("audit");
    assert!(
        refused.len() >= 3
            && refused.iter().all(
                |e| e.after_value.as_deref().unwrap_or("").contains("refused")
                    || e.after_value
                        .as_deref()
                        .unwrap_or("")
                        .contains("not a public")
            ),
        "{:?}",
        refused.iter().map(|e| &e.after_value).collect::<Vec<_>>()
    );

    // Offline and firmware rules, by the periodic pass.
    store
        .create_alarm_rule(
            &root,
            &NewAlarmRule {
                duration_secs: 60,
                ..rule("Offline", "offline")
            },
        )
        .await
        .expect("offline rule");
    store
        .create_alarm_rule(
            &root,
            &NewAlarmRule {
                expected_firmware: Some("2.1.4".into()),
                ..rule("Old firmware", "firmware")
            },
        )
        .await
        .expect("firmware rule");
    engine.refresh_rules().await.expect("refresh");
    store
        .set_device_online(device, true, "serve-1")
        .await
        .expect("online");
    store
        .set_device_online(device, false, "serve-1")
        .await
        .expect("offline");
    ingest
        .handle(
            "dwr/311-a1/00-11-22-33-44-55/system/firmware",
            &Reading::Firmware(Firmware {
                v: VERSION,
                ts: t0,
                version: "2.0.9".into(),
            })
            .to_json(),
        )
        .await;
    ingest.flush().await.expect("flush");
    let now = store::now_millis();
    engine
        .evaluate_presence_and_firmware(now)
        .await
        .expect("pass");
    let names: Vec<String> = open().await.into_iter().map(|a| a.message).collect();
    assert_eq!(
        names.len(),
        1,
        "offline for less than 60 s is no alarm yet: {names:?}"
    );
    assert!(
        names[0].contains("firmware 2.0.9 is not 2.1.4"),
        "{names:?}"
    );
    engine
        .evaluate_presence_and_firmware(now + 61_000)
        .await
        .expect("pass");
    assert_eq!(open().await.len(), 2, "and after 61 s it is");
    store
        .set_device_online(device, true, "serve-1")
        .await
        .expect("back");
    engine
        .evaluate_presence_and_firmware(now + 62_000)
        .await
        .expect("pass");
    assert_eq!(
        open().await.len(),
        1,
        "back online clears the offline alarm"
    );
}

#[tokio::test]
async fn retention_rolls_up_full_hours_and_prunes_by_age() {
    use platform::telemetry::{Retention, retention_pass};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let device = one_device(&store).await.device;
    let hour = 3_600_000i64;
    let now = 20_000 * hour + 1_234;
    // Ten days of hourly readings, up to now.
    let readings: Vec<store::NewReading> = (0..240)
        .map(|n| store::NewReading {
            device_id: device,
            metric: "cpu.usage_percent".into(),
            ts: now - (240 - n) * hour,
            value: n as f64,
        })
        .collect();
    store.insert_readings(&readings).await.expect("insert");
    let retention = Retention {
        raw_days: 7,
        hourly_days: 9,
    };
    let hours = retention_pass(&store, retention, now).await.expect("pass");
    // From the oldest reading's hour to an hour before now.
    assert_eq!(hours, 239);
    assert_eq!(
        store.rolled_up_until().await.expect("mark"),
        Some((now / hour - 1) * hour)
    );
    // Raw: the last 7 days are left.
    assert_eq!(store.count_readings().await.expect("count"), 7 * 24);
    // A second pass has nothing to roll up.
    assert_eq!(
        retention_pass(&store, retention, now).await.expect("pass"),
        0
    );
}

/// A `hardware/cpu` message as the contract writes it.
fn cpu_payload(ts: i64, usage_percent: f64) -> Vec<u8> {
    Reading::Cpu(device_protocol::Cpu {
        v: VERSION,
        ts,
        usage_percent,
        cores: 2,
    })
    .to_json()
}

#[tokio::test]
async fn readings_wait_out_a_database_that_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let d = one_device(&store).await;
    let ingest = Ingest::new(store.clone());
    let t0 = store::now_millis();
    let cpu = |n: i64| cpu_payload(t0 + n, n as f64);
    for n in 0..10 {
        ingest
            .handle("dwr/311-a1/00-11-22-33-44-55/hardware/cpu", &cpu(n))
            .await;
    }
    ingest
        .handle("dwr/311-a1/00-11-22-33-44-55/hardware/cpu", b"{not json")
        .await;

    // Another connection takes the table away: the write fails.
    let path = dir.path().join("telemark.db");
    let other = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("second connection");
    sqlx::query("ALTER TABLE readings RENAME TO readings_away")
        .execute(&other)
        .await
        .expect("rename");
    assert!(ingest.flush().await.is_err(), "the write fails");
    let counters = &ingest.counters;
    assert_eq!(counters.write_failures.load(Ordering::Relaxed), 1);
    assert_eq!(counters.readings_stored.load(Ordering::Relaxed), 0);

    // More arrive meanwhile; once the table is back, all of them are stored
    // once, and the fault counted while the database refused is recorded.
    for n in 10..15 {
        ingest
            .handle("dwr/311-a1/00-11-22-33-44-55/hardware/cpu", &cpu(n))
            .await;
    }
    sqlx::query("ALTER TABLE readings_away RENAME TO readings")
        .execute(&other)
        .await
        .expect("rename back");
    other.close().await;
    ingest.flush().await.expect("flush after the outage");
    assert_eq!(counters.readings_stored.load(Ordering::Relaxed), 15);
    assert_eq!(counters.readings_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(store.count_readings().await.expect("count"), 15);
    let series = store
        .series(&d.root, d.device, "cpu.usage_percent", t0, t0 + 1000, 1000)
        .await
        .expect("series");
    assert_eq!(series.iter().map(|p| p.count).sum::<i64>(), 15);
    let fault = store
        .telemetry_fault(&d.root, d.device)
        .await
        .expect("fault")
        .expect("recorded");
    assert_eq!(fault.count, 1);
}

/// An acknowledgement that records whether it was released or given up.
struct Outcome {
    message: i64,
    written: bool,
    outcomes: Arc<Mutex<Vec<(i64, bool)>>>,
}

impl platform::telemetry::Acknowledgement for Outcome {
    fn written(mut self: Box<Self>) {
        self.written = true;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Ok(mut outcomes) = self.outcomes.lock() {
            outcomes.push((self.message, self.written));
        }
    }
}

#[tokio::test]
async fn a_backlog_past_its_bound_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let d = one_device(&store).await;
    let ingest = Ingest::new(store.clone());
    ingest.set_max_backlog(4);
    let t0 = store::now_millis();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    for n in 0..10i64 {
        ingest
            .handle(
                "dwr/311-a1/00-11-22-33-44-55/hardware/cpu",
                &cpu_payload(t0 + n, n as f64),
            )
            .await;
        ingest.acknowledge_when_written(Box::new(Outcome {
            message: n,
            written: false,
            outcomes: outcomes.clone(),
        }));
    }
    ingest.flush().await.expect("flush");
    let counters = &ingest.counters;
    assert_eq!(counters.readings_dropped.load(Ordering::Relaxed), 6);
    assert_eq!(counters.readings_stored.load(Ordering::Relaxed), 4);
    // The devices whose readings were given up are not told they arrived.
    let mut outcomes = outcomes.lock().expect("outcomes").clone();
    outcomes.sort_unstable();
    let expected: Vec<(i64, bool)> = (0..10).map(|n| (n, n >= 6)).collect();
    assert_eq!(outcomes, expected);
    assert_eq!(counters.acknowledgements_lost.load(Ordering::Relaxed), 6);
    assert_eq!(
        counters.acknowledgements_released.load(Ordering::Relaxed),
        4
    );
    let series = store
        .series(&d.root, d.device, "cpu.usage_percent", t0, t0 + 10, 1)
        .await
        .expect("series");
    let kept: Vec<f64> = series.iter().map(|p| p.mean).collect();
    assert_eq!(kept, [6.0, 7.0, 8.0, 9.0], "the newest are kept");
}

#[tokio::test]
async fn what_a_device_sends_cannot_grow_the_black_box_without_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let d = one_device(&store).await;
    let ingest = Ingest::new(store.clone());
    let base = "dwr/311-a1/00-11-22-33-44-55/";
    let now = store::now_millis();
    let fault_count = || async {
        store
            .telemetry_fault(&d.root, d.device)
            .await
            .expect("fault")
            .map(|f| (f.count, f.last_error))
            .unwrap_or_default()
    };
    // A reading dated 1970, one from next week, and a log line from 1970
    // in a batch dated now: faults, not rows that send retention and
    // roll-up over decades.
    ingest
        .handle(&format!("{base}hardware/cpu"), &cpu_payload(1, 50.0))
        .await;
    ingest
        .handle(
            &format!("{base}hardware/cpu"),
            &cpu_payload(now + 7 * 86_400_000, 50.0),
        )
        .await;
    let old_line =
        format!(r#"{{"v":1,"ts":{now},"lines":[{{"ts":1000,"text":"kernel: hello"}}]}}"#);
    ingest
        .handle(&format!("{base}log/syslog"), old_line.as_bytes())
        .await;
    // A NUL in a log line (PostgreSQL would refuse the whole batch).
    let nul = format!(r#"{{"v":1,"ts":{now},"lines":[{{"ts":{now},"text":"a\u0000b"}}]}}"#);
    ingest
        .handle(&format!("{base}log/syslog"), nul.as_bytes())
        .await;
    ingest.flush().await.expect("flush");
    let (count, last) = fault_count().await;
    assert_eq!(count, 4, "{last}");
    assert!(last.contains("NUL"), "{last}");
    assert_eq!(store.count_readings().await.expect("count"), 0);

    // Interface names invent metric series: a device may have 256 at most.
    let mut sent = 0;
    for batch in 0..20 {
        let interfaces: Vec<String> = (0..16)
            .map(|i| format!(r#"{{"interface":"if{batch}x{i}","rx_bytes":0,"tx_bytes":0,"rx_bps":1.0,"tx_bps":2.0}}"#))
            .collect();
        let traffic = format!(
            r#"{{"v":1,"ts":{},"interfaces":[{}]}}"#,
            now + batch,
            interfaces.join(",")
        );
        ingest
            .handle(&format!("{base}network/traffic"), traffic.as_bytes())
            .await;
        sent += 32;
    }
    ingest.flush().await.expect("flush");
    let stored = store.count_readings().await.expect("count") as usize;
    assert_eq!(stored, platform::telemetry::MAX_METRICS_PER_DEVICE);
    assert!(sent > stored);
    let (_, last) = fault_count().await;
    assert!(last.contains("metric series"), "{last}");
    // Known series go on after the limit.
    ingest
        .handle(&format!("{base}network/traffic"), format!(
            r#"{{"v":1,"ts":{},"interfaces":[{{"interface":"if0x0","rx_bytes":0,"tx_bytes":0,"rx_bps":1.0,"tx_bps":2.0}}]}}"#,
            now + 100
        ).as_bytes())
        .await;
    ingest.flush().await.expect("flush");
    assert_eq!(
        store.count_readings().await.expect("count") as usize,
        stored + 2
    );
}

#[tokio::test]
async fn presence_waits_out_a_database_that_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let d = one_device(&store).await;
    let presence = platform::presence::PresenceRecorder::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let path = dir.path().join("telemark.db");
    let other = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("second connection");
    sqlx::query("ALTER TABLE device_presence RENAME TO device_presence_away")
        .execute(&other)
        .await
        .expect("rename");
    let writer = tokio::spawn(
        presence
            .clone()
            .run(store.clone(), "serve-1".into(), stopped),
    );
    // A reconnect storm while the database refuses: one entry, no loss.
    for _ in 0..1_000 {
        presence.connected(d.device);
        presence.disconnected(d.device);
    }
    presence.connected(d.device);
    assert!(
        eventually(|| presence.counters.write_failures.load(Ordering::Relaxed) > 0).await,
        "the write failed"
    );
    sqlx::query("ALTER TABLE device_presence_away RENAME TO device_presence")
        .execute(&other)
        .await
        .expect("rename back");
    other.close().await;
    let mut online = false;
    for _ in 0..100 {
        online = store
            .device(&d.root, d.device)
            .await
            .expect("device")
            .online;
        if online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(online, "the connect was retried and written");
    presence.disconnected(d.device);
    let _ = stop.send(true);
    writer.await.expect("writer");
    assert!(
        !store
            .device(&d.root, d.device)
            .await
            .expect("device")
            .online
    );
}
