//! `telemark serve --broker`: the platform behind a broker it does not run
//! (Debian's Mosquitto 2 here), reading devices through a shared
//! subscription and sending tasks through the same broker, with presence
//! taken from the devices' own `status` messages and wills.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;

/// `telemark serve` behind the broker on `broker_port`.
fn serve_behind(
    data: &std::path::Path,
    http: u16,
    broker_port: u16,
    env: &[(&str, &str)],
) -> KilledOnDrop {
    let child = telemark()
        .args(["serve", "--data", data.to_str().expect("path")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--broker", &format!("mqtt://127.0.0.1:{broker_port}")])
        .envs(env.iter().copied())
        .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    wait_for_port(http);
    KilledOnDrop(Some(child))
}

#[test]
fn behind_mosquitto_the_platform_ingests_runs_tasks_and_follows_presence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker_port, http) = (free_port(), free_port());
    let _mosquitto = start_mosquitto(dir.path(), broker_port, "persistence false\n");
    let _platform = serve_behind(&dir.path().join("data"), http, broker_port, &[]);
    let api = Api::login(http, "admin", "first-admin-secret");
    let (fleet, ids) = fleet_file(&api, dir.path(), 5, 0xA1);
    let mut sim = start_sim(&fleet, broker_port, &[]);
    assert!(
        eventually(30, || ids.iter().all(|d| online(&api, *d))),
        "every device is online by its own status message"
    );
    assert!(
        eventually(30, || ids.iter().all(|d| {
            let latest = api.get(&format!("/api/v1/devices/{d}/metrics"));
            latest.as_array().is_some_and(|m| !m.is_empty())
        })),
        "every device's readings arrive through the shared subscription"
    );

    // A job over the fleet goes out through the broker, once per device.
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "device_ids": ids}),
    );
    assert_eq!(status, 201, "{job}");
    let job = wait_job(&api, id(&job), 60);
    let executions = api.get(&format!("/api/v1/jobs/{}/executions?limit=100", id(&job)));
    let executions = executions.as_array().expect("list");
    assert_eq!(executions.len(), ids.len());
    for e in executions {
        // The simulator answers as devices do, some of them failing.
        assert!(
            ["succeeded", "failed"].contains(&e["state"].as_str().unwrap_or("")),
            "answered: {e}"
        );
        assert!(e["result"].is_object(), "a structured result: {e}");
        assert_eq!(e["attempt"], 1, "sent once: {e}");
    }

    // Gone without a goodbye: Mosquitto publishes the wills.
    if let Some(mut child) = sim.0.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    assert!(
        eventually(20, || ids.iter().all(|d| !online(&api, *d))),
        "the wills mark every device offline"
    );
}

