//! Helpers of the binary's end-to-end tests: the built `telemark`, free
//! ports on 127.0.0.1, Debian's mosquitto clients, a minimal HTTP client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt::{ConnAck, Connect, Decoder, Packet, encode};
use serde_json::{Value, json};

/// An MQTT client on the project's codec, over a blocking socket: sends
/// what a test gives it and reads packets as they come, so a test sees
/// exactly what the broker acknowledged before it died.
pub struct RawClient {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    version: mqtt::ProtocolVersion,
}

impl RawClient {
    /// Connects and returns the CONNACK; None if nothing listens or no
    /// CONNACK comes.
    pub fn connect(port: u16, connect: Connect) -> Option<(RawClient, ConnAck)> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_nodelay(true).ok()?;
        let version = connect.protocol;
        let mut client = RawClient {
            stream,
            decoder: Decoder::with_version(version),
            buf: BytesMut::new(),
            version,
        };
        client.send(&Packet::Connect(Box::new(connect)));
        match client.next(Duration::from_secs(10)) {
            Some(Packet::ConnAck(ack)) => Some((client, ack)),
            _ => None,
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("encode");
        // A write to a killed broker fails; the next read says so.
        let _ = self.stream.write_all(&out);
    }

    /// The next packet within `limit`; None when nothing came or the
    /// connection is gone.
    pub fn next(&mut self, limit: Duration) -> Option<Packet> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).expect("valid packet") {
                return Some(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `telemark broker`, killed when dropped.
pub struct Running {
    pub child: Child,
    pub tcp: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child that a failed assertion does not leave running.
pub struct KilledOnDrop(pub Option<Child>);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Debian's Mosquitto 2 on `127.0.0.1:port`, anonymous logins allowed,
/// with `settings` added to its configuration in `dir`.
pub fn start_mosquitto(dir: &Path, port: u16, settings: &str) -> KilledOnDrop {
    let config = dir.join(format!("mosquitto-{port}.conf"));
    // `user root` keeps a broker started as root from switching to a user
    // that cannot write the test's directory.
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n{settings}"),
    )
    .expect("config");
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts; scripts/test installs it");
    wait_for_port(port);
    KilledOnDrop(Some(child))
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

pub fn telemark() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telemark"))
}

pub fn start(extra: &[&str]) -> Running {
    let tcp = free_port();
    let mut cmd = telemark();
    cmd.args(["broker", "--tcp", &format!("127.0.0.1:{tcp}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("telemark starts");
    wait_for_port(tcp);
    Running { child, tcp }
}

/// Runs a command with a time limit; it must not hang a test run.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{cmd:?} does not start ({e}); the test script installs mosquitto-clients")
        });
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} timed out: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sub(port: u16, topic: &str, count: u32, extra: &[&str]) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-v",
            "-C",
            &count.to_string(),
            "-W",
            "10",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts; the test script installs mosquitto-clients")
}

pub fn pub_msg(port: u16, topic: &str, message: &str, extra: &[&str]) -> Output {
    run(
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-m",
                message,
            ])
            .args(extra),
        Duration::from_secs(10),
    )
}

pub fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("mosquitto_sub output");
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mosquitto_sub needs a moment to subscribe before the publish.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

