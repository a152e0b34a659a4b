//! Telemark behind a real 3-node rmqtt cluster (`tests/rmqtt-cluster`; its
//! `run` builds the node and runs this test) with two `telemark serve --broker` on one PostgreSQL:
//! the devices spread over the nodes, log in and are confined by the
//! platform's rmqtt auth hook over HTTP, their readings are stored once,
//! a bulk task runs once per device, an instance killed with `kill -9`
//! loses nothing the cluster handed it, and a node killed sends its devices
//! to the others.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// The simulated fleet; one more device of the same model streams by itself.
const DEVICES: usize = 1000;
const HOOK_SECRET: &str = "cluster-hook-secret";
/// Seconds between a simulated device's readings: 1,000 devices every 15 s
/// beside two debug-built instances, three nodes and PostgreSQL leave the
/// 2 cores room to answer keep-alives.
const SIM_INTERVAL: u32 = 15;

fn node_binary() -> Option<PathBuf> {
    std::env::var_os("TELEMARK_RMQTT_NODE")
        .map(PathBuf::from)
        .or_else(|| {
            let built = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/rmqtt-cluster/target/release/rmqtt-cluster-node");
            built.exists().then_some(built)
        })
}

/// Three rmqtt nodes on loopback, clustered by broadcast, asking the
/// platform on `hook_http` who may connect, publish and subscribe.
struct Cluster {
    nodes: Vec<KilledOnDrop>,
    mqtt: Vec<u16>,
}