/// A TCP link between the platform and its broker that the test can stall
/// and then cut, as a failing network or broker node does: while stalled,
/// the platform's bytes are read and thrown away, so the broker neither
/// sees nor acknowledges them.
struct BrokerLink {
    port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl BrokerLink {
    fn start(broker_port: u16) -> BrokerLink {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let link = BrokerLink {
            port,
            stalled: Default::default(),
            open: Default::default(),
        };
        let (stalled, open) = (link.stalled.clone(), link.open.clone());
        // Lives as long as the test binary; each connection's pumps end
        // when either side closes.
        std::thread::spawn(move || {
            for platform in listener.incoming() {
                let Ok(platform) = platform else { continue };
                let Ok(broker) = std::net::TcpStream::connect(("127.0.0.1", broker_port)) else {
                    continue;
                };
                let clone = |s: &std::net::TcpStream| s.try_clone().expect("clone");
                if let Ok(mut open) = open.lock() {
                    open.extend([clone(&platform), clone(&broker)]);
                }
                let (mut from, mut to, stalled) =
                    (clone(&platform), clone(&broker), stalled.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buffer) {
                        if !stalled.load(Ordering::Acquire) && to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
                let (mut from, mut to) = (broker, platform);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        link
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Closes every connection open now; new ones pass freely.
    fn cut(&self) {
        if let Ok(mut open) = self.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        self.stalled
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The platform's connection to its broker fails while a job's requests
/// are on their way, none acknowledged: they go out again on the next
/// connection and every device answers its one attempt in time.
#[test]
fn requests_on_a_failed_broker_connection_go_out_on_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker_port, http) = (free_port(), free_port());
    let _mosquitto = start_mosquitto(dir.path(), broker_port, "persistence false\n");
    let link = BrokerLink::start(broker_port);
    let _platform = serve_behind(&dir.path().join("data"), http, link.port, &[]);
    let api = Api::login(http, "admin", "first-admin-secret");
    let (fleet, ids) = fleet_file(&api, dir.path(), 5, 0xA3);
    let _sim = start_sim(&fleet, broker_port, &[]);
    assert!(
        eventually(30, || ids.iter().all(|d| online(&api, *d))),
        "every device is online"
    );

    link.stall();
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "device_ids": ids, "timeout_secs": 60}),
    );
    assert_eq!(status, 201, "{job}");
    let executions = || api.get(&format!("/api/v1/jobs/{}/executions?limit=100", id(&job)));
    assert!(
        eventually(10, || executions()
            .as_array()
            .is_some_and(|list| list.iter().all(|e| e["state"] == "sent"))),
        "the requests left the platform: {}",
        executions()
    );
    // Written into a connection that goes nowhere, then lost with it.
    std::thread::sleep(Duration::from_millis(500));
    link.cut();

    let job = wait_job(&api, id(&job), 50);
    let done = executions();
    for e in done.as_array().expect("list") {
        assert!(
            ["succeeded", "failed"].contains(&e["state"].as_str().unwrap_or("")),
            "answered: {e} ({job})"
        );
        assert_eq!(e["attempt"], 1, "no retry was needed: {e}");
    }
}

/// An instance comes back to a session the broker filled with readings
/// while it was away. Task answers travel on a session of their own: a job
/// started now is answered while the backlog is still being read, not
/// after it (behind it, answers would arrive past their deadlines).
#[test]
fn answers_do_not_wait_behind_a_backlog_of_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker_port, http) = (free_port(), free_port());
    let _mosquitto = start_mosquitto(
        dir.path(),
        broker_port,
        "persistence false\nmax_queued_messages 200000\n",
    );
    let data = dir.path().join("data");
    let mut platform = serve_behind(&data, http, broker_port, &[]);
    let api = Api::login(http, "admin", "first-admin-secret");
    let (fleet, ids) = fleet_file(&api, dir.path(), 3, 0xA4);
    let _sim = start_sim(&fleet, broker_port, &[]);
    let chatty = register_device(http, &api.bearer, "BACKLOG1", "00:11:22:33:a4:f0");
    assert!(
        eventually(30, || ids.iter().all(|d| online(&api, *d))),
        "every device is online"
    );

    // The instance is away while one device sends a long stream.
    if let Some(mut child) = platform.0.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    const BACKLOG: i64 = 50_000;
    let t0 = (now_ms() - 86_400_000) / 1000 * 1000;
    let last_ts = t0 + (BACKLOG - 1) * 1000;
    let (mut publisher, lines) = memory_stream(
        broker_port,
        "00-11-22-33-a4-f0",
        "backlog-publisher",
        t0,
        BACKLOG,
    );
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("the stream");
    }
    assert!(publisher.wait().expect("mosquitto_pub ends").success());

    // Back, and asked at once for a job over the other devices.
    platform = serve_behind(&data, http, broker_port, &[]);
    let api = Api::login(http, "admin", "first-admin-secret");
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "device_ids": ids}),
    );
    assert_eq!(status, 201, "{job}");
    let newest = || -> i64 {
        let latest = api.get(&format!("/api/v1/devices/{chatty}/metrics"));
        latest
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["ts"].as_i64())
            .max()
            .unwrap_or(0)
    };
    let (mut finished, mut read_when_finished) = (false, 0);
    let drained = eventually(120, || {
        if !finished && api.get(&format!("/api/v1/jobs/{}", id(&job)))["finished_at"].is_i64() {
            finished = true;
            read_when_finished = newest();
        }
        finished && newest() == last_ts
    });
    assert!(finished, "the job finished");
    assert!(drained, "the whole backlog was read in the end");
    let read = (read_when_finished - t0) / 1000 + 1;
    eprintln!("the job finished with {read} of {BACKLOG} backlog readings read");
    assert!(
        read_when_finished < last_ts,
        "the answers came only after the whole backlog"
    );
    let executions = api.get(&format!("/api/v1/jobs/{}/executions?limit=100", id(&job)));
    for e in executions.as_array().expect("list") {
        assert!(
            ["succeeded", "failed"].contains(&e["state"].as_str().unwrap_or("")),
            "answered, not timed out: {e}"
        );
    }
    drop(platform);
}

