//! The `telemark` binary as a user runs it, with Debian's
//! `mosquitto_pub`/`mosquitto_sub` as the clients, all on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn mosquitto_clients_publish_and_subscribe_in_every_version() {
    let broker = start(&[]);
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        let topic = format!("dwr/311-a1/00-11-22-33-44-55/hardware/{version}");
        let s = sub(broker.tcp, "dwr/+/+/hardware/#", 1, &["-V", version]);
        settle();
        let out = pub_msg(
            broker.tcp,
            &topic,
            r#"{"free":1024}"#,
            &["-q", "1", "-V", version],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(finish(s).trim(), format!(r#"{topic} {{"free":1024}}"#));
    }
}

#[test]
fn retained_message_reaches_a_late_subscriber() {
    let broker = start(&[]);
    let out = pub_msg(
        broker.tcp,
        "dwr/311-a1/aa/status",
        "online",
        &["-r", "-q", "2"],
    );
    assert!(out.status.success());
    let s = sub(broker.tcp, "dwr/#", 1, &[]);
    assert_eq!(finish(s).trim(), "dwr/311-a1/aa/status online");
}

#[test]
fn password_file_from_telemark_passwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let out = run(
        telemark().args([
            "passwd",
            passwd.to_str().expect("path"),
            "ops",
            "--password",
            "fleet-secret",
        ]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = start(&["--password-file", passwd.to_str().expect("path")]);
    let refused = pub_msg(broker.tcp, "t", "x", &["-u", "ops", "-P", "wrong"]);
    assert!(!refused.status.success(), "a wrong password is refused");
    let anonymous = pub_msg(broker.tcp, "t", "x", &[]);
    assert!(!anonymous.status.success(), "anonymous is refused");
    let s = sub(broker.tcp, "t", 1, &["-u", "ops", "-P", "fleet-secret"]);
    settle();
    let ok = pub_msg(broker.tcp, "t", "x", &["-u", "ops", "-P", "fleet-secret"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(finish(s).trim(), "t x");
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, written
/// to `dir`: (CA file, certificate file, key file).
fn test_server_certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(vec![]).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL takes a certificate whose issuer equals its subject for
    // self-signed: the CA needs a name of its own.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Telemark test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().expect("key");
    let mut server_params = CertificateParams::new(vec!["localhost".into()]).expect("params");
    server_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write");
        path.to_str().expect("path").to_owned()
    };
    (
        write("ca.crt", ca.pem()),
        write("server.crt", server.pem()),
        write("server.key", server_key.serialize_pem()),
    )
}

#[test]
fn mosquitto_clients_over_tls_with_a_test_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_file, cert, key) = test_server_certificates(dir.path());
    let tls_port = free_port();
    let broker = start(&[
        "--tls",
        &format!("127.0.0.1:{tls_port}"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    wait_for_port(tls_port);
    let tls = ["--cafile", ca_file.as_str()];
    let s = sub(tls_port, "secure/#", 1, &tls);
    settle();
    let out = pub_msg(tls_port, "secure/hello", "over tls", &tls);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(finish(s).trim(), "secure/hello over tls");
    // The plain listener works alongside.
    assert!(pub_msg(broker.tcp, "plain", "x", &[]).status.success());
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let metrics = free_port();
    let broker = start(&["--metrics", &format!("127.0.0.1:{metrics}")]);
    wait_for_port(metrics);
    assert!(
        pub_msg(broker.tcp, "m/t", "x", &["-q", "1"])
            .status
            .success()
    );
    let mut stream =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], metrics))).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("telemark_broker_publish_received_total 1"),
        "{response}"
    );
}