impl Cluster {
    fn start(binary: &Path, dir: &Path, hook_http: u16) -> Cluster {
        let mqtt: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let grpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = grpc
            .iter()
            .enumerate()
            .map(|(i, port)| format!("\"{}@127.0.0.1:{port}\"", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let hook = format!("http://127.0.0.1:{hook_http}/api/v1/mqtt/rmqtt");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let plugins = dir.join(format!("node{}", i + 1));
            std::fs::create_dir_all(&plugins).expect("plugin dir");
            let write = |name: &str, text: String| {
                std::fs::write(plugins.join(name), text).expect("plugin config");
            };
            write(
                "rmqtt-cluster-broadcast.toml",
                format!("node_grpc_addrs = [{peers}]\n"),
            );
            // As docs/deployment.md tells an operator to configure it.
            write(
                "rmqtt-auth-http.toml",
                format!(
                    "http_timeout = \"5s\"\nhttp_headers.Authorization = \"Bearer {HOOK_SECRET}\"\n\
                     deny_if_error = true\ndisconnect_if_pub_rejected = true\n\
                     http_auth_req.url = \"{hook}/auth\"\nhttp_auth_req.method = \"post\"\n\
                     http_auth_req.headers = {{ content-type = \"application/x-www-form-urlencoded\" }}\n\
                     http_auth_req.params = {{ clientid = \"%c\", username = \"%u\", password = \"%P\", ipaddr = \"%a\" }}\n\
                     http_acl_req.url = \"{hook}/acl\"\nhttp_acl_req.method = \"post\"\n\
                     http_acl_req.params = {{ access = \"%A\", username = \"%u\", clientid = \"%c\", ipaddr = \"%a\", topic = \"%t\" }}\n"
                ),
            );
            // One device's messages to one instance (docs/deployment.md).
            write(
                "rmqtt-shared-subscription.toml",
                "strategy = \"hash_clientid\"\n".into(),
            );
            // Client connected/disconnected events on $SYS, for presence.
            write("rmqtt-sys-topic.toml", "publish_qos = 1\n".into());
            write(
                "rmqtt-retainer.toml",
                "storage.type = \"ram\"\nmax_retained_messages = 0\nmax_payload_size = \"1MB\"\nretained_message_ttl = \"0m\"\n".into(),
            );
            let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1))).expect("log");
            let child = Command::new(binary)
                .args([
                    (i + 1).to_string(),
                    format!("127.0.0.1:{}", mqtt[i]),
                    format!("127.0.0.1:{}", grpc[i]),
                    plugins.display().to_string(),
                ])
                .env("RMQTT_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("rmqtt node starts");
            nodes.push(KilledOnDrop(Some(child)));
        }
        for port in &mqtt {
            wait_for_port(*port);
        }
        Cluster { nodes, mqtt }
    }

    /// `mqtt://…` of every node, starting at `first`.
    fn urls(&self, first: usize) -> String {
        (0..self.mqtt.len())
            .map(|i| {
                format!(
                    "mqtt://127.0.0.1:{}",
                    self.mqtt[(first + i) % self.mqtt.len()]
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn kill(running: &mut KilledOnDrop) {
    if let Some(mut child) = running.0.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
}

/// One number from PostgreSQL.
fn sql(url: &str, query: &str) -> i64 {
    let out = Command::new("psql")
        .args([url, "-tAc", query])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1)
}

fn ingested(http: u16) -> i64 {
    let bearer = api_login(http, "admin", "first-admin-secret");
    let (_, text) = common::http(
        http,
        "GET",
        "/metrics",
        &[("Authorization", bearer.as_str())],
        "",
    );
    text.lines()
        .find_map(|l| l.strip_prefix("telemark_ingest_messages_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `job` over `devices`; every execution answered, each sent once.
fn run_job_once_per_device(api: &Api, devices: &[i64], logs: &Path) {
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "device_ids": devices}),
    );
    assert_eq!(status, 201, "{job}");
    let job = wait_job(api, id(&job), 180);
    // Each execution as the API shows it, for a failed run's logs.
    let _ = std::fs::write(
        logs.join(format!("job-{}.json", id(&job))),
        api.get(&format!("/api/v1/jobs/{}/executions?limit=1000", id(&job)))
            .to_string(),
    );
    assert_eq!(
        job["counts"]["succeeded"].as_i64().unwrap_or(0)
            + job["counts"]["failed"].as_i64().unwrap_or(0),
        devices.len() as i64,
        "every device answered: {job}"
    );
    let executions = api.get(&format!("/api/v1/jobs/{}/executions?limit=1000", id(&job)));
    let executions = executions.as_array().expect("executions");
    assert_eq!(executions.len(), devices.len());
    for e in executions {
        assert_eq!(e["attempt"], 1, "sent once: {e}");
    }
}

/// scripts/test builds the node first (`tests/rmqtt-cluster/run --build`);
/// without it this test says so and checks nothing. Set
/// `TELEMARK_KEEP_TEST_DIR` to keep the nodes', instances' and simulator's
/// logs and each job's executions.
#[test]
fn a_three_node_rmqtt_cluster_with_two_instances_loses_nothing_and_runs_each_task_once() {
    let Some(binary) = node_binary() else {
        eprintln!("tests/rmqtt-cluster is not built: tests/rmqtt-cluster/run builds it");
        return;
    };
    let Some(url) = fresh_postgres("cluster") else {
        return;
    };
    let mut dir = tempfile::tempdir().expect("tempdir");
    // The nodes', instances' and simulator's logs, for a failed run.
    if std::env::var_os("TELEMARK_KEEP_TEST_DIR").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs in {}", dir.path().display());
    }
    let (http1, http2) = (free_port(), free_port());
    // The nodes ask instance two; instance one is the one that dies.
    let mut cluster = Cluster::start(&binary, dir.path(), http2);
    let instance = |n: usize, http: u16| {
        let log = std::fs::File::create(dir.path().join(format!("serve{n}.log"))).expect("log");
        let child = telemark()
            .args(["serve", "--data"])
            .arg(dir.path().join(format!("data{n}")))
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--broker", &cluster.urls(n)])
            .env("TELEMARK_DATABASE", &url)
            .env("TELEMARK_SECRET_KEY", "ef".repeat(32))
            .env("TELEMARK_INSTANCE_ID", format!("instance-{n}"))
            .env("TELEMARK_BROKER_HOOK_SECRET", HOOK_SECRET)
            .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
            .env(
                "RUST_LOG",
                "warn,platform::broker_client=info,platform::telemetry=info",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        wait_for_port(http);
        KilledOnDrop(Some(child))
    };
    let _two = instance(2, http2);
    let mut one = instance(1, http1);
    let api = Api::login(http1, "admin", "first-admin-secret");

    // The fleet: one import, a secret each; the last device is not
    // simulated but streams with mosquitto_pub below (one client per id).
    let macs: Vec<String> = (0..=DEVICES)
        .map(|n| format!("00-11-22-c1-{:02x}-{:02x}", n / 256, n % 256))
        .collect();
    let (status, model) = api.call(
        "POST",
        "/api/v1/device-models",
        &json!({"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"}),
    );
    assert!(status == 201 || status == 409, "{model}");
    let csv: String = std::iter::once("serial,mac,model\n".to_owned())
        .chain(
            macs.iter()
                .enumerate()
                .map(|(n, mac)| format!("C{n},{mac},311-a1\n")),
        )
        .collect();
    let (status, _) = common::http(
        http1,
        "POST",
        "/api/v1/devices/import",
        &[
            ("Authorization", api.bearer.as_str()),
            ("Content-Type", "text/csv"),
        ],
        &csv,
    );
    assert_eq!(status, 200);
    let mut fleet = String::from("device_id,model,secret\n");
    let mut ids = Vec::new();
    for mac in &macs {
        let device = sql(&url, &format!("SELECT id FROM devices WHERE mac = '{mac}'"));
        ids.push(device);
    }
    let streamer = ids.pop().expect("one more device");
    let secrets: Vec<String> = ids.iter().map(|d| secret_for(&api, *d)).collect();
    for (mac, secret) in macs.iter().zip(&secrets) {
        fleet.push_str(&format!("{mac},311-a1,{secret}\n"));
    }
    let fleet_path = dir.path().join("fleet.csv");
    std::fs::write(&fleet_path, fleet).expect("fleet");
    let started = now_ms();
    let first_fleet = start_sim_on(
        &fleet_path,
        &cluster.urls(0),
        SIM_INTERVAL,
        &dir.path().join("sim1.log"),
    );

    // Logged in through the hook, online by their own status messages,
    // their readings stored, spread over the three nodes.
    assert!(
        eventually(120, || sql(
            &url,
            "SELECT count(*) FROM devices WHERE online"
        ) == DEVICES as i64),
        "{} of {DEVICES} devices online",
        sql(&url, "SELECT count(*) FROM devices WHERE online")
    );
    let with_readings = |since: i64| {
        sql(
            &url,
            &format!("SELECT count(DISTINCT device_id) FROM readings WHERE ts > {since}"),
        )
    };
    assert!(
        eventually(120, || with_readings(started) == DEVICES as i64),
        "{} of {DEVICES} devices have readings",
        with_readings(started)
    );
    assert!(
        ingested(http1) > 0 && ingested(http2) > 0,
        "both instances read their share"
    );

    // A bulk task, claimed by either instance, sent once per device.
    run_job_once_per_device(&api, &ids, dir.path());

    // hash_clientid: one device's messages all go to one instance.
    let (mac, secret) = (macs[DEVICES].clone(), secret_for(&api, streamer));
    let publish = |count: i64, first_ts: i64, node: usize| {
        let lines: String = (0..count)
            .map(|n| {
                format!(
                    "{{\"v\":1,\"ts\":{},\"total_kb\":1000,\"available_kb\":250,\"used_percent\":{}.0}}\n",
                    first_ts + n * 1000,
                    n % 100
                )
            })
            .collect();
        let mut publisher = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.mqtt[node].to_string(),
                "-q",
                "1",
                "-l",
            ])
            .args(["-t", &format!("dwr/311-a1/{mac}/hardware/memory")])
            .args(["-i", &mac, "-u", &mac, "-P", &secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_pub");
        (publisher.stdin.take().expect("stdin"), publisher, lines)
    };
    let memory_readings = |from: i64, to: i64| {
        sql(
            &url,
            &format!(
                "SELECT count(*) FROM readings r JOIN metrics m ON m.id = r.metric_id \
                 WHERE r.device_id = {} AND m.name = 'memory.used_percent' AND r.ts >= {from} AND r.ts < {to}",
                streamer
            ),
        )
    };

    // Kill -9 instance one while a device streams 3,000 QoS 1 readings
    // (the simulated fleet goes on too): the other instance keeps ingesting
    // and dispatching; back, instance one gets what the cluster kept for it.
    const STREAM: i64 = 3_000;
    let t0 = (now_ms() - 2 * 86_400_000) / 1000 * 1000;
    let (mut stdin, mut publisher, lines) = publish(STREAM, t0, 2);
    {
        use std::io::Write;
        let (first, rest) = lines.split_at(lines.len() / 4);
        stdin.write_all(first.as_bytes()).expect("first quarter");
        stdin.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        kill(&mut one);
        let killed = now_ms();
        stdin.write_all(rest.as_bytes()).expect("the rest");
        drop(stdin);
        assert!(publisher.wait().expect("mosquitto_pub").success());
        let api2 = Api::login(http2, "admin", "first-admin-secret");
        assert!(
            eventually(30, || with_readings(killed + 6_000) > 0),
            "instance two goes on storing readings"
        );
        run_job_once_per_device(&api2, &ids[..20], dir.path());
    }
    one = instance(1, http1);
    assert!(
        eventually(60, || memory_readings(t0, t0 + STREAM * 1000) == STREAM),
        "{} of {STREAM} acknowledged readings stored",
        memory_readings(t0, t0 + STREAM * 1000)
    );

    // One device's messages to one instance: 101 more, counted by each.
    let before = (ingested(http1), ingested(http2));
    drop(first_fleet);
    // The fleet's wills and instance one's backlog drain first: counting
    // starts once neither instance has read anything for two seconds.
    let mut settled = before;
    let mut quiet = 0;
    for _ in 0..90 {
        std::thread::sleep(Duration::from_secs(1));
        let now = (ingested(http1), ingested(http2));
        quiet = if now == settled { quiet + 1 } else { 0 };
        settled = now;
        if quiet == 2 {
            break;
        }
    }
    let t1 = t0 + 10 * STREAM * 1000;
    let (mut stdin, mut publisher, lines) = publish(101, t1, 0);
    {
        use std::io::Write;
        stdin.write_all(lines.as_bytes()).expect("stream");
    }
    drop(stdin);
    assert!(publisher.wait().expect("mosquitto_pub").success());
    assert!(eventually(30, || memory_readings(t1, t1 + 101_000) == 101));
    let deltas = (ingested(http1) - settled.0, ingested(http2) - settled.1);
    assert!(
        deltas == (101, 0) || deltas == (0, 101),
        "hash_clientid keeps one device on one instance: {deltas:?} (before the fleet stopped: {before:?})"
    );

    // A device that never reports a status of its own is online while it
    // is connected and offline after a clean goodbye (no will): the
    // cluster's $SYS client events say so. Another device cannot fake
    // them: the hook refuses it every topic outside its own.
    let mut listener = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.mqtt[1].to_string(),
            "-q",
            "1",
        ])
        .args(["-t", &device_protocol::task::request_filter("311-a1", &mac)])
        .args(["-i", &mac, "-u", &mac, "-P", &secret])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let streamer_online = || {
        sql(
            &url,
            &format!("SELECT online::int FROM devices WHERE id = {streamer}"),
        ) == 1
    };
    assert!(
        eventually(30, streamer_online),
        "online by the cluster's connected event"
    );
    let forged = format!(
        "{{\"clientid\":\"{mac}\",\"disconnected_at\":{},\"reason\":\"Disconnect\"}}",
        now_ms() + 60_000
    );
    let _ = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.mqtt[0].to_string(),
            "-q",
            "1",
        ])
        .args([
            "-t",
            &format!("$SYS/brokers/1/clients/{mac}/disconnected"),
            "-m",
            &forged,
        ])
        .args(["-i", &macs[0], "-u", &macs[0], "-P", &secrets[0]])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        streamer_online(),
        "a forged $SYS event from another device changes nothing"
    );
    let _ = Command::new("kill")
        .args(["-INT", &listener.id().to_string()])
        .status();
    let _ = listener.wait();
    assert!(
        eventually(30, || !streamer_online()),
        "offline by the cluster's disconnected event"
    );

    // A node dies: its devices reconnect to the others and carry on.
    let back = now_ms();
    let sim = start_sim_on(
        &fleet_path,
        &cluster.urls(0),
        SIM_INTERVAL,
        &dir.path().join("sim2.log"),
    );
    assert!(
        eventually(90, || with_readings(back) == DEVICES as i64),
        "{} of {DEVICES} devices are back",
        with_readings(back)
    );
    kill(&mut cluster.nodes[2]);
    let node_killed = now_ms();
    // Each reconnect is a takeover the cluster first asks every node about,
    // the dead one too (gRPC timeouts until rmqtt's circuit breaker opens):
    // on 2 cores a third of the fleet took up to about two minutes.
    assert!(
        eventually(240, || with_readings(node_killed + 2_000) == DEVICES as i64),
        "{} of {DEVICES} devices publish again after a node died",
        with_readings(node_killed + 2_000)
    );
    eprintln!(
        "all {DEVICES} devices published again {} s after a node died",
        (now_ms() - node_killed) / 1000
    );
    drop(sim);
    drop(one);
}
