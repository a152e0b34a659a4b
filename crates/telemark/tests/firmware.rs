//! Firmware over the air end to end: `telemark serve`'s repository
//! (streaming upload, signing, Range downloads) and campaigns over
//! `telemark sim` devices that really download the image, driven through
//! the API as a user would, and attacked as a device owner or a stranger
//! would.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn get_with(port: u16, path: &str, bearer: &str, extra: &str) -> (u16, String, Vec<u8>) {
    exchange(
        port,
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {bearer}\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
}

fn image_bytes(seed: &str, size: usize) -> Vec<u8> {
    seed.bytes().cycle().take(size).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_repository_keeps_signs_and_serves_images_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&data, http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    register_device(http_port, &api.bearer, "FW-REPO-1", "00:11:22:44:01:01");
    let model = model_id(&api);
    let image = image_bytes("telemark router image 2.2.0\n", 300_000);

    let (status, kept) = upload(
        http_port,
        &api.bearer,
        &format!(
            "version=2.2.0&model_ids={model}&min_version=1.0.0&notes=LTE%20fixes&file_name=router-2.2.0.swu"
        ),
        &image,
    );
    assert_eq!(status, 201, "{kept}");
    assert_eq!(kept["sha256"], sha256_hex(&image));
    assert_eq!(kept["size"], image.len());
    assert_eq!(kept["md5"].as_str().map(str::len), Some(32));
    assert_eq!(kept["sha1"].as_str().map(str::len), Some(40));
    // Signed by the platform's key, the one devices trust.
    let public_key = api.get("/api/v1/license/public-key")["public_key"].clone();
    assert_eq!(kept["signed_by"], public_key);
    let image_id = kept["id"].as_i64().expect("id");
    let firmware_dir = data.join("firmware");
    assert_eq!(
        files_in(&firmware_dir),
        vec![format!("{}.bin", sha256_hex(&image))]
    );

    // The same version for the same model again: refused, nothing new kept.
    let (status, body) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.2.0&model_ids={model}"),
        &image_bytes("another build\n", 1000),
    );
    assert_eq!(status, 409, "{body}");
    // A detached signature that does not hold: refused, nothing kept.
    let forged = "A".repeat(86);
    let (status, body) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.3.0&model_ids={model}&signature={forged}"),
        &image_bytes("tampered\n", 5000),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("signature"),
        "{body}"
    );
    // Not a version, no model, an unknown model: refused before a byte is read.
    for query in [
        format!("version=two&model_ids={model}"),
        "version=2.3.0&model_ids=".to_owned(),
        "version=2.3.0&model_ids=999".to_owned(),
        format!("version=2.3.0&model_ids={model}&file_name=../../etc/passwd"),
    ] {
        let (status, body) = upload(http_port, &api.bearer, &query, b"x");
        assert_eq!(status, 400, "{query}: {body}");
    }
    // An upload cut off halfway leaves nothing behind.
    let mut stream = TcpStream::connect(("127.0.0.1", http_port)).expect("connect");
    stream
        .write_all(
            format!(
                "POST /api/v1/firmware?version=2.4.0&model_ids={model} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Length: 100000\r\n\r\n",
                api.bearer
            )
            .as_bytes(),
        )
        .expect("head");
    stream.write_all(&[b'x'; 40_000]).expect("half");
    drop(stream);
    assert!(
        eventually(10, || files_in(&firmware_dir).len() == 1),
        "{:?}",
        files_in(&firmware_dir)
    );
    assert_eq!(
        api.get("/api/v1/firmware").as_array().map(Vec::len),
        Some(1)
    );

    // Images are shared downwards only: an integrator sees the operator's
    // image and its own, never a sibling integrator's; an engineer uploads
    // nothing.
    let operator = own_organisation(http_port, &api.bearer);
    let mut logins: Vec<(Api, i64)> = Vec::new();
    for (name, role) in [
        ("north", "integrator-admin"),
        ("south", "integrator-admin"),
        ("tech", "engineer"),
    ] {
        let org = if name == "tech" {
            logins[0].1
        } else {
            let (status, org) = api.call(
                "POST",
                "/api/v1/organisations",
                &json!({"parent_id": operator, "name": format!("{name} integrator")}),
            );
            assert_eq!(status, 201, "{org}");
            org["id"].as_i64().expect("id")
        };
        let (status, user) = api.call(
            "POST",
            "/api/v1/users",
            &json!({"organisation_id": org, "username": name, "password": "a long enough secret", "role": role}),
        );
        assert_eq!(status, 201, "{user}");
        logins.push((Api::login(http_port, name, "a long enough secret"), org));
    }
    let (north, south, tech) = (&logins[0].0, &logins[1].0, &logins[2].0);
    let (status, own) = upload(
        http_port,
        &north.bearer,
        &format!("version=3.0.0-north.1&model_ids={model}"),
        &image_bytes("north build\n", 2000),
    );
    assert_eq!(status, 201, "{own}");
    let visible = |who: &Api| -> Vec<i64> {
        who.get("/api/v1/firmware")
            .as_array()
            .expect("images")
            .iter()
            .filter_map(|i| i["id"].as_i64())
            .collect()
    };
    let north_image = own["id"].as_i64().expect("id");
    assert_eq!(visible(north), vec![north_image, image_id]);
    assert_eq!(visible(south), vec![image_id]);
    let (status, _) = south.call(
        "GET",
        &format!("/api/v1/firmware/{north_image}"),
        &Value::Null,
    );
    assert_eq!(status, 404);
    let (status, _, _) = get_with(
        http_port,
        &format!("/api/v1/firmware/{north_image}/file"),
        &south.bearer,
        "",
    );
    assert_eq!(status, 404);
    // The operator's image is used below, never deleted from below.
    let (status, body) = north.call(
        "DELETE",
        &format!("/api/v1/firmware/{image_id}"),
        &Value::Null,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = upload(
        http_port,
        &tech.bearer,
        &format!("version=3.0.1&model_ids={model}"),
        b"engineer build",
    );
    assert_eq!(status, 403, "{body}");

    // Downloads answer Range requests (resume) and If-Range.
    let path = format!("/api/v1/firmware/{image_id}/file");
    let (status, head, body) = get_with(http_port, &path, &api.bearer, "");
    assert_eq!(status, 200);
    assert_eq!(body, image);
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let etag = format!("\"{}\"", sha256_hex(&image));
    let (status, head, body) = get_with(http_port, &path, &api.bearer, "Range: bytes=100000-\r\n");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, &image[100_000..]);
    assert!(
        head.contains(&format!(
            "content-range: bytes 100000-299999/{}",
            image.len()
        )),
        "{head}"
    );
    let (status, _, body) = get_with(
        http_port,
        &path,
        &api.bearer,
        &format!("Range: bytes=10-19\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((status, body.as_slice()), (206, &image[10..20]));
    // A client holding another build's bytes gets the whole new image.
    let (status, _, body) = get_with(
        http_port,
        &path,
        &api.bearer,
        "Range: bytes=10-19\r\nIf-Range: \"0000\"\r\n",
    );
    assert_eq!((status, body.len()), (200, image.len()));
    let (status, head, _) = get_with(http_port, &path, &api.bearer, "Range: bytes=400000-\r\n");
    assert_eq!(status, 416);
    assert!(
        head.contains(&format!("content-range: bytes */{}", image.len())),
        "{head}"
    );

    // A stranger without a session, and made-up or edited device tokens,
    // get nothing.
    let (status, _, _) = get_with(http_port, &path, "Bearer nope", "");
    assert_eq!(status, 401);
    for token in [
        "1.1.9999999999999.AAAA".to_owned(),
        format!("{image_id}.1.9999999999999.{}", "A".repeat(43)),
        "../../firmware".to_owned(),
    ] {
        let (status, _, body) = get_with(
            http_port,
            &format!("/api/v1/firmware-downloads/{token}"),
            "",
            "",
        );
        assert_eq!(status, 404, "{token}: {}", String::from_utf8_lossy(&body));
    }
}

fn wait_campaign(api: &Api, id: i64, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let reached = eventually(secs, || {
        last = api.get(&format!("/api/v1/campaigns/{id}"));
        done(&last)
    });
    if !reached {
        let devices = api.get(&format!("/api/v1/campaigns/{id}/devices?limit=100"));
        let unusual: Vec<&Value> = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["stage"] != "succeeded" && d["stage"] != "pending")
            .collect();
        panic!("campaign {id}: {last}\ndevices neither pending nor succeeded: {unusual:?}");
    }
    last
}