#[test]
fn sigterm_shuts_down_gracefully_and_publishes_wills() {
    let mut broker = start(&[]);
    let watcher = sub(broker.tcp, "wills/#", 1, &["-V", "mqttv5"]);
    let device = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.tcp.to_string(),
            "-t",
            "none",
            "-W",
            "10",
        ])
        .args([
            "--will-topic",
            "wills/dev1",
            "--will-payload",
            "offline",
            "-i",
            "dev1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    settle();
    let pid = broker.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = broker.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "telemark did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert_eq!(finish(watcher).trim(), "wills/dev1 offline");
    let mut device = device;
    let _ = device.kill();
    let _ = device.wait();
}

#[test]
fn config_file_problems_are_reported_all_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[broker]\nreceive_maximum = 0\nmax_inflight = 0\n").expect("write");
    let out = run(
        telemark().args(["broker", "--config", path.to_str().expect("path")]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("receive_maximum") && err.contains("max_inflight"),
        "{err}"
    );
    let out = run(telemark().arg("config"), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[broker]") && text.contains("max_connections"));
    assert!(Path::new(env!("CARGO_BIN_EXE_telemark")).exists());
}

#[test]
fn serve_runs_store_api_and_broker_with_the_admin_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut child = telemark()
        .args([
            "serve",
            "--data",
            dir.path().to_str().expect("path"),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--mqtt",
            &format!("127.0.0.1:{mqtt_port}"),
        ])
        .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("telemark serve starts");
    wait_for_port(http_port);
    wait_for_port(mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let (status, body) = http(
        http_port,
        "GET",
        "/api/v1/statistics",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"devices\":{\"value\":0"), "{body}");
    let (status, body) = http(http_port, "GET", "/api/v1/devices", &[], "");
    assert_eq!(status, 401);
    assert!(body.contains("\"status\":401"));
    // The embedded broker answers from the registry: anonymous is refused,
    // the operator admin logs in with the console password.
    assert!(!pub_msg(mqtt_port, "dwr/x", "y", &[]).status.success());
    let admin = ["-u", "admin", "-P", "first-admin-secret"];
    let s = sub(mqtt_port, "dwr/#", 1, &admin);
    settle();
    let published = pub_msg(
        mqtt_port,
        "dwr/311-a1/aa/status",
        "online",
        &[&admin[..], &["-q", "1"]].concat(),
    );
    assert!(published.status.success());
    assert_eq!(finish(s).trim(), "dwr/311-a1/aa/status online");

    // A device: model, import, credentials, then MQTT as itself.
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/device-models",
        &auth,
        r#"{"name":"DWM-311-A1","vendor":"D-Link","hardware_revision":"A1","topic_segment":"311-a1"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let csv_auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "text/csv"),
    ];
    let (status, body) = http(
        http_port,
        "POST",
        "/api/v1/devices/import?source=fleet.csv",
        &csv_auth,
        "serial,mac,model\nSN1,00:11:22:33:44:55,311-a1\nSN2,00:11:22:33:44:56,311-a1\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"rows_accepted\":2"), "{body}");
    let (_, page) = http(http_port, "GET", "/api/v1/devices?search=SN1", &auth, "");
    let device_id = page
        .split("\"id\":")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("device id")
        .to_owned();
    let (status, body) = http(
        http_port,
        "POST",
        &format!("/api/v1/devices/{device_id}/credentials"),
        &auth,
        "",
    );
    assert_eq!(status, 201, "{body}");
    let secret = json_string(&body, "password");
    let mac = "00-11-22-33-44-55";
    let device = ["-u", mac, "-P", secret.as_str(), "-i", mac];
    let watcher = sub(mqtt_port, "dwr/311-a1/+/hardware/#", 1, &admin);
    settle();
    let own = pub_msg(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/hardware/memory"),
        "{\"free\":1}",
        &[&device[..], &["-q", "1"]].concat(),
    );
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_eq!(
        finish(watcher).trim(),
        format!("dwr/311-a1/{mac}/hardware/memory {{\"free\":1}}")
    );
    let wrong = pub_msg(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/x"),
        "y",
        &["-u", mac, "-P", "not-the-secret"],
    );
    assert!(!wrong.status.success(), "a wrong secret is refused");
    // Another device's topics are not this device's to read.
    let sneaky = sub(
        mqtt_port,
        "dwr/311-a1/00-11-22-33-44-56/#",
        1,
        &[&device[..], &["-V", "mqttv5"]].concat(),
    );
    let out = sneaky.wait_with_output().expect("output");
    assert!(
        out.stdout.is_empty(),
        "subscription to another device's topics delivered data"
    );
    // Presence: online while connected.
    let mut holder = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port.to_string(),
            "-t",
            &format!("dwr/311-a1/{mac}/tasks/#"),
            "-W",
            "20",
        ])
        .args(device)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("device connection");
    let mut online = false;
    for _ in 0..50 {
        let (_, body) = http(
            http_port,
            "GET",
            &format!("/api/v1/devices/{device_id}"),
            &auth,
            "",
        );
        if body.contains("\"online\":true") {
            online = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(online, "the device shows online while connected");
    let (_, stats) = http(http_port, "GET", "/api/v1/statistics", &auth, "");
    assert!(stats.contains("\"online_devices\":{\"value\":1"), "{stats}");
    let (_, presence) = http(
        http_port,
        "GET",
        &format!("/api/v1/devices/{device_id}/presence"),
        &auth,
        "",
    );
    assert!(
        presence.starts_with("[{") && presence.contains("\"online\":true"),
        "{presence}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("Telemark is up"), "{printed}");
    // A second start keeps the data and creates no second admin.
    let mut again = telemark()
        .args([
            "serve",
            "--data",
            dir.path().to_str().expect("path"),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--mqtt",
            &format!("127.0.0.1:{mqtt_port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart");
    wait_for_port(http_port);
    api_login(http_port, "admin", "first-admin-secret");
    let _ = again.kill();
    let out = again.wait_with_output().expect("output");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("First start"));
}

#[test]
fn import_devices_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let http_port = free_port();
    // First start creates the operator; a device model comes through the API.
    let mut serve = telemark()
        .args([
            "serve",
            "--data",
            data.to_str().expect("path"),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--mqtt",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("TELEMARK_ADMIN_PASSWORD", "cli-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    wait_for_port(http_port);
    let bearer = api_login(http_port, "admin", "cli-admin-secret");
    let (status, _) = http(
        http_port,
        "POST",
        "/api/v1/device-models",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"name":"DWM-312-A2","vendor":"D-Link","hardware_revision":"A2","topic_segment":"312-a2"}"#,
    );
    assert_eq!(status, 201);
    let _ = serve.kill();
    let _ = serve.wait();

    let good = dir.path().join("fleet.csv");
    std::fs::write(
        &good,
        "serial,mac,model\nC1,00:11:22:33:66:01,312-a2\nC2,00:11:22:33:66:02,312-a2\n",
    )
    .expect("write");
    let out = run(
        telemark().args([
            "import",
            "devices",
            good.to_str().expect("path"),
            "--data",
            data.to_str().expect("path"),
        ]),
        Duration::from_secs(30),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("2 accepted, 0 rejected"), "{printed}");

    let mixed = dir.path().join("mixed.csv");
    std::fs::write(
        &mixed,
        "serial,mac,model\nC3,00:11:22:33:66:03,312-a2\nC4,not-a-mac,312-a2\n",
    )
    .expect("write");
    let out = run(
        telemark().args([
            "import",
            "devices",
            mixed.to_str().expect("path"),
            "--data",
            data.to_str().expect("path"),
        ]),
        Duration::from_secs(30),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        printed.contains("0 accepted, 1 rejected") && printed.contains("line 3:"),
        "{printed}"
    );
}

#[test]
fn devices_log_in_with_a_certificate_from_the_platform_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_file, cert, key) = test_server_certificates(dir.path());
    let (http_port, mqtt_port, tls_port) = (free_port(), free_port(), free_port());
    let data = dir.path().join("data");
    let mut child = telemark()
        .args(["serve", "--data", data.to_str().expect("path")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")])
        .args(["--mqtt-tls", &format!("127.0.0.1:{tls_port}")])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("telemark serve starts");
    wait_for_port(http_port);
    wait_for_port(tls_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let device_id = register_device(http_port, &bearer, "SN1", "00:11:22:33:44:55");
    let (status, body) = http(
        http_port,
        "POST",
        &format!("/api/v1/devices/{device_id}/certificate"),
        &auth,
        "{}",
    );
    assert_eq!(status, 201, "{body}");
    let issued: serde_json::Value = serde_json::from_str(&body).expect("json");
    let write = |name: &str, key: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, issued[key].as_str().expect("pem")).expect("write");
        path.to_str().expect("path").to_owned()
    };
    let device_cert = write("device.crt", "certificate_pem");
    let device_key = write("device.key", "private_key_pem");
    let mac = "00-11-22-33-44-55";
    let with_certificate = [
        "--cafile",
        ca_file.as_str(),
        "--cert",
        device_cert.as_str(),
        "--key",
        device_key.as_str(),
        "-u",
        mac,
        "-i",
        mac,
    ];
    let admin = ["-u", "admin", "-P", "first-admin-secret"];
    let watcher = sub(mqtt_port, "dwr/311-a1/+/hardware/#", 1, &admin);
    settle();
    let out = pub_msg(
        tls_port,
        &format!("dwr/311-a1/{mac}/hardware/loadavg"),
        "1.5",
        &[&with_certificate[..], &["-q", "1"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        finish(watcher).trim(),
        format!("dwr/311-a1/{mac}/hardware/loadavg 1.5")
    );
    // The same user name over TLS without the certificate (and no secret) is refused.
    let out = pub_msg(
        tls_port,
        &format!("dwr/311-a1/{mac}/hardware/loadavg"),
        "1.5",
        &["--cafile", ca_file.as_str(), "-u", mac],
    );
    assert!(!out.status.success(), "no certificate, no entry");
    // The device CA is what the listener trusts, and the API shows it.
    let (status, body) = http(http_port, "GET", "/api/v1/device-ca", &auth, "");
    assert_eq!(status, 200, "{body}");
    let ca: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ca["certificate_pem"], issued["ca_pem"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_agent_fills_the_black_box_and_buffers_across_a_platform_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut platform = start_platform(&data, http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let device_id = register_device(http_port, &bearer, "AG1", "00:11:22:33:55:01");
    let (_, body) = http(
        http_port,
        "POST",
        &format!("/api/v1/devices/{device_id}/credentials"),
        &auth,
        "",
    );
    let secret = json_string(&body, "password");
    let mac = "00-11-22-33-55-01";
    std::fs::write(dir.path().join("release"), "VERSION_ID=\"7.4.1\"\n").expect("release");
    let syslog = dir.path().join("messages");
    std::fs::write(&syslog, "").expect("log");
    let provisioning = dir.path().join("agent.toml");
    std::fs::write(
        &provisioning,
        format!(
            "broker = \"mqtt://127.0.0.1:{mqtt_port}\"\ndevice_id = \"{mac}\"\nmodel = \"311-a1\"\n\
             secret = \"{secret}\"\nbuffer_dir = \"{}\"\nfirmware_file = \"{}\"\nlog_file = \"{}\"\n\
             [intervals]\nhardware = 1\nnetwork = 1\nuptime = 1\nlogs = 1\n",
            dir.path().join("buffer").display(),
            dir.path().join("release").display(),
            syslog.display()
        ),
    )
    .expect("provisioning");
    let mut agent = telemark()
        .args(["agent", "--config", provisioning.to_str().expect("path")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let metrics = |port: u16| {
        let (_, body) = http(
            port,
            "GET",
            &format!("/api/v1/devices/{device_id}/metrics"),
            &auth,
            "",
        );
        body
    };
    assert!(
        eventually(20, || metrics(http_port).contains("memory.used_percent")
            && metrics(http_port).contains("cpu.usage_percent")),
        "the agent's readings reach the store: {}",
        metrics(http_port)
    );
    let (_, device) = http(
        http_port,
        "GET",
        &format!("/api/v1/devices/{device_id}"),
        &auth,
        "",
    );
    assert!(
        device.contains("\"firmware_version\":\"7.4.1\""),
        "{device}"
    );
    assert!(device.contains("\"online\":true"), "{device}");
    // A log line written on the device lands in its black box, searchable.
    std::fs::write(&syslog, "kernel: wwan0: link up, 150 Mbit/s\n").expect("log");
    assert!(
        eventually(15, || http(
            http_port,
            "GET",
            &format!("/api/v1/devices/{device_id}/logs?search=link%20up"),
            &auth,
            ""
        )
        .1
        .contains("wwan0: link up")),
        "syslog line stored"
    );
    // A malformed message on the device's topic is counted, not fatal.
    let admin = ["-u", "admin", "-P", "first-admin-secret"];
    let out = pub_msg(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/hardware/memory"),
        "{\"v\":1,\"ts\":1,\"free\":\"lots\"}",
        &admin,
    );
    assert!(out.status.success());
    assert!(
        eventually(10, || http(
            http_port,
            "GET",
            &format!("/api/v1/devices/{device_id}/telemetry-faults"),
            &auth,
            ""
        )
        .1
        .contains("\"count\":1")),
        "the fault is counted"
    );

    // Operators watch the ingest on /metrics, with their token; nobody else.
    let (status, _) = http(http_port, "GET", "/metrics", &[], "");
    assert_eq!(status, 401);
    let (_, metrics) = http(
        http_port,
        "GET",
        "/metrics",
        &[("Authorization", bearer.as_str())],
        "",
    );
    let stored: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telemark_ingest_readings_stored_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(stored > 0, "{metrics}");
    // The agent's QoS 1 readings were acknowledged after they were written.
    let released: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telemark_ingest_acknowledgements_released_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(released > 0, "{metrics}");
    assert!(
        metrics.contains("telemark_ingest_acknowledgements_lost_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("telemark_ingest_rejected_total 1"),
        "{metrics}"
    );

    // The platform goes away for a few seconds; the agent keeps its
    // readings and sends them when it is back.
    drop(platform);
    let outage_start = now_ms();
    std::thread::sleep(Duration::from_secs(4));
    let outage_end = now_ms();
    platform = start_platform(&data, http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let auth = [("Authorization", bearer.as_str())];
    let in_outage = || {
        let (_, body) = http(
            http_port,
            "GET",
            &format!(
                "/api/v1/devices/{device_id}/metrics/memory.used_percent?from={outage_start}&to={outage_end}&step=1000"
            ),
            &auth,
            "",
        );
        let series: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        series["points"].as_array().map_or(0, Vec::len)
    };
    assert!(
        eventually(30, || in_outage() >= 2),
        "readings taken while the platform was down arrive after it is back ({} found)",
        in_outage()
    );
    let _ = agent.kill();
    let _ = agent.wait();
    drop(platform);
}

#[test]
fn demo_starts_a_platform_with_a_live_simulated_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut child = KilledOnDrop(Some(
        telemark()
            .args([
                "demo",
                "--devices",
                "12",
                "--data",
                dir.path().to_str().expect("path"),
            ])
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")])
            .env("TELEMARK_ADMIN_PASSWORD", "demo-admin-secret")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("telemark demo starts"),
    ));
    wait_for_port(http_port);
    let bearer = api_login(http_port, "admin", "demo-admin-secret");
    let auth = [("Authorization", bearer.as_str())];
    let stats = || http(http_port, "GET", "/api/v1/statistics", &auth, "").1;
    assert!(
        // Generous: the other suites share the two cores.
        eventually(40, || stats().contains("\"online_devices\":{\"value\":12")),
        "every simulated device comes online: {}",
        stats()
    );
    let stats: serde_json::Value = serde_json::from_str(&stats()).expect("json");
    assert_eq!(stats["devices"]["value"], 12);
    assert_eq!(stats["system_integrators"]["value"], 2);
    assert_eq!(stats["business_customers"]["value"], 3);
    assert_eq!(stats["license_keys"]["value"], 20);
    let (_, rules) = http(http_port, "GET", "/api/v1/alarm-rules", &auth, "");
    let rules: serde_json::Value = serde_json::from_str(&rules).expect("json");
    assert_eq!(rules.as_array().map(Vec::len), Some(3));
    assert!(
        eventually(20, || http(
            http_port,
            "GET",
            "/api/v1/devices/1/metrics",
            &auth,
            ""
        )
        .1
        .contains("lte.rsrp_dbm")),
        "readings of the fleet are stored"
    );
    // The demo opens with one finished job and one rolling out.
    let jobs = || -> serde_json::Value {
        serde_json::from_str(&http(http_port, "GET", "/api/v1/jobs", &auth, "").1).expect("json")
    };
    assert!(
        eventually(30, || {
            let jobs = jobs();
            let states: Vec<&str> = jobs
                .as_array()
                .map(|l| l.iter().filter_map(|j| j["state"].as_str()).collect())
                .unwrap_or_default();
            states.contains(&"finished") && states.contains(&"running")
        }),
        "{}",
        jobs()
    );
    let mut child = child.0.take().expect("still running");
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("Demo fleet: 12 simulated devices"),
        "{printed}"
    );
}

#[test]
fn sim_drives_devices_from_a_fleet_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let bearer = api_login(http_port, "admin", "first-admin-secret");
    let auth = [("Authorization", bearer.as_str())];
    let mut fleet = String::from("device_id,model,secret\n");
    for (serial, mac) in [("SIM1", "00:11:22:33:66:01"), ("SIM2", "00:11:22:33:66:02")] {
        let id = register_device(http_port, &bearer, serial, mac);
        let (_, body) = http(
            http_port,
            "POST",
            &format!("/api/v1/devices/{id}/credentials"),
            &auth,
            "",
        );
        fleet.push_str(&format!(
            "{},311-a1,{}\n",
            json_string(&body, "username"),
            json_string(&body, "password")
        ));
    }
    let fleet_file = dir.path().join("fleet.csv");
    std::fs::write(&fleet_file, fleet).expect("fleet");
    let sim = telemark()
        .args(["sim", "--fleet", fleet_file.to_str().expect("path")])
        .args([
            "--broker",
            &format!("mqtt://127.0.0.1:{mqtt_port}"),
            "--interval",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim starts");
    let online = || http(http_port, "GET", "/api/v1/statistics", &auth, "").1;
    assert!(
        eventually(15, || online().contains("\"online_devices\":{\"value\":2")),
        "both simulated devices connect with their own credentials: {}",
        online()
    );
    assert!(
        eventually(15, || http(
            http_port,
            "GET",
            "/api/v1/devices/2/metrics",
            &auth,
            ""
        )
        .1
        .contains("cpu.usage_percent")),
        "their readings are stored"
    );
    // SIGTERM: the fleet says goodbye and the totals are printed.
    let _ = Command::new("kill")
        .args(["-TERM", &sim.id().to_string()])
        .status();
    let out = sim.wait_with_output().expect("sim output");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("simulating 2 devices"), "{printed}");
    assert!(
        printed.contains("sent ") && printed.contains(" readings"),
        "{printed}"
    );
    // The fleet waits for its acknowledgements before it says goodbye:
    // every reading sent was acknowledged.
    let words: Vec<&str> = printed.split([' ', ',', '\n']).collect();
    let before = |word: &str, back: usize| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|at| words.get(at.checked_sub(back)?))
            .copied()
    };
    assert_eq!(
        before("readings", 1),
        before("acknowledged", 3),
        "{printed}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn the_broker_sizes_its_descriptor_table_before_its_threads_start() {
    // Grown later, with threads running, each doubling waits for an RCU
    // grace period: a connect stalled 11-22 ms at the 256th, 512th, …
    let broker = start(&[]);
    let proc_file = |name: &str| {
        std::fs::read_to_string(format!("/proc/{}/{name}", broker.child.id())).expect("/proc")
    };
    let fd_size: u64 = proc_file("status")
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("FDSize in /proc/PID/status");
    let open_files: u64 = proc_file("limits")
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Max open files in /proc/PID/limits");
    assert!(
        fd_size >= open_files.min(131_072),
        "descriptor table of {fd_size} slots, open file limit {open_files}"
    );
}
