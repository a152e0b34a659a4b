//! The hawkBit DDI API with a real client: Debian's `swupdate` in suricatta
//! mode polls `telemark serve`, downloads a `.swu` the test builds, installs
//! it with its rawfile handler into a temporary directory and reports; the
//! campaign shows the device succeeded. Then the API is attacked as a
//! device owner with one token, or a stranger with none, would.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::*;
use serde_json::{Value, json};

/// A `.swu`: a cpio archive in the "new ASCII" format, `sw-description`
/// first, as SWUpdate reads it from a stream.
fn swu(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, data: &[u8], mode: u32) {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (n, (name, data)) in files.iter().enumerate() {
        entry(&mut out, n as u32 + 1, name, data, 0o100644);
    }
    entry(&mut out, 0, "TRAILER!!!", b"", 0);
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A signing certificate for `.swu` images, made with openssl: SWUpdate
/// as Debian builds it installs signed images only (CMS).
fn signing_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join("signing.key"), dir.join("signing.crt"));
    let out = run(
        std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=Telemark test images"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

/// An image that writes `payload` to `target` with SWUpdate's rawfile
/// handler, its sw-description signed with `key` and `cert`.
fn update_image(
    version: &str,
    payload: &[u8],
    target: &Path,
    dir: &Path,
    key: &Path,
    cert: &Path,
) -> Vec<u8> {
    let description = format!(
        "software =\n{{\n  version = \"{version}\";\n  description = \"Telemark test image\";\n  \
         hardware-compatibility: [ \"a1\" ];\n  \
         files: (\n    {{\n      filename = \"payload.bin\";\n      path = \"{}\";\n      \
         sha256 = \"{}\";\n    }}\n  );\n}}\n",
        target.display(),
        sha256_hex(payload)
    );
    let description_file = dir.join("sw-description");
    std::fs::write(&description_file, &description).expect("sw-description");
    let signature_file = dir.join("sw-description.sig");
    let out = run(
        std::process::Command::new("openssl")
            .args(["cms", "-sign", "-outform", "DER", "-nosmimecap", "-binary"])
            .arg("-in")
            .arg(&description_file)
            .arg("-out")
            .arg(&signature_file)
            .arg("-signer")
            .arg(cert)
            .arg("-inkey")
            .arg(key),
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signature = std::fs::read(&signature_file).expect("signature");
    swu(&[
        ("sw-description", description.as_bytes()),
        ("sw-description.sig", &signature),
        ("payload.bin", payload),
    ])
}

/// `swupdate -u "…"`: suricatta polling the platform every second.
fn suricatta(
    dir: &Path,
    cert: &Path,
    port: u16,
    tenant: &str,
    controller: &str,
    token: &str,
    extra: &str,
) -> Child {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("swupdate.log"))
        .expect("log");
    let errors = log.try_clone().expect("log");
    std::process::Command::new("swupdate")
        .arg("-v")
        // The board and revision the image must be compatible with.
        .args(["-H", "dwm-311:a1"])
        .arg("-k")
        .arg(cert)
        .arg("-u")
        .arg(format!(
            "-t {tenant} -u http://127.0.0.1:{port} -i {controller} -k {token} -p 1 -r 3 -w 1 {extra}"
        ))
        // Its IPC sockets go here, not to a /tmp another test shares.
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(errors)
        .spawn()
        .expect("swupdate runs (Debian package swupdate; scripts/test installs it)")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("swupdate.log")).unwrap_or_default()
}