#[test]
fn campaigns_roll_out_in_waves_and_stop_themselves_when_devices_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let public_key = api.get("/api/v1/license/public-key")["public_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (healthy_fleet, healthy) = fleet_file(&api, dir.path(), 20, 0x91);
    let (failing_fleet, failing) = fleet_file(&api, dir.path(), 10, 0x92);
    // `=`: a base64url key may begin with "-", which would read as a flag.
    let key_arg = format!("--license-public-key={public_key}");
    let _healthy = start_sim(&healthy_fleet, mqtt_port, &[&key_arg]);
    let _failing = start_sim(
        &failing_fleet,
        mqtt_port,
        &[&key_arg, "--fota-failure", "1"],
    );
    assert!(
        eventually(60, || healthy
            .iter()
            .chain(&failing)
            .all(|d| online(&api, *d))),
        "the fleets connect"
    );
    // Targeting reads the version each device reported.
    assert!(
        eventually(30, || healthy.iter().chain(&failing).all(|d| {
            api.get(&format!("/api/v1/devices/{d}"))["firmware_version"] == "1.0.0"
        })),
        "the fleets report their firmware"
    );
    let model = model_id(&api);
    let image = image_bytes("telemark router image 2.2.0\n", 200_000);
    let (status, kept) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.2.0&model_ids={model}"),
        &image,
    );
    assert_eq!(status, 201, "{kept}");
    let image_id = kept["id"].as_i64().expect("id");

    // The preview says what a campaign would touch before anything runs.
    let mut request = json!({
        "name": "spring rollout",
        "image_id": image_id,
        "filter": {"label": null},
        "waves": [
            {"device_ids": healthy[..2], "soak_secs": 0},
            {"percent": 50, "soak_secs": 1},
            {"percent": 100, "soak_secs": 0}
        ],
        "health_secs": 6,
        "failure_threshold": 0.3,
        "min_finished": 4,
    });
    let (status, preview) = api.call("POST", "/api/v1/campaigns/preview", &request);
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["targeted"], 30, "{preview}");
    assert_eq!(preview["wave_sizes"], json!([2, 14, 14]), "{preview}");
    // The healthy fleet alone: label them first.
    let (status, body) = api.call(
        "POST",
        "/api/v1/devices/labels",
        &json!({"device_ids": healthy, "add": ["pilot"]}),
    );
    assert!(status == 200 || status == 204, "{body}");
    request["filter"] = json!({"label": "pilot"});
    request["waves"][1]["percent"] = json!(50);
    let (status, campaign) = api.call("POST", "/api/v1/campaigns", &request);
    assert_eq!(status, 201, "{campaign}");
    let id = campaign["id"].as_i64().expect("id");
    assert_eq!(
        campaign["waves"]
            .as_array()
            .map(|w| w.iter().map(|w| w["size"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(2), json!(9), json!(9)]),
        "{campaign}"
    );
    // A device of a running campaign is in no second one.
    let (status, body) = api.call("POST", "/api/v1/campaigns", &request);
    assert_eq!(status, 400, "{body}");
    let done = wait_campaign(&api, id, 120, |c| c["state"] == "finished");
    assert_eq!(done["counts"], json!({"succeeded": 20}), "{done}");
    assert!(
        done["waves"]
            .as_array()
            .expect("waves")
            .iter()
            .all(|w| w["state"] == "done"),
        "{done}"
    );
    for device in &healthy {
        let d = api.get(&format!("/api/v1/devices/{device}"));
        assert_eq!(d["firmware_version"], "2.2.0", "{d}");
    }
    let history = api.get(&format!("/api/v1/devices/{}/firmware", healthy[0]));
    assert_eq!(history[0]["state"], "succeeded", "{history}");
    assert_eq!(history[0]["from_version"], "1.0.0", "{history}");
    // The image is in use: it stays.
    let (status, body) = api.call(
        "DELETE",
        &format!("/api/v1/firmware/{image_id}"),
        &Value::Null,
    );
    assert_eq!(status, 409, "{body}");

    // The failing fleet: every first boot fails or the install does; the
    // campaign pauses itself once four devices finished, then an abort
    // skips the rest.
    let mut request = json!({
        "name": "risky build",
        "image_id": image_id,
        "waves": [{"percent": 100}],
        "health_secs": 0,
        "failure_threshold": 0.3,
        "min_finished": 4,
    });
    request["filter"] = json!({"current_version": "1.0.0"});
    let (status, risky) = api.call("POST", "/api/v1/campaigns", &request);
    assert_eq!(status, 201, "{risky}");
    let risky_id = risky["id"].as_i64().expect("id");
    let paused = wait_campaign(&api, risky_id, 90, |c| c["state"] == "paused");
    assert!(
        paused["state_reason"]
            .as_str()
            .unwrap_or("")
            .contains("above the threshold"),
        "{paused}"
    );
    let devices = api.get(&format!("/api/v1/campaigns/{risky_id}/devices?limit=100"));
    let devices = devices.as_array().expect("devices");
    assert_eq!(devices.len(), 10);
    let failed: Vec<&Value> = devices
        .iter()
        .filter(|d| d["stage"] == "failed" || d["stage"] == "rolled_back")
        .collect();
    assert!(failed.len() >= 4, "{devices:?}");
    assert!(
        failed
            .iter()
            .all(|d| d["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{devices:?}"
    );
    let (status, aborted) = api.call(
        "POST",
        &format!("/api/v1/campaigns/{risky_id}/abort"),
        &Value::Null,
    );
    assert_eq!(status, 200, "{aborted}");
    let (status, body) = api.call(
        "POST",
        &format!("/api/v1/campaigns/{risky_id}/resume"),
        &Value::Null,
    );
    assert_eq!(status, 409, "{body}");
    let closed = wait_campaign(&api, risky_id, 60, |c| c["finished_at"].is_i64());
    assert_eq!(closed["state"], "aborted");
    let counts = closed["counts"].as_object().expect("counts");
    assert_eq!(
        counts.values().filter_map(Value::as_i64).sum::<i64>(),
        10,
        "{closed}"
    );
    assert!(
        counts
            .keys()
            .all(|k| ["failed", "rolled_back", "skipped"].contains(&k.as_str())),
        "{closed}"
    );
    for device in &failing {
        let d = api.get(&format!("/api/v1/devices/{device}"));
        assert_eq!(
            d["firmware_version"], "1.0.0",
            "a failed update leaves the old version: {d}"
        );
    }
}

/// `telemark agent` under a test-made "supervisor": started again when its
/// reboot hook killed it, as systemd would after the device came back.
struct SupervisedAgent {
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    child: std::process::Child,
}

impl SupervisedAgent {
    fn start(config: &Path, log: &Path) -> SupervisedAgent {
        let child = Self::spawn(config, log);
        SupervisedAgent {
            config: config.to_owned(),
            log: log.to_owned(),
            child,
        }
    }

    fn spawn(config: &Path, log: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        telemark()
            .args(["agent", "--config", config.to_str().expect("path")])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts")
    }

    /// Starts the agent again if it is gone; true while it runs.
    fn keep_up(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.child = Self::spawn(&self.config, &self.log);
            return false;
        }
        true
    }

    fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's log without its colours.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        plain
    }
}