/// A minimal HTTP/1.1 exchange over std, for the end-to-end tests.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The string value of `"key":"…"` in a JSON text.
pub fn json_string(body: &str, key: &str) -> String {
    body.split(&format!("\"{key}\":\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .to_owned()
}

/// Logs in through the API; returns the `Authorization` header value.
pub fn api_login(port: u16, username: &str, password: &str) -> String {
    let (status, body) = http(
        port,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &format!(r#"{{"username":"{username}","password":"{password}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    format!("Bearer {}", json_string(&body, "token"))
}

/// A DWM-311-A1 device registered through the API (the model too, the
/// first time); returns its id.
pub fn register_device(http_port: u16, bearer: &str, serial: &str, mac: &str) -> i64 {
    let json = [
        ("Authorization", bearer),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/device-models",
        &json,
        r#"{"name":"DWM-311-A1","vendor":"D-Link","hardware_revision":"A1","topic_segment":"311-a1"}"#,
    );
    assert!(status == 201 || status == 409, "{body}");
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/devices/import",
        &[("Authorization", bearer), ("Content-Type", "text/csv")],
        &format!("serial,mac,model\n{serial},{mac},311-a1\n"),
    );
    assert_eq!(status, 200, "{body}");
    let (_, page) = http(
        http_port,
        "GET",
        &format!("/api/v1/devices?search={serial}"),
        &json,
        "",
    );
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    page["devices"][0]["id"].as_i64().expect("id")
}

/// `telemark serve` on fixed ports and a data directory, killed when dropped.
pub struct Platform {
    pub child: Child,
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_platform(data: &Path, http_port: u16, mqtt_port: u16) -> Platform {
    start_platform_with(data, http_port, mqtt_port, &[])
}

/// `start_platform` with settings in the environment (`TELEMARK__…`).
pub fn start_platform_with(
    data: &Path,
    http_port: u16,
    mqtt_port: u16,
    env: &[(&str, &str)],
) -> Platform {
    let child = telemark()
        .envs(env.iter().copied())
        .args(["serve", "--data", data.to_str().expect("path")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")])
        .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("telemark serve starts");
    wait_for_port(http_port);
    wait_for_port(mqtt_port);
    Platform { child }
}

/// A database of its own (`{prefix}_{pid}`) on the test PostgreSQL that
/// scripts/test-postgres starts (`TELEMARK_TEST_POSTGRES`); its URL, or
/// None when there is no server (the test then says so and passes).
pub fn fresh_postgres(prefix: &str) -> Option<String> {
    let Ok(server) = std::env::var("TELEMARK_TEST_POSTGRES") else {
        eprintln!("TELEMARK_TEST_POSTGRES is not set: scripts/test-postgres starts one");
        return None;
    };
    let name = format!("{prefix}_{}", std::process::id());
    let created = Command::new("psql")
        .args([&server, "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    match server.rsplit_once('/') {
        Some((server, _)) => Some(format!("{server}/{name}")),
        None => panic!("TELEMARK_TEST_POSTGRES is not a URL"),
    }
}

/// Milliseconds since the epoch, as the platform stamps its records.
pub fn now_ms() -> i64 {
    store::now_millis()
}

/// Polls `check` every 200 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The logged-in user's organisation id (`GET /api/v1/session`).
pub fn own_organisation(port: u16, bearer: &str) -> i64 {
    let (status, body) = http(
        port,
        "GET",
        "/api/v1/session",
        &[("Authorization", bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    body.split("\"organisation_id\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no organisation_id in {body}"))
}

/// `telemark agent` with a provisioning file, killed when dropped.
pub fn start_agent(config: &Path) -> KilledOnDrop {
    KilledOnDrop(Some(
        telemark()
            .args(["agent", "--config", config.to_str().expect("path")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent starts"),
    ))
}

/// The API as one logged-in user calls it.
pub struct Api {
    pub port: u16,
    pub bearer: String,
}

impl Api {
    pub fn login(port: u16, user: &str, password: &str) -> Api {
        Api {
            port,
            bearer: api_login(port, user, password),
        }
    }

    pub fn call(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, answer) = http(
            self.port,
            method,
            path,
            &[
                ("Authorization", self.bearer.as_str()),
                ("Content-Type", "application/json"),
            ],
            &text,
        );
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, &Value::Null);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Runs a task on one device; returns the execution.
    pub fn task(&self, device: i64, task: Value) -> Value {
        let (status, body) = self.call("POST", &format!("/api/v1/devices/{device}/tasks"), &task);
        assert_eq!(status, 201, "{task}: {body}");
        body
    }

    /// Waits for an execution to reach a final state.
    pub fn final_execution(&self, id: i64, secs: u64) -> Value {
        let mut last = Value::Null;
        let done = eventually(secs, || {
            last = self.get(&format!("/api/v1/executions/{id}"));
            !["queued", "sent", "in_progress"].contains(&last["state"].as_str().unwrap_or(""))
        });
        assert!(done, "execution {id} still open: {last}");
        last
    }
}

/// Waits for a job to finish; returns it.
pub fn wait_job(api: &Api, job: i64, secs: u64) -> Value {
    let mut last = Value::Null;
    let finished = eventually(secs, || {
        last = api.get(&format!("/api/v1/jobs/{job}"));
        last["finished_at"].is_i64()
    });
    assert!(finished, "job {job} not finished: {last}");
    last
}

pub fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_else(|| panic!("no id in {v}"))
}

pub fn secret_for(api: &Api, device: i64) -> String {
    let (status, body) = api.call(
        "POST",
        &format!("/api/v1/devices/{device}/credentials"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{body}");
    body["password"].as_str().expect("password").to_owned()
}

pub fn online(api: &Api, device: i64) -> bool {
    api.get(&format!("/api/v1/devices/{device}"))["online"] == json!(true)
}

pub fn fleet_file(
    api: &Api,
    dir: &Path,
    count: usize,
    prefix: u8,
) -> (std::path::PathBuf, Vec<i64>) {
    let mut fleet = String::from("device_id,model,secret\n");
    let mut ids = Vec::new();
    for n in 0..count {
        let mac = format!("00:11:22:{prefix:02x}:00:{n:02x}");
        let id = register_device(api.port, &api.bearer, &format!("F{prefix}-{n}"), &mac);
        fleet.push_str(&format!(
            "{},311-a1,{}\n",
            mac.replace(':', "-"),
            secret_for(api, id)
        ));
        ids.push(id);
    }
    let path = dir.join(format!("fleet-{prefix}.csv"));
    std::fs::write(&path, fleet).expect("fleet");
    (path, ids)
}

pub fn start_sim(fleet: &Path, mqtt_port: u16, extra: &[&str]) -> KilledOnDrop {
    start_sim_with(
        fleet,
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        5,
        extra,
        Stdio::null(),
    )
}

/// `telemark sim` on `brokers` (`mqtt://…`, comma-separated for a cluster),
/// a reading from each device every `interval` seconds, each failed connect
/// of a device logged in `log`.
pub fn start_sim_on(fleet: &Path, brokers: &str, interval: u32, log: &Path) -> KilledOnDrop {
    let log = std::fs::File::create(log).expect("sim log");
    start_sim_with(fleet, brokers, interval, &[], log.into())
}

fn start_sim_with(
    fleet: &Path,
    brokers: &str,
    interval: u32,
    extra: &[&str],
    log: Stdio,
) -> KilledOnDrop {
    KilledOnDrop(Some(
        telemark()
            .args(["sim", "--fleet", fleet.to_str().expect("path")])
            .args(["--broker", brokers])
            .args(["--interval", &interval.to_string(), "--reboot-ms", "800"])
            .args(extra)
            .env("RUST_LOG", "warn,agent::sim=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sim starts"),
    ))
}

/// A raw HTTP exchange that keeps the response's headers.
pub fn exchange(port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.write_all(request).expect("request");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), raw[split + 4..].to_vec())
}

/// Uploads a firmware image as a streaming API client does.
pub fn upload(port: u16, bearer: &str, query: &str, image: &[u8]) -> (u16, Value) {
    let mut request = format!(
        "POST /api/v1/firmware?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {bearer}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        image.len()
    )
    .into_bytes();
    request.extend_from_slice(image);
    let (status, _, body) = exchange(port, &request);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The id of the 311-a1 model `register_device` made.
pub fn model_id(api: &Api) -> i64 {
    api.get("/api/v1/device-models")
        .as_array()
        .and_then(|m| m.iter().find(|m| m["topic_segment"] == "311-a1"))
        .and_then(|m| m["id"].as_i64())
        .expect("the 311-a1 model")
}
