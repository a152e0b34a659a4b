//! Attacks on `telemark serve` as a stranger, a device owner who extracted
//! its secret, or a login flood would make them, each with the outcome an
//! operator would check. Everything talks to 127.0.0.x.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A device's MQTT secret, issued through the API.
fn issue_secret(http_port: u16, bearer: &str, device_id: i64) -> String {
    let (status, body) = http(
        http_port,
        "POST",
        &format!("/api/v1/devices/{device_id}/credentials"),
        &[("Authorization", bearer)],
        "",
    );
    assert_eq!(status, 201, "{body}");
    json_string(&body, "password")
}

/// `mosquitto_sub` that connects, subscribes and waits briefly; returns
/// whether the broker let it in, and what it printed on stderr.
fn try_connect(mqtt_port: u16, args: &[&str]) -> (bool, String) {
    let out = run(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
            .args(["-t", "dwr/#", "-W", "1", "-C", "1"])
            .args(args),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // -W ends a connected client with "Timed out" (exit 27); a refused one
    // says "Connection Refused" (or "Connection error").
    let refused = stderr.contains("efused") || stderr.contains("Connection error");
    (!refused, stderr)
}

fn metric(http_port: u16, bearer: &str, name: &str) -> u64 {
    let (status, text) = http(
        http_port,
        "GET",
        "/metrics",
        &[("Authorization", bearer)],
        "",
    );
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn a_device_secret_cannot_name_another_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(dir.path(), http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let thief_id = register_device(http_port, &bearer, "THIEF", "00:11:22:33:44:01");
    let victim_id = register_device(http_port, &bearer, "VICTIM", "00:11:22:33:44:02");
    let secret = issue_secret(http_port, &bearer, thief_id);
    let victim_secret = issue_secret(http_port, &bearer, victim_id);
    let thief = ["-u", "00-11-22-33-44-01", "-P", secret.as_str()];

    // The platform's own ingest session, and the victim's, by every version
    // and with clean session off: each refused with "identifier rejected".
    for (client_id, version) in [
        ("telemark-platform-ingest", "mqttv311"),
        ("telemark-platform-ingest", "mqttv5"),
        ("00-11-22-33-44-02", "mqttv311"),
        ("00-11-22-33-44-02", "mqttv5"),
        ("00:11:22:33:44:01", "mqttv5"),
    ] {
        let (accepted, stderr) = try_connect(
            mqtt_port,
            &[&thief[..], &["-i", client_id, "-c", "-V", version]].concat(),
        );
        assert!(!accepted, "{client_id} over {version} was let in: {stderr}");
        assert!(
            stderr.contains("identifier") || stderr.contains("Client Identifier"),
            "{stderr}"
        );
    }
    // Even the operator cannot take the platform's session from a listener.
    let (accepted, _) = try_connect(
        mqtt_port,
        &[
            "-u",
            "admin",
            "-P",
            "first-admin-secret",
            "-i",
            "telemark-platform-ingest",
            "-c",
        ],
    );
    assert!(!accepted, "the operator took over the ingest session");
    assert_eq!(
        metric(
            http_port,
            &bearer,
            "telemark_broker_client_id_refusals_total"
        ),
        6
    );

    // The victim still connects as itself, and the ingest still stores.
    let victim = ["-u", "00-11-22-33-44-02", "-P", victim_secret.as_str()];
    let published = pub_msg(
        mqtt_port,
        "dwr/311-a1/00-11-22-33-44-02/hardware/memory",
        &format!(
            r#"{{"v":1,"ts":{},"total_kb":262144,"available_kb":81920,"used_percent":68.75}}"#,
            now_ms()
        ),
        &[&victim[..], &["-i", "00-11-22-33-44-02", "-q", "1"]].concat(),
    );
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert!(
        eventually(10, || {
            let (_, body) = http(
                http_port,
                "GET",
                &format!("/api/v1/devices/{victim_id}/metrics"),
                &[("Authorization", &bearer)],
                "",
            );
            body.contains("memory.used_percent")
        }),
        "the ingest stored the victim's reading"
    );
}

/// One HTTP exchange from a chosen loopback source address.
fn http_from(source: IpAddr, port: u16, body: &str) -> u16 {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind a loopback source");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// The stated bound: serve's peak memory through a flood of 300
/// concurrent wrong logins (argon2 holds 19 MiB per verification).
const FLOOD_RSS_BOUND_MIB: u64 = 150;

#[test]
fn a_login_flood_stays_bounded_and_the_operator_still_gets_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let platform = start_platform(dir.path(), http_port, mqtt_port);
    let pid = platform.child.id();
    // 300 strangers, each from its own loopback address so the per-source
    // throttle does not stop them before the password pool does.
    let flood: Vec<_> = (0..300u32)
        .map(|i| {
            std::thread::spawn(move || {
                let source = IpAddr::from([127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8]);
                http_from(
                    source,
                    http_port,
                    &format!(r#"{{"username":"admin","password":"guess-{i}"}}"#),
                )
            })
        })
        .collect();
    let statuses: Vec<u16> = flood
        .into_iter()
        .map(|t| t.join().expect("flood thread"))
        .collect();
    assert!(
        statuses.iter().all(|s| [401, 503].contains(s)),
        "every stranger is refused: {statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "part of the flood is turned away busy"
    );
    let peak = peak_rss_mib(pid);
    eprintln!("serve peak during the flood: {peak} MiB");
    assert!(
        peak < FLOOD_RSS_BOUND_MIB,
        "serve peaked at {peak} MiB during the flood"
    );
    // The operator, from 127.0.0.1, gets in within seconds.
    let started = Instant::now();
    loop {
        let status = http_from(
            IpAddr::from([127, 0, 0, 1]),
            http_port,
            r#"{"username":"admin","password":"first-admin-secret"}"#,
        );
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the operator could not log in after the flood ({status})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn console_accounts_over_mqtt_share_the_login_throttle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(dir.path(), http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let organisation = own_organisation(http_port, &bearer);
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/users",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &format!(
            r#"{{"organisation_id":{organisation},"username":"watcher","password":"watcher-password","role":"viewer"}}"#
        ),
    );
    assert_eq!(status, 201, "{body}");
    // A right password without the operator role and a wrong password get
    // the same answer: nothing tells a guess it was right.
    let (in_right, right) = try_connect(mqtt_port, &["-u", "watcher", "-P", "watcher-password"]);
    let (in_wrong, wrong) = try_connect(mqtt_port, &["-u", "watcher", "-P", "not-it"]);
    assert!(!in_right && !in_wrong);
    assert_eq!(right, wrong);
    // Wrong admin passwords over MQTT lock the name for this source, over
    // HTTP too; the lock does not reach another source.
    for _ in 0..5 {
        let (accepted, _) = try_connect(mqtt_port, &["-u", "admin", "-P", "wrong"]);
        assert!(!accepted);
    }
    let (accepted, _) = try_connect(mqtt_port, &["-u", "admin", "-P", "first-admin-secret"]);
    assert!(!accepted, "the right password is refused while locked");
    let (status, _) = http(
        http_port,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        r#"{"username":"admin","password":"first-admin-secret"}"#,
    );
    assert_eq!(status, 429);
    let status = http_from(
        IpAddr::from([127, 0, 0, 2]),
        http_port,
        r#"{"username":"admin","password":"first-admin-secret"}"#,
    );
    assert_eq!(status, 200, "another source is not locked out");
    // A user name of 16 KiB is refused without a password check.
    let long = "a".repeat(16 * 1024);
    let (accepted, _) = try_connect(mqtt_port, &["-u", &long, "-P", "x"]);
    assert!(!accepted);
}

#[test]
fn a_database_dump_alone_holds_no_usable_platform_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let public_key = || {
        let (status, body) = http(http_port, "GET", "/api/v1/license/public-key", &[], "");
        assert_eq!(status, 200, "{body}");
        json_string(&body, "public_key")
    };
    let platform = start_platform(dir.path(), http_port, mqtt_port);
    let first_key = public_key();
    // A webhook's signing secret, shown once: not in the database either.
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let organisation = own_organisation(http_port, &bearer);
    let (status, hook) = http(
        http_port,
        "POST",
        "/api/v1/webhooks",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &format!(r#"{{"organisation_id":{organisation},"url":"http://93.184.215.14:9/hook"}}"#),
    );
    assert_eq!(status, 201, "{hook}");
    let hook_secret = json_string(&hook, "secret");
    drop(platform);
    // The key file is the owner's alone; the database holds no PEM key and
    // no secret in the clear.
    let key_file = dir.path().join("platform.key");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    for file in ["telemark.db", "telemark.db-wal"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{file} holds a private key in the clear"
        );
        assert!(
            !text.contains(&hook_secret),
            "{file} holds a webhook secret in the clear"
        );
    }
    // The key is rotated; the platform comes back with the same license key.
    let out = run(
        telemark()
            .args(["secrets", "rotate-key", "--data"])
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("platform.key.old").exists());
    let platform = start_platform(dir.path(), http_port, mqtt_port);
    assert_eq!(public_key(), first_key);
    drop(platform);
    // Without the key (a dump copied elsewhere), serve refuses to start
    // instead of making new keys that would orphan every license.
    std::fs::remove_file(&key_file).expect("remove key");
    std::fs::remove_file(dir.path().join("platform.key.old")).expect("remove old key");
    let out = run(
        telemark()
            .args(["serve", "--data"])
            .arg(dir.path())
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sealed with key"), "{stderr}");
}

/// A broker that lets a client in and then acknowledges nothing: how the
/// agent sees a broker that dies between receiving and acknowledging.
/// Returns the PUBLISH packets it read, once `for_how_long` has passed.
fn unacknowledging_broker(port: u16, for_how_long: Duration) -> std::thread::JoinHandle<usize> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("the agent connects");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut decoder = mqtt::Decoder::new();
        let mut buf = bytes::BytesMut::new();
        let mut publishes = 0;
        let until = Instant::now() + for_how_long;
        let mut chunk = [0u8; 65536];
        while Instant::now() < until {
            match socket.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => continue,
            }
            while let Ok(Some(packet)) = decoder.decode(&mut buf) {
                match packet {
                    // CONNACK, session not present, accepted.
                    mqtt::Packet::Connect(_) => socket
                        .write_all(&[0x20, 0x02, 0x00, 0x00])
                        .expect("connack"),
                    mqtt::Packet::Publish(_) => publishes += 1,
                    _ => {}
                }
            }
        }
        publishes
    })
}