impl Drop for SupervisedAgent {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A device with two slots, as files: the install hook writes slot b and
/// asks for it on the next boot, the reboot hook "boots" the slot asked
/// for (its first line becomes os-release) with a new boot id, the check
/// fails while `unhealthy` exists, the rollback asks for slot a again.
fn ab_device(dir: &Path, mqtt_port: u16, mac: &str, secret: &str, key: &str) -> std::path::PathBuf {
    let d = dir.display();
    std::fs::write(dir.join("os-release"), "VERSION_ID=1.0.0\n").expect("os-release");
    std::fs::write(dir.join("slot_a.release"), "VERSION_ID=1.0.0\n").expect("slot a");
    std::fs::write(dir.join("next"), "a\n").expect("next");
    std::fs::write(
        dir.join("boot_id"),
        "11111111-0000-0000-0000-000000000001\n",
    )
    .expect("boot");
    let script = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}")).expect("script");
        path.display().to_string()
    };
    let install = script(
        "install.sh",
        format!(
            "cp \"$1\" {d}/slot_b.img\nhead -n 1 \"$1\" > {d}/slot_b.release\n\
             cp {d}/os-release {d}/slot_a.release\necho b > {d}/next\necho install >> {d}/hooks\n"
        ),
    );
    let reboot = script(
        "reboot.sh",
        format!(
            "cat /proc/sys/kernel/random/uuid > {d}/boot_id\n\
             cp {d}/slot_$(cat {d}/next).release {d}/os-release\necho reboot >> {d}/hooks\nkill -9 $PPID\n"
        ),
    );
    let check = script("check.sh", format!("test ! -f {d}/unhealthy\n"));
    let confirm = script("confirm.sh", format!("echo confirm >> {d}/hooks\n"));
    let rollback = script(
        "rollback.sh",
        format!("echo a > {d}/next\necho rollback >> {d}/hooks\n"),
    );
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "broker = \"mqtt://127.0.0.1:{mqtt_port}\"\ndevice_id = \"{mac}\"\nmodel = \"311-a1\"\n\
             secret = \"{secret}\"\nbuffer_dir = \"{d}/buffer\"\nfirmware_file = \"{d}/os-release\"\n\
             [intervals]\nhardware = 1\n\
             [tasks]\nreboot_command = [\"sh\", \"{reboot}\"]\nlicense_public_key = \"{key}\"\n\
             boot_id_file = \"{d}/boot_id\"\n\
             [firmware]\nstate_dir = \"{d}/fw\"\ninstall_command = [\"sh\", \"{install}\"]\n\
             check_command = [\"sh\", \"{check}\"]\nconfirm_command = [\"sh\", \"{confirm}\"]\n\
             rollback_command = [\"sh\", \"{rollback}\"]\n"
        ),
    )
    .expect("provisioning");
    path
}