/// Two instances on one PostgreSQL behind one broker split the devices'
/// messages (shared subscriptions); one killed with `kill -9` mid-stream
/// and started again loses nothing the broker had handed it, and every
/// reading is stored once.
#[test]
fn two_instances_split_the_stream_and_a_killed_one_loses_nothing() {
    let Some(url) = fresh_postgres("external") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let broker_port = free_port();
    // Room for everything an instance's session is handed while it is away.
    let _mosquitto = start_mosquitto(
        dir.path(),
        broker_port,
        "persistence false\nmax_queued_messages 100000\n",
    );
    let (http1, http2) = (free_port(), free_port());
    let key = "cd".repeat(32);
    let env = |n: &'static str| {
        [
            ("TELEMARK_DATABASE", url.clone()),
            ("TELEMARK_SECRET_KEY", key.clone()),
            ("TELEMARK_INSTANCE_ID", n.to_owned()),
        ]
    };
    let start = |n: &'static str, http: u16| {
        let env = env(n);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        serve_behind(&dir.path().join(n), http, broker_port, &env)
    };
    let mut one = start("one", http1);
    let _two = start("two", http2);
    let api = Api::login(http2, "admin", "first-admin-secret");
    let device = register_device(http2, &api.bearer, "SPLIT1", "00:11:22:33:a2:01");
    let mac = "00-11-22-33-a2-01";
    // Both ingests subscribed before the first message.
    std::thread::sleep(Duration::from_secs(2));

    // 4,000 messages at QoS 1, one second apart in device time, a day back.
    const MESSAGES: i64 = 4_000;
    let t0 = (now_ms() - 86_400_000) / 1000 * 1000;
    let (mut publisher, lines) = memory_stream(broker_port, mac, "split-publisher", t0, MESSAGES);
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().expect("stdin");
        let (first, rest) = lines.split_at(lines.len() / 4);
        stdin.write_all(first.as_bytes()).expect("first quarter");
        stdin.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        // One instance dies with part of its share taken and not yet written.
        if let Some(mut child) = one.0.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }
        stdin.write_all(rest.as_bytes()).expect("the rest");
    }
    let published = publisher.wait().expect("mosquitto_pub ends");
    assert!(published.success());
    // The killed instance comes back to its session and what was kept for it.
    one = start("one", http1);

    let query = format!(
        "SELECT count(*) FROM readings r JOIN metrics m ON m.id = r.metric_id \
         WHERE r.device_id = {device} AND m.name = 'memory.used_percent'"
    );
    let count = || -> i64 {
        let out = std::process::Command::new("psql")
            .args([&url, "-tAc", &query])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(-1)
    };
    let mut stored = 0;
    let all = eventually(60, || {
        stored = count();
        stored == MESSAGES
    });
    assert!(all, "{stored} of {MESSAGES} readings stored");
    let ingest_count = |http: u16| -> i64 {
        let (_, text) = http_get_metrics(http);
        text.lines()
            .find_map(|l| l.strip_prefix("telemark_ingest_messages_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let (a, b) = (ingest_count(http1), ingest_count(http2));
    assert!(
        http_get_metrics(http2)
            .1
            .contains("telemark_task_transport_dropped_total 0"),
        "the external broker's task connection reports what it could not queue"
    );
    eprintln!("after the kill: instance one read {a}, instance two read {b}");
    assert!(b > 0, "the surviving instance read its share");
    drop(one);
}

/// `count` QoS 1 `hardware/memory` readings of device `mac`, one second
/// apart in device time from `t0`, as lines for `mosquitto_pub -l`, and
/// that publisher, started and waiting for them on its stdin.
fn memory_stream(
    broker_port: u16,
    mac: &str,
    client_id: &str,
    t0: i64,
    count: i64,
) -> (std::process::Child, String) {
    let lines: String = (0..count)
        .map(|n| {
            format!(
                "{{\"v\":1,\"ts\":{},\"total_kb\":1000,\"available_kb\":250,\"used_percent\":{}.0}}\n",
                t0 + n * 1000,
                n % 100
            )
        })
        .collect();
    let publisher = std::process::Command::new("mosquitto_pub")
        .args(["-p", &broker_port.to_string(), "-h", "127.0.0.1"])
        .args(["-q", "1", "-l", "-i", client_id])
        .args(["-t", &format!("dwr/311-a1/{mac}/hardware/memory")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    (publisher, lines)
}

/// `/metrics` of an instance as the admin reads it.
fn http_get_metrics(http: u16) -> (u16, String) {
    let bearer = api_login(http, "admin", "first-admin-secret");
    common::http(
        http,
        "GET",
        "/metrics",
        &[("Authorization", bearer.as_str())],
        "",
    )
}