fn buffered_lines(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("buffer.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn the_agent_forgets_a_buffered_reading_only_once_the_broker_acknowledged_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let buffer = dir.path().join("buffer");
    let port = free_port();
    let provisioning = dir.path().join("agent.toml");
    let write_provisioning = |port: u16| {
        std::fs::write(
            &provisioning,
            format!(
                "broker = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"00-11-22-33-77-01\"\nmodel = \"311-a1\"\n\
                 secret = \"s\"\nbuffer_dir = \"{}\"\n[intervals]\nhardware = 1\nnetwork = 1\nuptime = 1\nlogs = 1\n",
                buffer.display()
            ),
        )
        .expect("provisioning");
    };
    write_provisioning(port);
    let agent = || {
        telemark()
            .args(["agent", "--config", provisioning.to_str().expect("path")])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("agent starts")
    };
    // No broker yet: readings wait on disk.
    let mut first = KilledOnDrop(Some(agent()));
    assert!(
        eventually(20, || buffered_lines(&buffer) >= 10),
        "readings buffered"
    );
    // A broker that takes them and acknowledges nothing, then the device
    // loses power: every reading it sent is still on disk.
    let broker = unacknowledging_broker(port, Duration::from_secs(4));
    let before = buffered_lines(&buffer);
    let received = broker.join().expect("broker");
    if let Some(child) = first.0.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        received >= before.min(50),
        "the agent sent its buffer ({received} of {before})"
    );
    assert!(
        buffered_lines(&buffer) >= before,
        "sent but unacknowledged readings left the disk"
    );
    // Against a real broker they are delivered, acknowledged and gone.
    let broker = start(&[]);
    let watcher = sub(
        broker.tcp,
        "dwr/311-a1/00-11-22-33-77-01/#",
        before as u32,
        &[],
    );
    write_provisioning(broker.tcp);
    let _second = KilledOnDrop(Some(agent()));
    let delivered = finish(watcher);
    assert!(delivered.lines().count() >= before, "{delivered}");
    assert!(
        eventually(20, || buffered_lines(&buffer) == 0),
        "acknowledged readings leave the disk ({} left)",
        buffered_lines(&buffer)
    );
}