/// An image whose first line is the os-release it boots into.
fn bootable_image(version: &str, size: usize) -> Vec<u8> {
    let mut image = format!("VERSION_ID={version}\n").into_bytes();
    let mut x = 0x2545_f491_u32;
    while image.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image.push((x >> 24) as u8);
    }
    image
}

#[test]
fn the_agent_resumes_verifies_installs_confirms_and_rolls_back_an_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let key = api.get("/api/v1/license/public-key")["public_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let device = register_device(http_port, &api.bearer, "AB1", "00:11:22:33:ab:01");
    let secret = secret_for(&api, device);
    let home = dir.path().join("device");
    std::fs::create_dir_all(&home).expect("device dir");
    let config = ab_device(&home, mqtt_port, "00-11-22-33-ab-01", &secret, &key);
    let mut agent = SupervisedAgent::start(&config, &dir.path().join("agent.log"));
    assert!(
        eventually(30, || agent.keep_up()
            && api.get(&format!("/api/v1/devices/{device}"))["firmware_version"]
                == "1.0.0"),
        "the agent reports 1.0.0"
    );
    let model = model_id(&api);
    let image = bootable_image("2.0.0", 1_200_000);
    let (status, kept) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.0.0&model_ids={model}"),
        &image,
    );
    assert_eq!(status, 201, "{kept}");
    let campaign = |name: &str, image: &Value| {
        let (status, c) = api.call(
            "POST",
            "/api/v1/campaigns",
            &json!({
                "name": name,
                "image_id": image["id"],
                "waves": [{"device_ids": [device], "soak_secs": 0}],
                "health_secs": 4,
                "min_finished": 1,
                "failure_threshold": 1.0,
                // About four seconds for the image: time to cut it off.
                "max_bytes_per_sec": 300_000,
            }),
        );
        assert_eq!(status, 201, "{c}");
        c["id"].as_i64().expect("id")
    };
    let first = campaign("agent rollout", &kept);

    // The agent dies mid-download; started again it asks for the rest only.
    let part = home.join("fw/image.part");
    assert!(
        eventually(30, || std::fs::metadata(&part)
            .is_ok_and(|m| m.len() > 200_000)),
        "the download starts: {}",
        agent.log()
    );
    agent.crash();
    let cut = std::fs::metadata(&part).expect("part").len();
    assert!(cut < image.len() as u64, "cut off at {cut}");
    agent.keep_up();
    let done = {
        let mut last = Value::Null;
        let finished = eventually(90, || {
            agent.keep_up();
            last = api.get(&format!("/api/v1/campaigns/{first}"));
            last["state"] == "finished"
        });
        assert!(finished, "{last}\n{}", agent.log());
        last
    };
    assert_eq!(done["counts"], json!({"succeeded": 1}), "{done}");
    let log = agent.log();
    assert!(
        log.contains(&format!("resuming the firmware download from={cut}")),
        "the second run resumed at byte {cut}: {log}"
    );
    assert_eq!(
        std::fs::read(home.join("slot_b.img")).expect("slot b"),
        image,
        "the slot holds the image, byte for byte"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("hooks")).expect("hooks"),
        "install\nreboot\nconfirm\n"
    );
    assert!(!part.exists(), "no copy is left in the state directory");
    let history = api.get(&format!("/api/v1/devices/{device}/firmware"));
    assert_eq!(history[0]["state"], "succeeded", "{history}");
    assert_eq!(history[0]["from_version"], "1.0.0", "{history}");
    assert!(eventually(10, || {
        api.get(&format!("/api/v1/devices/{device}"))["firmware_version"] == "2.0.0"
    }));

    // A new image that fails its first-boot check: the agent switches back
    // and reboots again; the campaign counts the device rolled back.
    std::fs::write(home.join("unhealthy"), "").expect("unhealthy");
    std::fs::write(home.join("hooks"), "").expect("hooks");
    let bad = bootable_image("2.1.0", 300_000);
    let (status, bad_image) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.1.0&model_ids={model}"),
        &bad,
    );
    assert_eq!(status, 201, "{bad_image}");
    let second = campaign("bad build", &bad_image);
    // Its one wave fell short of its success ratio: the campaign waits for
    // a user, who resumes it, accepting the failure; it finishes.
    let mut last = Value::Null;
    assert!(
        eventually(90, || {
            agent.keep_up();
            last = api.get(&format!("/api/v1/campaigns/{second}"));
            last["state"] == "paused"
        }),
        "{last}\n{}",
        agent.log()
    );
    assert_eq!(last["counts"], json!({"rolled_back": 1}), "{last}");
    let (status, body) = api.call(
        "POST",
        &format!("/api/v1/campaigns/{second}/resume"),
        &Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    let closed = wait_campaign(&api, second, 30, |c| c["finished_at"].is_i64());
    assert_eq!(closed["state"], "finished", "{closed}");
    let devices = api.get(&format!("/api/v1/campaigns/{second}/devices"));
    assert_eq!(devices[0]["stage"], "rolled_back", "{devices}");
    assert!(
        devices[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("first-boot check")),
        "{devices}"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("hooks")).expect("hooks"),
        "install\nreboot\nrollback\nreboot\n",
        "no confirm of the bad image"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("os-release")).expect("os-release"),
        "VERSION_ID=2.0.0\n"
    );
    assert!(eventually(10, || {
        agent.keep_up();
        api.get(&format!("/api/v1/devices/{device}"))["firmware_version"] == "2.0.0"
    }));

    // An image signed by a key the device does not trust is never
    // installed: the device is provisioned with another platform's key.
    std::fs::remove_file(home.join("unhealthy")).expect("healthy again");
    std::fs::write(home.join("hooks"), "").expect("hooks");
    let stranger_key =
        license::public_key_to_base64(&license::signing_key(&[7u8; 32]).verifying_key());
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace(&key, &stranger_key)).expect("config");
    agent.crash();
    agent.keep_up();
    let third = bootable_image("2.2.0", 100_000);
    let (status, third_image) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.2.0&model_ids={model}"),
        &third,
    );
    assert_eq!(status, 201, "{third_image}");
    let refused = campaign("wrong key", &third_image);
    assert!(
        eventually(60, || {
            agent.keep_up();
            last = api.get(&format!("/api/v1/campaigns/{refused}"));
            last["state"] == "paused"
        }),
        "{last}"
    );
    let devices = api.get(&format!("/api/v1/campaigns/{refused}/devices"));
    assert_eq!(devices[0]["stage"], "failed", "{devices}");
    assert!(
        devices[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("signature refused")),
        "{devices}"
    );
    assert!(
        !home.join("hooks").exists()
            || std::fs::read_to_string(home.join("hooks"))
                .expect("hooks")
                .is_empty(),
        "nothing was installed"
    );
}

