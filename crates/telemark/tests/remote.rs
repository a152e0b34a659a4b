//! Remote access end to end: `telemark serve`, the real agent process, a
//! WebSocket client where the console's terminal would be, `telemark
//! tunnel`, and Debian's OpenSSH (sshd as the bastion and as the device's
//! own sshd, ssh as the engineer), all on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use device_protocol::session::{Frame, ReceiveWindow, SendWindow};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn call(port: u16, bearer: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, answer) = http(
        port,
        method,
        path,
        &[
            ("Authorization", bearer),
            ("Content-Type", "application/json"),
        ],
        &text,
    );
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

struct Fleet {
    dir: tempfile::TempDir,
    http: u16,
    mqtt: u16,
    admin: String,
    device: i64,
    agent_config: PathBuf,
    _platform: KilledOnDrop,
}

/// A platform (with `config` as its file) and one registered device whose
/// agent allows `ports`.
fn fleet(config: &str, ports: &[u16]) -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let config_file = dir.path().join("telemark.toml");
    std::fs::write(&config_file, config).expect("config");
    let platform = telemark()
        .args(["serve", "--config", config_file.to_str().expect("path")])
        .args(["--data", dir.path().join("data").to_str().expect("path")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")])
        .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(agent_log(&dir.path().join("serve.log")))
        .spawn()
        .expect("telemark serve starts");
    let platform = KilledOnDrop(Some(platform));
    wait_for_port(http_port);
    wait_for_port(mqtt_port);
    let admin = api_login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &admin, "REMOTE1", "00:11:22:33:88:01");
    let (status, body) = call(
        http_port,
        &admin,
        "POST",
        &format!("/api/v1/devices/{device}/credentials"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{body}");
    let secret = body["password"].as_str().expect("password");
    let agent_config = dir.path().join("agent.toml");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(
        &agent_config,
        format!(
            "broker = \"mqtt://127.0.0.1:{mqtt_port}\"\ndevice_id = \"00-11-22-33-88-01\"\nmodel = \"311-a1\"\n\
             secret = \"{secret}\"\nbuffer_dir = \"{buffer}\"\n\
             [remote]\nterminal_command = [\"/bin/sh\"]\nallowed_ports = [{ports}]\n",
            buffer = dir.path().join("buffer").display(),
            ports = ports.join(", "),
        ),
    )
    .expect("provisioning");
    Fleet {
        dir,
        http: http_port,
        mqtt: mqtt_port,
        admin,
        device,
        agent_config,
        _platform: platform,
    }
}

impl Fleet {
    fn start_agent(&self) -> KilledOnDrop {
        let agent = telemark()
            .args([
                "agent",
                "--config",
                self.agent_config.to_str().expect("path"),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(agent_log(&self.dir.path().join("agent.log")))
            .spawn()
            .expect("agent starts");
        let device = self.device;
        assert!(
            eventually(20, || {
                let (_, d) = call(
                    self.http,
                    &self.admin,
                    "GET",
                    &format!("/api/v1/devices/{device}"),
                    &Value::Null,
                );
                d["online"] == json!(true)
            }),
            "the agent connects"
        );
        KilledOnDrop(Some(agent))
    }

    fn open(&self, bearer: &str, body: Value) -> (u16, Value) {
        call(
            self.http,
            bearer,
            "POST",
            &format!("/api/v1/devices/{}/sessions", self.device),
            &body,
        )
    }

    /// `GET` or `DELETE /api/v1/remote-sessions/{id}` as `bearer`.
    fn remote_session(&self, bearer: &str, method: &str, id: &str) -> (u16, Value) {
        call(
            self.http,
            bearer,
            method,
            &format!("/api/v1/remote-sessions/{id}"),
            &Value::Null,
        )
    }

    fn audit(&self) -> String {
        call(
            self.http,
            &self.admin,
            "GET",
            "/api/v1/audit?limit=100",
            &Value::Null,
        )
        .1
        .to_string()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The console's side of a terminal: frames out, output in, credit given
/// back as the output is "drawn" (unless told not to).
struct TerminalClient {
    ws: Socket,
    input: SendWindow,
    output: ReceiveWindow,
    screen: Vec<u8>,
    events: Vec<Value>,
    acknowledge: bool,
}

impl TerminalClient {
    async fn attach(port: u16, bearer: &str, session: &Value) -> Result<Self, String> {
        let url = format!(
            "ws://127.0.0.1:{port}{}",
            session["stream"].as_str().expect("stream")
        );
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Authorization", bearer.parse().expect("header"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        let window = session["window"].as_u64().expect("window") as u32;
        Ok(TerminalClient {
            ws,
            input: SendWindow::new(window),
            output: ReceiveWindow::new(window),
            screen: Vec::new(),
            events: Vec::new(),
            acknowledge: true,
        })
    }

    async fn send(&mut self, frame: Frame) {
        self.ws
            .send(Message::Binary(frame.encode().into()))
            .await
            .expect("send");
    }

    async fn type_text(&mut self, text: &str) {
        let offset = self.input.sent(text.len());
        self.send(Frame::Data {
            channel: 0,
            offset,
            bytes: text.as_bytes().to_vec(),
        })
        .await;
    }

    /// Reads until `done` holds or `secs` pass; false when it never held.
    async fn until(&mut self, secs: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Binary(bytes)))) => match Frame::decode(&bytes) {
                    Ok(Frame::Data { offset, bytes, .. }) => {
                        self.output.data(offset, bytes.len()).expect("in window");
                        self.screen.extend_from_slice(&bytes);
                        if self.acknowledge
                            && let Some(consumed) = self.output.consumed(bytes.len())
                        {
                            self.send(Frame::Ack {
                                channel: 0,
                                consumed,
                            })
                            .await;
                        }
                    }
                    Ok(Frame::Ack { consumed, .. }) => self.input.ack(consumed).expect("ack"),
                    Ok(_) => {}
                    Err(e) => panic!("a bad frame from the platform: {e}"),
                },
                Ok(Some(Ok(Message::Text(text)))) => {
                    self.events
                        .push(serde_json::from_str(&text).expect("an event"));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    eprintln!("the session's stream failed: {e}");
                    return done(self);
                }
                Ok(None) | Err(_) => return done(self),
            }
        }
        true
    }

    /// Reads until the session ends; true when its reason mentions `why`.
    async fn ended_because(&mut self, secs: u64, why: &str) -> bool {
        self.until(secs, |t| t.saw("ended").is_some()).await;
        self.saw("ended")
            .is_some_and(|e| e["reason"].as_str().unwrap_or("").contains(why))
    }

    fn saw(&self, event: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == event)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }
}