fn ddi(port: u16, method: &str, path: &str, auth: &str, body: &str) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    if !auth.is_empty() {
        headers.push(("Authorization", auth));
    }
    let (status, text) = http(port, method, path, &headers, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

struct Issued {
    token: String,
    tenant: String,
    controller: String,
}

fn target_token(api: &Api, device: i64) -> Issued {
    let (status, body) = api.call(
        "POST",
        &format!("/api/v1/devices/{device}/ddi-token"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{body}");
    Issued {
        token: body["token"].as_str().expect("token").to_owned(),
        tenant: body["tenant"].as_str().expect("tenant").to_owned(),
        controller: body["controller_id"]
            .as_str()
            .expect("controller")
            .to_owned(),
    }
}

#[test]
fn swupdate_takes_part_in_a_campaign_over_the_ddi_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    // Clients are told to poll every second (SWUpdate takes the server's word).
    let _platform = start_platform_with(
        &dir.path().join("data"),
        http_port,
        mqtt_port,
        &[("TELEMARK__FIRMWARE__DDI_POLL_SECS", "1")],
    );
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "DDI1", "00:11:22:33:dd:01");
    let other = register_device(http_port, &api.bearer, "DDI2", "00:11:22:33:dd:02");
    let issued = target_token(&api, device);
    assert_eq!(issued.controller, "00-11-22-33-dd-01");
    let model = model_id(&api);

    let installed: PathBuf = dir.path().join("rootfs/etc/telemark-release");
    std::fs::create_dir_all(installed.parent().expect("parent")).expect("rootfs");
    let payload = b"VERSION_ID=2.0.0\nbuilt by the DDI test\n".repeat(2000);
    let (key, cert) = signing_certificate(dir.path());
    let image = update_image("2.0.0", &payload, &installed, dir.path(), &key, &cert);
    let (status, kept) = upload(
        http_port,
        &api.bearer,
        &format!("version=2.0.0&model_ids={model}&file_name=router-2.0.0.swu"),
        &image,
    );
    assert_eq!(status, 201, "{kept}");
    let (status, campaign) = api.call(
        "POST",
        "/api/v1/campaigns",
        &json!({
            "name": "ddi rollout",
            "image_id": kept["id"],
            "waves": [{"device_ids": [device], "soak_secs": 0}],
            "health_secs": 2,
            "min_finished": 1,
        }),
    );
    assert_eq!(status, 201, "{campaign}");
    let campaign = campaign["id"].as_i64().expect("id");

    // SWUpdate polls, finds the deployment, downloads the artifact (sha1
    // checked), installs it and says so; then it waits to be restarted
    // on the new image, as after a reboot.
    let client = suricatta(
        dir.path(),
        &cert,
        http_port,
        &issued.tenant,
        &issued.controller,
        &issued.token,
        "",
    );
    let stages = |api: &Api| {
        api.get(&format!("/api/v1/campaigns/{campaign}/devices"))[0]["stage"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let reached = eventually(60, || {
        std::fs::read(&installed).is_ok_and(|b| b == payload) && stages(&api) == "installing"
    });
    let execution = api.get(&format!("/api/v1/campaigns/{campaign}/devices"))[0]["execution_id"]
        .as_i64()
        .unwrap_or_default();
    assert!(
        reached,
        "installed: {:?}; stage {}; execution {}\n{}",
        std::fs::metadata(&installed).map(|m| m.len()),
        stages(&api),
        api.get(&format!("/api/v1/executions/{execution}")),
        log(dir.path())
    );
    let during = api.get(&format!("/api/v1/executions/{execution}"));
    assert_eq!(during["state"], "in_progress", "{during}");
    stop(client);

    // "Rebooted" into the new image, the client confirms it (-c 2: the
    // update's test passed) on the action that is still open.
    let client = suricatta(
        dir.path(),
        &cert,
        http_port,
        &issued.tenant,
        &issued.controller,
        &issued.token,
        "-c 2",
    );
    let mut last = Value::Null;
    let finished = eventually(60, || {
        last = api.get(&format!("/api/v1/campaigns/{campaign}"));
        last["state"] == "finished"
    });
    assert!(finished, "{last}\n{}", log(dir.path()));
    assert_eq!(last["counts"], json!({"succeeded": 1}), "{last}");
    let history = api.get(&format!("/api/v1/devices/{device}/firmware"));
    assert_eq!(history[0]["state"], "succeeded", "{history}");
    assert_eq!(
        api.get(&format!("/api/v1/devices/{device}"))["firmware_version"],
        "2.0.0"
    );
    stop(client);

    // The installed base names the action; the artifact answers Range and
    // its .MD5SUM as hawkBit's do.
    let auth = format!("TargetToken {}", issued.token);
    let base = format!("/{}/controller/v1/{}", issued.tenant, issued.controller);
    let (status, poll) = ddi(http_port, "GET", &base, &auth, "");
    assert_eq!(status, 200, "{poll}");
    assert_eq!(poll["config"]["polling"]["sleep"], "00:00:01", "{poll}");
    assert!(poll["_links"]["deploymentBase"].is_null(), "{poll}");
    let href = poll["_links"]["installedBase"]["href"]
        .as_str()
        .expect("installedBase")
        .to_owned();
    let path = href.split_once("127.0.0.1").map(|(_, p)| p).unwrap_or("");
    let path = path.trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
    let (status, installed_base) = ddi(http_port, "GET", path, &auth, "");
    assert_eq!(status, 200, "{installed_base}");
    assert_eq!(installed_base["id"], execution.to_string());
    let artifact = &installed_base["deployment"]["chunks"][0]["artifacts"][0];
    assert_eq!(
        artifact["hashes"]["sha256"],
        sha256_hex(&image),
        "{artifact}"
    );
    assert_eq!(artifact["size"], image.len());
    let file = format!(
        "{base}/softwaremodules/{}/artifacts/router-2.0.0.swu",
        kept["id"]
    );
    let (status, head, body) = exchange(
        http_port,
        format!(
            "GET {file} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {auth}\r\nRange: bytes=10-19\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, image[10..20]);
    let (status, _, body) = exchange(
        http_port,
        format!(
            "GET {file}.MD5SUM HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).ends_with("  router-2.0.0.swu\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Attacks. No token, a made-up one, the right token for another
    // controller or tenant: all the same 401.
    let other_base = format!("/{}/controller/v1/00-11-22-33-dd-02", issued.tenant);
    for (path, auth) in [
        (base.clone(), String::new()),
        (base.clone(), "TargetToken ddit_0000".to_owned()),
        (base.clone(), format!("Bearer {}", issued.token)),
        (other_base.clone(), auth.clone()),
        (
            format!("/999/controller/v1/{}", issued.controller),
            auth.clone(),
        ),
        (
            format!("/x/controller/v1/{}", issued.controller),
            auth.clone(),
        ),
    ] {
        let (status, body) = ddi(http_port, "GET", &path, &auth, "");
        assert_eq!(status, 401, "{path} with {auth:?}: {body}");
    }
    // The other device's owner (its own token) cannot report on, nor
    // fetch, this device's action.
    let stranger = target_token(&api, other);
    let stranger_auth = format!("TargetToken {}", stranger.token);
    let (status, body) = ddi(
        http_port,
        "POST",
        &format!("{other_base}/deploymentBase/{execution}/feedback"),
        &stranger_auth,
        r#"{"status": {"execution": "closed", "result": {"finished": "failure"}}}"#,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = ddi(
        http_port,
        "GET",
        &format!("{other_base}/deploymentBase/{execution}"),
        &stranger_auth,
        "",
    );
    assert_eq!(status, 404, "{body}");
    // Feedback on a closed action changes nothing; malformed feedback is a 400.
    let (status, body) = ddi(
        http_port,
        "POST",
        &format!("{base}/deploymentBase/{execution}/feedback"),
        &auth,
        r#"{"status": {"execution": "closed", "result": {"finished": "failure"}}}"#,
    );
    assert_eq!(status, 409, "{body}");
    for bad in ["{", r#"{"status": {"execution": "closed"}}"#, "[]"] {
        let (status, body) = ddi(
            http_port,
            "POST",
            &format!("{base}/deploymentBase/{execution}/feedback"),
            &auth,
            bad,
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = ddi(
        http_port,
        "GET",
        &format!("{base}/deploymentBase/not-a-number"),
        &auth,
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        api.get(&format!("/api/v1/executions/{execution}"))["state"],
        "succeeded"
    );
    // A new token replaces the old one.
    let renewed = target_token(&api, device);
    let (status, _) = ddi(http_port, "GET", &base, &auth, "");
    assert_eq!(status, 401);
    let (status, _) = ddi(
        http_port,
        "GET",
        &base,
        &format!("TargetToken {}", renewed.token),
        "",
    );
    assert_eq!(status, 200);

    // A gateway token speaks for its organisation's devices, within its
    // tenant only, until it is revoked.
    let organisation = own_organisation(http_port, &api.bearer);
    let (status, gateway) = api.call(
        "POST",
        &format!("/api/v1/organisations/{organisation}/ddi-gateway-token"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{gateway}");
    let gateway_auth = format!("GatewayToken {}", gateway["token"].as_str().expect("token"));
    let (status, body) = ddi(http_port, "GET", &other_base, &gateway_auth, "");
    assert_eq!(status, 200, "{body}");
    let (status, _) = ddi(
        http_port,
        "GET",
        &format!("/{organisation}/controller/v1/00-11-22-33-dd-99"),
        &gateway_auth,
        "",
    );
    assert_eq!(
        status, 401,
        "no such device: the same answer as a bad token"
    );
    let (status, body) = api.call(
        "DELETE",
        &format!("/api/v1/organisations/{organisation}/ddi-gateway-token"),
        &Value::Null,
    );
    assert_eq!(status, 204, "{body}");
    let (status, _) = ddi(http_port, "GET", &other_base, &gateway_auth, "");
    assert_eq!(status, 401);

    // A cancelled action: the client is told with cancelAction (the stop
    // id is the action), acknowledges it, and is not told again.
    let (status, second) = api.call(
        "POST",
        "/api/v1/campaigns",
        &json!({
            "name": "second device",
            "image_id": kept["id"],
            "waves": [{"device_ids": [other], "soak_secs": 0}],
            "min_finished": 1,
        }),
    );
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_i64().expect("id");
    let mut deployment = String::new();
    assert!(
        eventually(20, || {
            let (_, poll) = ddi(http_port, "GET", &other_base, &stranger_auth, "");
            deployment = poll["_links"]["deploymentBase"]["href"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !deployment.is_empty()
        }),
        "the second device is offered its deployment"
    );
    let action: i64 = deployment
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .and_then(|id| id.parse().ok())
        .expect("a numeric action id");
    let (status, body) = ddi(
        http_port,
        "GET",
        &format!("{other_base}/deploymentBase/{action}"),
        &stranger_auth,
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], action.to_string());
    assert_eq!(
        api.get(&format!("/api/v1/executions/{action}"))["state"],
        "sent",
        "fetching the deployment delivers it"
    );
    let (status, body) = api.call(
        "POST",
        &format!("/api/v1/executions/{action}/cancel"),
        &Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    let (_, poll) = ddi(http_port, "GET", &other_base, &stranger_auth, "");
    let cancel = poll["_links"]["cancelAction"]["href"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        cancel.ends_with(&format!("/cancelAction/{action}")),
        "{poll}"
    );
    let (status, body) = ddi(
        http_port,
        "GET",
        &format!("{other_base}/cancelAction/{action}"),
        &stranger_auth,
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelAction"]["stopId"], action.to_string());
    let (status, body) = ddi(
        http_port,
        "POST",
        &format!("{other_base}/cancelAction/{action}/feedback"),
        &stranger_auth,
        r#"{"id": 2, "time": "20261204T120000", "status": {"result": {"finished": "success"}, "execution": "closed", "details": ["cancellation acknowledged."]}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (_, poll) = ddi(http_port, "GET", &other_base, &stranger_auth, "");
    assert!(poll["_links"]["cancelAction"].is_null(), "{poll}");
    assert!(poll["_links"]["deploymentBase"].is_null(), "{poll}");
    let ended = {
        let mut last = Value::Null;
        assert!(
            eventually(20, || {
                last = api.get(&format!("/api/v1/campaigns/{second}"));
                last["finished_at"].is_i64()
            }),
            "{last}"
        );
        last
    };
    assert_eq!(ended["counts"], json!({"skipped": 1}), "{ended}");

    // An admin of another tenant cannot issue or revoke these devices'
    // tokens, its organisation's gateway token, or read the campaigns.
    let (status, tenant) = api.call(
        "POST",
        "/api/v1/organisations",
        &json!({"parent_id": organisation, "name": "Other Customer"}),
    );
    assert_eq!(status, 201, "{tenant}");
    let (status, body) = api.call(
        "POST",
        "/api/v1/users",
        &json!({"organisation_id": tenant["id"], "username": "other-admin",
                "password": "other-admin-password", "role": "integrator-admin"}),
    );
    assert_eq!(status, 201, "{body}");
    let outsider = Api::login(http_port, "other-admin", "other-admin-password");
    for (method, path) in [
        ("POST", format!("/api/v1/devices/{device}/ddi-token")),
        ("DELETE", format!("/api/v1/devices/{device}/ddi-token")),
        (
            "POST",
            format!("/api/v1/organisations/{organisation}/ddi-gateway-token"),
        ),
        (
            "DELETE",
            format!("/api/v1/organisations/{organisation}/ddi-gateway-token"),
        ),
        ("GET", format!("/api/v1/campaigns/{campaign}/progress")),
    ] {
        let (status, body) = outsider.call(method, &path, &Value::Null);
        assert_eq!(status, 404, "{method} {path}: {body}");
    }

    // configData keeps bounded attributes.
    let renewed_auth = format!("TargetToken {}", renewed.token);
    let (status, body) = ddi(
        http_port,
        "PUT",
        &format!("{base}/configData"),
        &renewed_auth,
        r#"{"id": "", "time": "20261204T120000", "status": {"result": {"finished": "success"}, "execution": "closed", "details": [""]}, "data": {"hw": "A1", "board": "dwm-311"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, poll) = ddi(http_port, "GET", &base, &renewed_auth, "");
    assert_eq!(status, 200);
    assert!(poll["_links"]["configData"].is_null(), "{poll}");
    let (status, body) = ddi(
        http_port,
        "PUT",
        &format!("{base}/configData"),
        &renewed_auth,
        &json!({"data": {"x": "y".repeat(5000)}}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
}