#[test]
fn the_command_line_uploads_an_image_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    register_device(http_port, &api.bearer, "CLI1", "00:11:22:33:c1:01");
    let image = image_bytes(
        "telemark router image 3.0.0 from the build machine\n",
        3_000_000,
    );
    let file = dir.path().join("router-3.0.0.img");
    std::fs::write(&file, &image).expect("image");
    let token = api.bearer.trim_start_matches("Bearer ").to_owned();
    let url = format!("http://127.0.0.1:{http_port}");
    let out = run(
        telemark()
            .args(["firmware", "upload"])
            .arg(&file)
            .args([
                "--version",
                "3.0.0",
                "--model",
                "311-a1",
                "--notes",
                "spring build",
            ])
            .args(["--url", &url])
            .env("TELEMARK_TOKEN", &token),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&sha256_hex(&image)), "{said}");
    let listed = api.get("/api/v1/firmware");
    let kept = &listed[0];
    assert_eq!(kept["version"], "3.0.0", "{listed}");
    assert_eq!(kept["file_name"], "router-3.0.0.img");
    assert_eq!(kept["notes"], "spring build");
    assert_eq!(kept["size"], image.len());

    // A model that does not exist is refused before a byte is sent.
    let out = run(
        telemark()
            .args(["firmware", "upload"])
            .arg(&file)
            .args(["--version", "3.0.1", "--model", "no-such-model"])
            .args(["--url", &url])
            .env("TELEMARK_TOKEN", &token),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no device model \"no-such-model\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the platform's own refusal (a version already there) reaches
    // the user with its reason.
    let out = run(
        telemark()
            .args(["firmware", "upload"])
            .arg(&file)
            .args(["--version", "3.0.0", "--model", "311-a1"])
            .args(["--url", &url])
            .env("TELEMARK_TOKEN", &token),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