/// Where an agent's log goes: a file the test's failure message can name.
fn agent_log(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_runs_commands_resizes_and_carries_10_mib_in_bounded_memory() {
    let f = tokio::task::spawn_blocking(|| fleet("", &[]))
        .await
        .expect("fleet");
    let agent = f.start_agent();
    let (status, session) = f.open(
        &f.admin,
        json!({"kind": "terminal", "cols": 80, "rows": 24}),
    );
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["state"], "opening");
    let mut term = TerminalClient::attach(f.http, &f.admin, &session)
        .await
        .expect("attach");
    assert!(
        term.until(20, |t| t.saw("opened").is_some()).await,
        "the device opens the terminal: {:?}\n{}",
        term.events,
        std::fs::read_to_string(f.dir.path().join("serve.log")).unwrap_or_default()
    );

    term.type_text("echo hi-$((40+2))\r").await;
    assert!(
        term.until(10, |t| t.text().contains("hi-42")).await,
        "the shell answers: {}",
        term.text()
    );

    term.send(Frame::Resize {
        cols: 132,
        rows: 43,
    })
    .await;
    term.type_text("stty size\r").await;
    assert!(
        term.until(10, |t| t.text().contains("43 132")).await,
        "the PTY has the new size: {}",
        term.text()
    );

    // 10 MiB through the window: everything arrives, and neither serve
    // nor the agent grows with it.
    let big = f.dir.path().join("big.bin");
    std::fs::write(&big, "0123456789abcde\n".repeat(10 * 1024 * 1024 / 16)).expect("file");
    let serve_pid = f._platform.0.as_ref().expect("serve").id();
    let agent_pid = agent.0.as_ref().expect("agent").id();
    let (serve_before, agent_before) = (rss_kib(serve_pid), rss_kib(agent_pid));
    let already = term.screen.len();
    term.type_text(&format!("cat {}; echo END-OF-CAT\r", big.display()))
        .await;
    let mut peak = (0, 0);
    let started = Instant::now();
    let finished = |t: &TerminalClient| {
        let tail = &t.screen[t.screen.len().saturating_sub(64)..];
        String::from_utf8_lossy(tail).contains("\nEND-OF-CAT")
    };
    while started.elapsed() < Duration::from_secs(120) && !finished(&term) {
        term.until(1, finished).await;
        peak = (
            peak.0.max(rss_kib(serve_pid)),
            peak.1.max(rss_kib(agent_pid)),
        );
    }
    let took = started.elapsed();
    assert!(
        term.screen.len() - already >= 10 * 1024 * 1024,
        "all of the file arrived: {} bytes in {took:?}",
        term.screen.len() - already
    );
    // PTY output is CR-LF'd: 10 MiB of lines arrive as more bytes.
    eprintln!("10 MiB through the terminal in {took:?}");
    assert!(
        peak.0 < serve_before + 64 * 1024 && peak.1 < agent_before + 64 * 1024,
        "memory stays bounded: serve {serve_before} → {} KiB, agent {agent_before} → {} KiB",
        peak.0,
        peak.1
    );

    // A client that stops reading: the device stops after one window.
    term.acknowledge = false;
    let before = term.screen.len();
    term.type_text(&format!("cat {}\r", big.display())).await;
    term.until(3, |_| false).await;
    let unacknowledged = term.screen.len() - before;
    assert!(
        unacknowledged <= 64 * 1024 + 256,
        "{unacknowledged} bytes arrived past a 64 KiB window"
    );

    // Closed by the user: the client hears why, the log keeps who and how long.
    let id = session["id"].as_str().expect("id");
    let (status, _) = f.remote_session(&f.admin, "DELETE", id);
    assert_eq!(status, 204);
    assert!(
        term.ended_because(10, "closed by admin").await,
        "{:?}",
        term.events
    );
    let (log, metrics) = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        eventually(10, || {
            log = f.audit();
            log.contains("remote.close")
        });
        let (_, metrics) = http(
            f.http,
            "GET",
            "/metrics",
            &[("Authorization", &f.admin)],
            "",
        );
        (log, metrics)
    })
    .await
    .expect("audit");
    assert!(
        metrics.contains("telemark_remote_sessions_opened_total 1")
            && metrics.contains("telemark_remote_sessions_ended_total 1")
            && metrics.contains("telemark_remote_sessions_open{kind=\"terminal\"} 0"),
        "{metrics}"
    );
    assert!(log.contains("remote.open"), "{log}");
    assert!(log.contains("ended after"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refuse_strangers_and_end_when_a_side_breaks_the_rules_or_vanishes() {
    let f = tokio::task::spawn_blocking(|| fleet("", &[]))
        .await
        .expect("fleet");
    let mut agent = f.start_agent();
    // Roles: an engineer may run tasks but not open a shell (by default).
    let org = own_organisation(f.http, &f.admin);
    for (name, role) in [("eng", "engineer"), ("view", "viewer")] {
        let (status, body) = call(
            f.http,
            &f.admin,
            "POST",
            "/api/v1/users",
            &json!({"username": name, "password": "long-enough-secret-1", "role": role, "organisation_id": org}),
        );
        assert_eq!(status, 201, "{body}");
        let bearer = api_login(f.http, name, "long-enough-secret-1");
        let (status, body) = f.open(&bearer, json!({"kind": "terminal"}));
        assert_eq!(status, 403, "{role}: {body}");
    }
    // Another organisation's admin does not learn the device exists.
    let (status, other) = call(
        f.http,
        &f.admin,
        "POST",
        "/api/v1/organisations",
        &json!({"name": "Other Integrator", "parent_id": org}),
    );
    assert_eq!(status, 201, "{other}");
    let (status, body) = call(
        f.http,
        &f.admin,
        "POST",
        "/api/v1/users",
        &json!({"username": "stranger", "password": "long-enough-secret-1", "role": "integrator-admin", "organisation_id": other["id"]}),
    );
    assert_eq!(status, 201, "{body}");
    let stranger = api_login(f.http, "stranger", "long-enough-secret-1");
    let (status, _) = f.open(&stranger, json!({"kind": "terminal"}));
    assert_eq!(status, 404);

    // A session cannot be smuggled in as an ordinary task or job (which
    // would skip the role check and the relay).
    let (status, body) = call(
        f.http,
        &f.admin,
        "POST",
        &format!("/api/v1/devices/{}/tasks", f.device),
        &json!({"type": "remote_session", "params": {"session": "0123456789abcdef0123456789abcdef", "kind": "terminal", "window": 65536, "idle_secs": 60, "max_secs": 60}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("/sessions"), "{body}");

    // A tunnel to a port the device does not allow: refused with why.
    let (status, tunnel) = f.open(&f.admin, json!({"kind": "tunnel", "port": 23}));
    assert_eq!(status, 201, "{tunnel}");
    let mut refused = TerminalClient::attach(f.http, &f.admin, &tunnel)
        .await
        .expect("attach");
    assert!(
        refused
            .ended_because(20, "not on this device's allowlist")
            .await,
        "{:?}",
        refused.events
    );

    let (status, session) = f.open(&f.admin, json!({"kind": "terminal"}));
    assert_eq!(status, 201, "{session}");
    // Someone else cannot attach to it, nor end it.
    let stolen = TerminalClient::attach(f.http, &stranger, &session).await;
    assert!(stolen.is_err(), "a stranger attached");
    let id = session["id"].as_str().expect("id").to_owned();
    let (status, _) = f.remote_session(&stranger, "DELETE", &id);
    assert_eq!(status, 404);
    let mut term = TerminalClient::attach(f.http, &f.admin, &session)
        .await
        .expect("attach");
    assert!(term.until(20, |t| t.saw("opened").is_some()).await);

    // Another device answers for this session, which it never had: it is
    // told to stop, and the real session is undisturbed.
    let other = register_device(f.http, &f.admin, "REMOTE2", "00:11:22:33:88:02");
    let (status, body) = call(
        f.http,
        &f.admin,
        "POST",
        &format!("/api/v1/devices/{other}/credentials"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{body}");
    let forged = Frame::Data {
        channel: 0,
        offset: 0,
        bytes: b"forged".to_vec(),
    }
    .encode();
    let forged_path = f.dir.path().join("forged.bin");
    std::fs::write(&forged_path, forged).expect("frame");
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &f.mqtt.to_string()])
        .args(["-i", "00-11-22-33-88-02", "-u", "00-11-22-33-88-02"])
        .args(["-P", body["password"].as_str().expect("password")])
        .args(["-q", "1", "-t"])
        .arg(format!("dwr/311-a1/00-11-22-33-88-02/sessions/{id}/out"))
        .arg("-f")
        .arg(&forged_path)
        .status()
        .expect("mosquitto_pub");
    assert!(published.success());
    term.type_text("echo still-$((1+1))\r").await;
    assert!(
        term.until(10, |t| t.text().contains("still-2")).await,
        "the session goes on: {}",
        term.text()
    );
    assert!(
        !term.text().contains("forged"),
        "a forged frame reached the client"
    );

    // A client breaking the window ends its session, with why.
    term.send(Frame::Data {
        channel: 0,
        offset: 999,
        bytes: b"x".to_vec(),
    })
    .await;
    assert!(
        term.ended_because(10, "broke the session protocol").await,
        "{:?}",
        term.events
    );

    // The device vanishing ends its session.
    let (status, session) = f.open(&f.admin, json!({"kind": "terminal"}));
    assert_eq!(status, 201, "{session}");
    let mut term = TerminalClient::attach(f.http, &f.admin, &session)
        .await
        .expect("attach");
    assert!(term.until(20, |t| t.saw("opened").is_some()).await);
    if let Some(child) = agent.0.as_mut() {
        let _ = child.kill();
    }
    assert!(
        term.ended_because(20, "disconnected").await,
        "{:?}",
        term.events
    );
}

fn online(http_port: u16, bearer: &str, device: i64) -> bool {
    call(
        http_port,
        bearer,
        "GET",
        &format!("/api/v1/devices/{device}"),
        &Value::Null,
    )
    .1["online"]
        == json!(true)
}

/// The user running the tests: the one a test sshd lets in.
fn me() -> String {
    let out = Command::new("id").arg("-un").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An OpenSSH server on 127.0.0.1 that takes `authorized_keys` logins as
/// the user running the tests.
struct Sshd {
    port: u16,
    host_key_pub: PathBuf,
    _child: KilledOnDrop,
}

fn ssh_keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

fn sshd(dir: &Path, name: &str, authorized_keys: &Path) -> Sshd {
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let host_key = dir.join(format!("{name}_host_key"));
    ssh_keygen(&host_key);
    let config = dir.join(format!("{name}_sshd_config"));
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nGatewayPorts no\n",
            host_key.display(),
            dir.join(format!("{name}.pid")).display(),
            authorized_keys.display(),
        ),
    )
    .expect("sshd config");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts (openssh-server)");
    wait_for_port(port);
    Sshd {
        port,
        host_key_pub: host_key.with_extension("pub"),
        _child: KilledOnDrop(Some(child)),
    }
}

/// The device's own sshd, which lets the engineer's key in; returns the key.
fn device_sshd(dir: &Path) -> (PathBuf, Sshd) {
    let engineer_key = dir.join("engineer");
    ssh_keygen(&engineer_key);
    let device_keys = dir.join("device_authorized_keys");
    std::fs::copy(engineer_key.with_extension("pub"), &device_keys).expect("keys");
    (engineer_key, sshd(dir, "device", &device_keys))
}

/// `ssh` as the engineer: batch mode, the test's key, the server's host key.
fn ssh(dir: &Path, key: &Path, port: u16, host_key_pub: &Path, command: &str) -> Child {
    let known = dir.join(format!("known_{port}"));
    let host_key = std::fs::read_to_string(host_key_pub).expect("host key");
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
    )
    .expect("known");
    Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .arg(format!("{}@127.0.0.1", me()))
        .arg(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh runs")
}

#[test]
fn telemark_tunnel_carries_an_ssh_login_and_an_http_request() {
    let work = tempfile::tempdir().expect("tempdir");
    // The device's own services: sshd and a web UI.
    let (engineer_key, device_sshd) = device_sshd(work.path());
    let web_root = work.path().join("www");
    std::fs::create_dir_all(&web_root).expect("www");
    std::fs::write(web_root.join("index.html"), "router web ui").expect("page");
    let web_port = free_port();
    let _web = KilledOnDrop(Some(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &web_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&web_root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    ));
    wait_for_port(web_port);

    let f = fleet("", &[device_sshd.port, web_port]);
    let _agent = f.start_agent();
    let (status, token) = call(
        f.http,
        &f.admin,
        "POST",
        "/api/v1/tokens",
        &json!({"name": "tunnel"}),
    );
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().expect("token").to_owned();
    let tunnel = |remote: u16, local: u16| {
        KilledOnDrop(Some(
            telemark()
                .args(["tunnel", "00-11-22-33-88-01"])
                .args(["--remote-port", &remote.to_string()])
                .args(["--local-port", &local.to_string()])
                .args(["--url", &format!("http://127.0.0.1:{}", f.http)])
                .env("TELEMARK_TOKEN", &token)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("telemark tunnel"),
        ))
    };

    // The router's web UI through the tunnel, twice (two connections).
    let local_web = free_port();
    let _web_tunnel = tunnel(web_port, local_web);
    wait_for_port(local_web);
    for _ in 0..2 {
        let (status, page) = http(local_web, "GET", "/index.html", &[], "");
        assert_eq!((status, page.as_str()), (200, "router web ui"));
    }

    // An ssh login to the device's sshd through the tunnel.
    let local_ssh = free_port();
    let _ssh_tunnel = tunnel(device_sshd.port, local_ssh);
    wait_for_port(local_ssh);
    let login = ssh(
        work.path(),
        &engineer_key,
        local_ssh,
        &device_sshd.host_key_pub,
        "echo through-the-tunnel-$((6*7))",
    );
    let output = finish(login);
    assert!(
        output.contains("through-the-tunnel-42"),
        "ssh through the tunnel: {output}"
    );

    // A port the device does not list: the tunnel says so and stops.
    let refused = telemark()
        .args(["tunnel", "00-11-22-33-88-01", "--remote-port", "23"])
        .args(["--local-port", &free_port().to_string()])
        .args(["--url", &format!("http://127.0.0.1:{}", f.http)])
        .env("TELEMARK_TOKEN", &token)
        .output()
        .expect("telemark tunnel");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("not on this device's allowlist"), "{said}");
}

#[test]
fn a_reverse_ssh_tunnel_reaches_the_device_sshd_through_a_real_bastion() {
    let work = tempfile::tempdir().expect("tempdir");
    let (engineer_key, device_sshd) = device_sshd(work.path());
    // The bastion: its authorized_keys is Telemark's to keep.
    let bastion_keys = work.path().join("bastion_authorized_keys");
    std::fs::write(&bastion_keys, "").expect("keys");
    let bastion = sshd(work.path(), "bastion", &bastion_keys);
    let config = format!(
        "[remote.bastion]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nhost_key_file = \"{}\"\nauthorized_keys = \"{}\"\n",
        bastion.port,
        me(),
        bastion.host_key_pub.display(),
        bastion_keys.display()
    );
    let f = fleet(&config, &[]);
    let _agent = f.start_agent();
    let (status, session) = f.open(
        &f.admin,
        json!({"kind": "reverse_ssh", "port": device_sshd.port}),
    );
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().expect("id").to_owned();
    assert!(
        std::fs::read_to_string(&bastion_keys)
            .expect("keys")
            .contains(&format!("telemark-session-{id}")),
        "the session's key is on the bastion"
    );
    // The session's own key never shows in the task the API lists.
    let (_, tasks) = call(
        f.http,
        &f.admin,
        "GET",
        &format!("/api/v1/devices/{}/tasks", f.device),
        &Value::Null,
    );
    assert!(!tasks.to_string().contains("PRIVATE KEY"), "{tasks}");
    let mut bound = None;
    assert!(
        eventually(30, || {
            let (_, s) = f.remote_session(&f.admin, "GET", &id);
            bound = s["bound_port"].as_u64();
            bound.is_some()
        }),
        "the device reports the port bound on the bastion: {}\n{}",
        call(
            f.http,
            &f.admin,
            "GET",
            &format!("/api/v1/devices/{}/tasks", f.device),
            &Value::Null
        )
        .1,
        std::fs::read_to_string(f.dir.path().join("agent.log")).unwrap_or_default()
    );
    let bound = bound.expect("port") as u16;
    let login = ssh(
        work.path(),
        &engineer_key,
        bound,
        &device_sshd.host_key_pub,
        "echo reverse-$((6*7))",
    );
    let output = finish(login);
    assert!(
        output.contains("reverse-42"),
        "ssh through the bastion: {output}"
    );

    // Torn down on request: the port closes, the key leaves the bastion.
    let (status, _) = f.remote_session(&f.admin, "DELETE", &id);
    assert_eq!(status, 204);
    assert!(
        eventually(15, || std::net::TcpStream::connect(("127.0.0.1", bound))
            .is_err()),
        "the bastion's port is closed"
    );
    assert!(
        eventually(5, || !std::fs::read_to_string(&bastion_keys)
            .unwrap_or_default()
            .contains(&id)),
        "the key is gone from the bastion"
    );

    // Torn down at its TTL, with nobody asking.
    let (status, session) = f.open(
        &f.admin,
        json!({"kind": "reverse_ssh", "port": device_sshd.port, "ttl_secs": 10}),
    );
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().expect("id").to_owned();
    let mut bound = None;
    assert!(eventually(30, || {
        bound = f.remote_session(&f.admin, "GET", &id).1["bound_port"].as_u64();
        bound.is_some()
    }));
    let bound = bound.expect("port") as u16;
    assert!(
        eventually(20, || {
            f.remote_session(&f.admin, "GET", &id).0 == 404
                && std::net::TcpStream::connect(("127.0.0.1", bound)).is_err()
        }),
        "the tunnel ends at its TTL"
    );
    assert!(
        f.audit().contains("maximum of 10 s"),
        "the log says why it ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_device_offers_a_small_shell_for_the_demo() {
    let f = tokio::task::spawn_blocking(|| fleet("", &[]))
        .await
        .expect("fleet");
    let (_, body) = call(
        f.http,
        &f.admin,
        "POST",
        &format!("/api/v1/devices/{}/credentials", f.device),
        &Value::Null,
    );
    let roster = f.dir.path().join("fleet.csv");
    std::fs::write(
        &roster,
        format!(
            "device_id,model,secret\n00-11-22-33-88-01,311-a1,{}\n",
            body["password"].as_str().expect("password")
        ),
    )
    .expect("fleet file");
    let _sim = KilledOnDrop(Some(
        telemark()
            .args(["sim", "--fleet", roster.to_str().expect("path")])
            .args(["--broker", &format!("mqtt://127.0.0.1:{}", f.mqtt)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sim starts"),
    ));
    let (http, admin, device) = (f.http, f.admin.clone(), f.device);
    assert!(
        tokio::task::spawn_blocking(move || eventually(20, || online(http, &admin, device)))
            .await
            .expect("join")
    );
    let (status, session) = f.open(
        &f.admin,
        json!({"kind": "terminal", "cols": 100, "rows": 30}),
    );
    assert_eq!(status, 201, "{session}");
    let mut term = TerminalClient::attach(f.http, &f.admin, &session)
        .await
        .expect("attach");
    assert!(
        term.until(20, |t| t.text().contains("root@router:~# "))
            .await
    );
    term.type_text("echo hi\r").await;
    assert!(
        term.until(10, |t| t.text().contains("echo hi\r\nhi\r\n"))
            .await,
        "{}",
        term.text()
    );
    term.type_text("stty size\r").await;
    assert!(term.until(10, |t| t.text().contains("30 100")).await);
    // A port forward needs a real device.
    let (status, tunnel) = f.open(&f.admin, json!({"kind": "tunnel", "port": 22}));
    assert_eq!(status, 201);
    let mut refused = TerminalClient::attach(f.http, &f.admin, &tunnel)
        .await
        .expect("attach");
    assert!(refused.until(20, |t| t.saw("ended").is_some()).await);
}
