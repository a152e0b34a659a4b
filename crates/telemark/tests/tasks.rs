//! Remote tasks end to end: `telemark serve`, the real agent process and
//! `telemark sim` on loopback, driven through the API as a user would.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The agent's provisioning for the device `mac` on `broker` (one
/// `mqtt://…` or a list), trusting `api`'s platform for licenses.
fn write_agent_config(
    dir: &Path,
    broker: &str,
    mac: &str,
    secret: &str,
    api: &Api,
) -> std::path::PathBuf {
    let public_key = api.get("/api/v1/license/public-key")["public_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let boot = dir.join("boot_id");
    std::fs::write(&boot, "11111111-aaaa-bbbb-cccc-000000000001\n").expect("boot id");
    // The fake reboot: a new boot id, then the agent goes down as a system
    // would (its supervisor, the test, starts it again).
    let reboot = dir.join("reboot.sh");
    std::fs::write(
        &reboot,
        format!(
            "#!/bin/sh\necho 22222222-aaaa-bbbb-cccc-000000000002 > {}\nkill -9 $PPID\n",
            boot.display()
        ),
    )
    .expect("reboot script");
    let hook = dir.join("applied.json");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "broker = \"{broker}\"\ndevice_id = \"{mac}\"\nmodel = \"311-a1\"\n\
             secret = \"{secret}\"\nbuffer_dir = \"{buffer}\"\n\
             [tasks]\nreboot_command = [\"sh\", \"{reboot}\"]\nshell_allowlist = [\"uname -s\"]\n\
             config_file = \"{config}\"\nconfig_hook = [\"sh\", \"-c\", \"cp \\\"$1\\\" {hook}\", \"hook\"]\n\
             license_public_key = \"{public_key}\"\nlicense_file = \"{license}\"\nboot_id_file = \"{boot}\"\n",
            buffer = dir.join("buffer").display(),
            reboot = reboot.display(),
            config = dir.join("desired.json").display(),
            hook = hook.display(),
            license = dir.join("license.token").display(),
            boot = boot.display(),
        ),
    )
    .expect("provisioning");
    path
}

#[test]
fn the_agent_runs_every_task_type_with_structured_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "TASK1", "00:11:22:33:77:01");
    let secret = secret_for(&api, device);
    let config = write_agent_config(
        dir.path(),
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        "00-11-22-33-77-01",
        &secret,
        &api,
    );
    let mut agent = start_agent(&config);
    assert!(
        eventually(20, || online(&api, device)),
        "the agent connects"
    );

    // Diagnostics: numbers, not only text.
    let ping = api.task(
        device,
        json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 2}}),
    );
    let ping = api.final_execution(id(&ping), 20);
    assert_eq!(ping["state"], "succeeded", "{ping}");
    assert_eq!(ping["result"]["sent"], 2);
    assert_eq!(ping["result"]["received"], 2);
    assert!(ping["result"]["rtt_avg_ms"].as_f64().is_some(), "{ping}");
    assert!(
        ping["result"]["raw"]
            .as_str()
            .unwrap_or("")
            .contains("packets transmitted")
    );

    let trace = api.task(
        device,
        json!({"type": "traceroute", "params": {"host": "127.0.0.1", "max_hops": 3}}),
    );
    let trace = api.final_execution(id(&trace), 20);
    assert_eq!(trace["state"], "succeeded", "{trace}");
    assert_eq!(
        trace["result"]["hops"][0]["address"], "127.0.0.1",
        "{trace}"
    );

    let dns = api.task(
        device,
        json!({"type": "dns_lookup", "params": {"name": "localhost"}}),
    );
    let dns = api.final_execution(id(&dns), 20);
    assert_eq!(dns["state"], "succeeded", "{dns}");
    let answers = dns["result"]["answers"].to_string();
    assert!(
        answers.contains("127.0.0.1") || answers.contains("::1"),
        "{dns}"
    );

    let get = api.task(
        device,
        json!({"type": "http_get", "params": {"url": format!("http://127.0.0.1:{http_port}/api/v1/health")}}),
    );
    let get = api.final_execution(id(&get), 20);
    assert_eq!(get["result"]["status"], 200, "{get}");
    assert!(get["result"]["time_to_first_byte_ms"].as_f64().is_some());

    // The shell runs what the device allows, nothing else.
    let uname = api.task(
        device,
        json!({"type": "shell", "params": {"command": "uname -s"}}),
    );
    let uname = api.final_execution(id(&uname), 20);
    assert_eq!(uname["state"], "succeeded", "{uname}");
    assert!(
        uname["result"]["output"]
            .as_str()
            .unwrap_or("")
            .contains("Linux")
    );
    let rm = api.task(
        device,
        json!({"type": "shell", "params": {"command": "rm -rf /tmp/x"}}),
    );
    let rm = api.final_execution(id(&rm), 20);
    assert_eq!(rm["state"], "rejected");
    assert!(
        rm["error"].as_str().unwrap_or("").contains("allowlist"),
        "{rm}"
    );

    // Configuration through the device's hook.
    let configure = api.task(
        device,
        json!({"type": "configure", "params": {"version": 3, "document": {"apn": "internet.example"}}}),
    );
    let configure = api.final_execution(id(&configure), 20);
    assert_eq!(configure["result"]["applied_version"], 3, "{configure}");
    let applied = std::fs::read_to_string(dir.path().join("applied.json")).expect("the hook ran");
    assert!(applied.contains("internet.example"));
    let configured = api.get(&format!("/api/v1/devices/{device}/config"));
    assert_eq!(
        (
            configured["desired_version"].as_i64(),
            configured["reported_version"].as_i64()
        ),
        (Some(3), Some(3)),
        "{configured}"
    );
    assert_eq!(configured["drift"], false);

    // The black box: the agent uploads its bundle to a one-time URL.
    let bundle = api.task(device, json!({"type": "black_box"}));
    let bundle = api.final_execution(id(&bundle), 30);
    assert_eq!(bundle["state"], "succeeded", "{bundle}");
    let sections = bundle["result"]["sections"].to_string();
    assert!(
        sections.contains("readings") && sections.contains("config"),
        "{bundle}"
    );
    let bundles = api.get(&format!("/api/v1/devices/{device}/black-box"));
    assert_eq!(
        bundles[0]["sha256"], bundle["result"]["sha256"],
        "{bundles}"
    );
    let (status, body) = http(
        http_port,
        "GET",
        &format!("/api/v1/black-box-bundles/{}", id(&bundles[0])),
        &[("Authorization", api.bearer.as_str())],
        "",
    );
    assert_eq!(status, 200);
    let downloaded: Value = serde_json::from_str(&body).expect("the bundle is JSON");
    assert_eq!(downloaded["device"], "00-11-22-33-77-01");
    assert!(
        downloaded["readings"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{downloaded}"
    );
    // A user does not choose where a device's black box goes.
    let (status, _) = api.call(
        "POST",
        &format!("/api/v1/devices/{device}/tasks"),
        &json!({"type": "black_box", "params": {"upload_url": "http://203.0.113.9/x"}}),
    );
    assert_eq!(status, 400);

    // A license: bound, deployed, verified by the device; a forged token refused.
    let (status, model) = api.call(
        "POST",
        "/api/v1/service-models",
        &json!({"name": "Fleet Basic", "duration_days": 365, "features": ["telemetry"]}),
    );
    assert_eq!(status, 201, "{model}");
    let organisation = own_organisation(http_port, &api.bearer);
    let (status, keys) = api.call(
        "POST",
        "/api/v1/license-keys",
        &json!({"organisation_id": organisation, "service_model_id": id(&model), "count": 1}),
    );
    assert_eq!(status, 201, "{keys}");
    let key = id(&keys[0]);
    let (status, bound) = api.call(
        "POST",
        &format!("/api/v1/license-keys/{key}/bind"),
        &json!({"device_id": device}),
    );
    assert_eq!(status, 200, "{bound}");
    let (status, deploy) = api.call(
        "POST",
        &format!("/api/v1/license-keys/{key}/deploy"),
        &Value::Null,
    );
    assert_eq!(status, 201, "{deploy}");
    let deploy = api.final_execution(id(&deploy), 20);
    assert_eq!(deploy["state"], "succeeded", "{deploy}");
    assert!(eventually(5, || api
        .get("/api/v1/license-keys?limit=10")
        .to_string()
        .contains("\"state\":\"deployed\"")));
    assert!(dir.path().join("license.token").exists());
    // Revoking a deployed key tells the device, which forgets the token.
    let (status, revoked) = api.call(
        "POST",
        &format!("/api/v1/license-keys/{key}/revoke"),
        &Value::Null,
    );
    assert_eq!(status, 200, "{revoked}");
    let mut revocation = Value::Null;
    assert!(
        eventually(20, || {
            revocation = api.get(&format!("/api/v1/devices/{device}/tasks?limit=1"))[0].clone();
            revocation["type"] == "license_revoke" && revocation["state"] == "succeeded"
        }),
        "{revocation}"
    );
    assert_eq!(revocation["result"]["removed"], true, "{revocation}");
    assert!(!dir.path().join("license.token").exists());
    let forged = api.task(
        device,
        json!({"type": "license_deploy", "params": {"token": "eyJrZXkiOiJYIn0.AAAA"}}),
    );
    let forged = api.final_execution(id(&forged), 20);
    assert_eq!(forged["state"], "rejected", "{forged}");

    // Reboot: acknowledged, the device goes down, and the task succeeds
    // only when it is back with another boot id.
    let reboot = api.task(device, json!({"type": "reboot"}));
    let reboot_id = id(&reboot);
    assert!(
        eventually(15, || agent.0.as_mut().is_some_and(|c| c
            .try_wait()
            .ok()
            .flatten()
            .is_some())),
        "the reboot command ran"
    );
    let during = api.get(&format!("/api/v1/executions/{reboot_id}"));
    assert_eq!(during["state"], "in_progress", "{during}");
    drop(agent);
    let _agent = start_agent(&config);
    let reboot = api.final_execution(reboot_id, 20);
    assert_eq!(reboot["state"], "succeeded", "{reboot}");
    assert_eq!(
        reboot["result"]["boot_id_after"],
        "22222222-aaaa-bbbb-cccc-000000000002"
    );

    // Every task and its result are in the system log.
    let log = api.get("/api/v1/audit?limit=200").to_string();
    assert!(
        log.contains("task.create") && log.contains("task.result"),
        "{log}"
    );
}

/// An agent given a broker cluster's addresses starts at the one its id
/// picks; when that node is down it moves to the next and works there.
#[test]
fn an_agent_whose_first_broker_is_down_moves_to_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port, down) = (free_port(), free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "FAILOVER1", "00:11:22:33:77:0f");
    let mac = "00-11-22-33-77-0f";
    let secret = secret_for(&api, device);
    // The list in the order that makes the address nobody listens on this
    // device's first.
    let (up, down) = (
        format!("mqtt://127.0.0.1:{mqtt_port}"),
        format!("mqtt://127.0.0.1:{down}"),
    );
    let list = if device_protocol::broker_url::first_for(mac, 2) == 0 {
        format!("{down},{up}")
    } else {
        format!("{up},{down}")
    };
    let config = write_agent_config(dir.path(), &list, mac, &secret, &api);
    let _agent = start_agent(&config);
    assert!(
        eventually(20, || online(&api, device)),
        "the agent reached the broker that is up"
    );
    let ping = api.task(
        device,
        json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}}),
    );
    let ping = api.final_execution(id(&ping), 20);
    assert_eq!(ping["state"], "succeeded", "{ping}");
}

#[test]
fn bad_task_requests_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "TASK2", "00:11:22:33:77:02");
    for (task, field) in [
        (json!({"type": "format_disk"}), "params"),
        (
            json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 10000}}),
            "params",
        ),
        (json!({"type": "ping", "params": {"host": "-f"}}), "params"),
        (
            json!({"type": "ping", "params": {"host": "x"}, "timeout_secs": 0}),
            "timeout_secs",
        ),
    ] {
        let (status, body) = api.call("POST", &format!("/api/v1/devices/{device}/tasks"), &task);
        assert_eq!(status, 400, "{task}: {body}");
        assert!(body.to_string().contains(field), "{task}: {body}");
    }
    // A desired configuration the (offline) device has not applied is drift.
    api.task(
        device,
        json!({"type": "configure", "params": {"version": 5, "document": {"apn": "x"}}}),
    );
    let config = api.get(&format!("/api/v1/devices/{device}/config"));
    assert_eq!(config["desired_version"], 5, "{config}");
    assert_eq!(config["drift"], true, "{config}");
    // Another organisation's engineer cannot reach the operator's device,
    // nor its executions; a viewer reads but does not run.
    let operator = own_organisation(http_port, &api.bearer);
    let (status, integrator) = api.call(
        "POST",
        "/api/v1/organisations",
        &json!({"parent_id": operator, "name": "Integrator"}),
    );
    assert_eq!(status, 201, "{integrator}");
    for (name, organisation, role) in [
        ("stranger", id(&integrator), "engineer"),
        ("watcher", operator, "viewer"),
    ] {
        let (status, body) = api.call(
            "POST",
            "/api/v1/users",
            &json!({"organisation_id": organisation, "username": name, "password": "long-enough-password", "role": role}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let ping = json!({"type": "ping", "params": {"host": "127.0.0.1"}});
    let execution = api.task(device, ping.clone());
    let stranger = Api::login(http_port, "stranger", "long-enough-password");
    let (status, _) = stranger.call("POST", &format!("/api/v1/devices/{device}/tasks"), &ping);
    assert_eq!(status, 404);
    let (status, _) = stranger.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "reboot", "device_ids": [device]}),
    );
    assert_eq!(
        status, 404,
        "a job naming a device outside the caller's scope"
    );
    // Nor the device's radio, configuration or black-box bundles.
    for path in ["radio", "config", "black-box", "tasks"] {
        let (status, _) = stranger.call(
            "GET",
            &format!("/api/v1/devices/{device}/{path}"),
            &Value::Null,
        );
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = stranger.call(
        "GET",
        &format!("/api/v1/executions/{}", id(&execution)),
        &Value::Null,
    );
    assert_eq!(status, 404);
    let (status, _) = stranger.call(
        "POST",
        &format!("/api/v1/executions/{}/cancel", id(&execution)),
        &Value::Null,
    );
    assert_eq!(status, 404);
    let watcher = Api::login(http_port, "watcher", "long-enough-password");
    let (status, _) = watcher.call("POST", &format!("/api/v1/devices/{device}/tasks"), &ping);
    assert_eq!(status, 403);
    assert_eq!(
        watcher
            .get(&format!("/api/v1/devices/{device}/tasks"))
            .as_array()
            .map(Vec::len),
        Some(2),
        "a viewer reads the device's tasks"
    );
    // Cancel: the open execution and its job end.
    let (status, cancelled) = api.call(
        "POST",
        &format!("/api/v1/executions/{}/cancel", id(&execution)),
        &Value::Null,
    );
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let job = api.get(&format!("/api/v1/jobs/{}", cancelled["job_id"]));
    assert_eq!(job["state"], "finished", "{job}");
    assert!(job["finished_at"].as_i64().is_some());
    let (status, _) = api.call(
        "POST",
        &format!("/api/v1/executions/{}/cancel", id(&execution)),
        &Value::Null,
    );
    assert_eq!(status, 409, "already final");
}

/// A device that takes its requests and never answers: mosquitto_sub
/// logged in as the device on its task topic.
fn silent_device(mqtt_port: u16, mac: &str, secret: &str) -> Child {
    std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args(["-i", mac, "-u", mac, "-P", secret, "-q", "1", "-c", "-v"])
        .args(["-t", &format!("dwr/311-a1/{mac}/tasks/+")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub")
}

#[test]
fn offline_delivery_deadlines_retries_and_answers_never_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "TASK3", "00:11:22:33:77:03");
    let mac = "00-11-22-33-77-03";
    let secret = secret_for(&api, device);
    // Offline: one task waits for the device, one expires undelivered.
    let waits = api.task(device, json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "expires_in_secs": 600}));
    let expires = api.task(
        device,
        json!({"type": "ping", "params": {"host": "127.0.0.1"}, "expires_in_secs": 10}),
    );
    assert_eq!(waits["state"], "queued");
    let expired = api.final_execution(id(&expires), 20);
    assert_eq!(expired["state"], "timed_out", "{expired}");
    assert!(
        expired["error"]
            .as_str()
            .unwrap_or("")
            .contains("not delivered"),
        "{expired}"
    );
    // Back online: the waiting task runs within seconds of the connect.
    let config = write_agent_config(
        dir.path(),
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        mac,
        &secret,
        &api,
    );
    let agent = start_agent(&config);
    let connected = Instant::now();
    let done = api.final_execution(id(&waits), 20);
    assert_eq!(done["state"], "succeeded", "{done}");
    let delivered_after = connected.elapsed();
    assert!(
        delivered_after < Duration::from_secs(10),
        "{delivered_after:?}"
    );
    drop(agent);

    // A device that never answers: each attempt times out, retried once
    // after the backoff, then final.
    assert!(eventually(20, || !online(&api, device)));
    let mut silent = silent_device(mqtt_port, mac, &secret);
    assert!(eventually(20, || online(&api, device)));
    let retried = api.task(
        device,
        json!({"type": "ping", "params": {"host": "127.0.0.1"}, "timeout_secs": 5, "max_retries": 1, "retry_backoff_secs": 1}),
    );
    let retried = api.final_execution(id(&retried), 40);
    assert_eq!(retried["state"], "timed_out", "{retried}");
    assert_eq!(retried["attempt"], 2, "{retried}");
    let _ = silent.kill();
    let _ = silent.wait();

    // A black-box upload URL works once, for its execution only.
    let watcher = sub(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/tasks/+"),
        1,
        &["-i", mac, "-u", mac, "-P", &secret, "-q", "1"],
    );
    settle();
    api.task(device, json!({"type": "black_box", "timeout_secs": 30}));
    let request = finish(watcher);
    let url = request
        .split("\"upload_url\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no upload_url in {request}"))
        .to_owned();
    let path = url
        .split_once(&format!("127.0.0.1:{http_port}"))
        .map(|(_, p)| p.to_owned())
        .expect("a local URL");
    let put = |path: &str, body: &str| {
        http(
            http_port,
            "PUT",
            path,
            &[("Content-Type", "application/json")],
            body,
        )
        .0
    };
    assert_eq!(put(&path, r#"{"v":1}"#), 201, "the first upload is kept");
    assert_eq!(put(&path, r#"{"v":1}"#), 404, "the token is spent");
    assert_eq!(put("/api/v1/black-box/not-a-token", "{}"), 404);
    assert_eq!(put("/api/v1/black-box/..%2F..%2Fetc", "{}"), 404);

    // An answer after the deadline finds the execution final: refused.
    let late = format!(
        r#"{{"v":2,"ts":1,"id":{},"attempt":2,"state":"succeeded","result":{{}}}}"#,
        id(&retried)
    );
    let out = pub_msg(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/tasks/{}/result", id(&retried)),
        &late,
        &["-i", mac, "-u", mac, "-P", &secret, "-q", "1"],
    );
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.get(&format!("/api/v1/executions/{}", id(&retried)))["state"],
        "timed_out"
    );
    // An answer to an execution this device was never sent is refused and
    // recorded against the device.
    let out = pub_msg(
        mqtt_port,
        &format!("dwr/311-a1/{mac}/tasks/99999/result"),
        r#"{"v":2,"ts":1,"id":99999,"attempt":1,"state":"succeeded"}"#,
        &["-i", mac, "-u", mac, "-P", &secret, "-q", "1"],
    );
    assert!(out.status.success());
    assert!(
        eventually(10, || api
            .get(&format!("/api/v1/devices/{device}/telemetry-faults"))
            .to_string()
            .contains("not open for this device")),
        "{}",
        api.get(&format!("/api/v1/devices/{device}/telemetry-faults"))
    );
}

#[test]
fn bulk_jobs_on_the_simulated_fleet_finish_and_stop_by_the_abort_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let (fleet, ids) = fleet_file(&api, dir.path(), 20, 0x88);
    let _sim = start_sim(&fleet, mqtt_port, &[]);
    assert!(
        eventually(30, || ids.iter().all(|d| online(&api, *d))),
        "the fleet connects"
    );
    // A bulk reboot over a filter: every device acknowledges, goes away
    // and comes back with a new boot id.
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "reboot", "filter": {"online": true}, "description": "night reboot"}),
    );
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["total"], 20);
    let job = wait_job(&api, id(&job), 60);
    assert_eq!(job["state"], "finished", "{job}");
    assert_eq!(job["counts"]["succeeded"], 20, "{job}");
    // A job whose executions fail stops itself: five refused (off the
    // allowlist) at a rollout of five a minute, the rest never sent.
    let (status, job) = api.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "shell", "params": {"command": "reboot -f"}, "device_ids": ids,
                "rollout_per_minute": 5, "abort_failure_ratio": 0.5, "abort_min_finished": 5}),
    );
    assert_eq!(status, 201, "{job}");
    let job = wait_job(&api, id(&job), 30);
    assert_eq!(job["state"], "aborted", "{job}");
    assert_eq!(job["counts"]["rejected"], 5, "{job}");
    assert_eq!(job["counts"]["cancelled"], 15, "{job}");
    let executions = api.get(&format!(
        "/api/v1/jobs/{}/executions?state=cancelled",
        id(&job)
    ));
    assert!(
        executions[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("abort"),
        "{executions}"
    );
}

/// Two `telemark serve` on one PostgreSQL, each with half of the fleet: a
/// job over all of it reaches every device once, through the instance that
/// holds its connection.
#[test]
fn two_instances_on_one_postgres_send_each_execution_once() {
    let Some(url) = fresh_postgres("tasks") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let instance = |n: u32, http: u16, mqtt: u16| {
        KilledOnDrop(Some(
            telemark()
                .args([
                    "serve",
                    "--data",
                    dir.path().join(format!("data{n}")).to_str().expect("path"),
                ])
                .args([
                    "--http",
                    &format!("127.0.0.1:{http}"),
                    "--mqtt",
                    &format!("127.0.0.1:{mqtt}"),
                ])
                .args(["--instance-id", &format!("instance-{n}")])
                .env("TELEMARK_DATABASE", &url)
                .env("TELEMARK_SECRET_KEY", "ab".repeat(32))
                .env("TELEMARK_ADMIN_PASSWORD", "first-admin-secret")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("serve starts"),
        ))
    };
    let (http1, mqtt1, http2, mqtt2) = (free_port(), free_port(), free_port(), free_port());
    let _one = instance(1, http1, mqtt1);
    wait_for_port(http1);
    let _two = instance(2, http2, mqtt2);
    wait_for_port(http2);
    wait_for_port(mqtt1);
    wait_for_port(mqtt2);
    let api = Api::login(http1, "admin", "first-admin-secret");
    let (fleet1, ids1) = fleet_file(&api, dir.path(), 10, 0x91);
    let (fleet2, ids2) = fleet_file(&api, dir.path(), 10, 0x92);
    let _sim1 = start_sim(&fleet1, mqtt1, &[]);
    let _sim2 = start_sim(&fleet2, mqtt2, &[]);
    let all: Vec<i64> = ids1.iter().chain(&ids2).copied().collect();
    assert!(
        eventually(30, || all.iter().all(|d| online(&api, *d))),
        "both halves connect"
    );
    let api2 = Api::login(http2, "admin", "first-admin-secret");
    let (status, job) = api2.call(
        "POST",
        "/api/v1/jobs",
        &json!({"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "device_ids": all}),
    );
    assert_eq!(status, 201, "{job}");
    let job = wait_job(&api, id(&job), 60);
    let executions = api.get(&format!("/api/v1/jobs/{}/executions?limit=100", id(&job)));
    let executions = executions.as_array().expect("list");
    assert_eq!(executions.len(), 20);
    for e in executions {
        assert!(
            ["succeeded", "failed"].contains(&e["state"].as_str().unwrap_or("")),
            "{e}"
        );
        assert_eq!(e["attempt"], 1, "sent once: {e}");
    }
}

#[test]
fn the_radio_state_and_its_handovers_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let _platform = start_platform(&dir.path().join("data"), http_port, mqtt_port);
    let api = Api::login(http_port, "admin", "first-admin-secret");
    let device = register_device(http_port, &api.bearer, "RADIO1", "00:11:22:33:77:09");
    let mac = "00-11-22-33-77-09";
    let secret = secret_for(&api, device);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let lte = |ts: i64, band: &str, cell: u64, ca: &str| {
        format!(
            r#"{{"v":1,"ts":{ts},"technology":"lte","rsrp_dbm":-97.0,"rsrq_db":-11.0,"sinr_db":12.5,"rssi_dbm":-69.0,"band":"{band}","carrier_aggregation":[{ca}],"operator":"Telia","cell_id":{cell},"smcc":244,"smnc":91}}"#
        )
    };
    for message in [
        lte(
            now - 2000,
            "B3",
            2650113,
            r#"{"band":"B7","pci":301,"rsrp_dbm":-103.0}"#,
        ),
        lte(
            now - 1000,
            "B3",
            2650113,
            r#"{"band":"B7","pci":301,"rsrp_dbm":-109.0}"#,
        ),
        lte(now, "B20", 2650371, ""),
    ] {
        let out = pub_msg(
            mqtt_port,
            &format!("dwr/311-a1/{mac}/hardware/lte"),
            &message,
            &["-i", mac, "-u", mac, "-P", &secret, "-q", "1"],
        );
        assert!(out.status.success());
        // One flush each, so each reading is compared with the one before.
        std::thread::sleep(Duration::from_millis(600));
    }
    let mut radio = Value::Null;
    assert!(
        eventually(10, || {
            radio = api.get(&format!("/api/v1/devices/{device}/radio"));
            radio["changes"].as_array().is_some_and(|c| c.len() == 3)
        }),
        "{radio}"
    );
    assert_eq!(radio["state"]["band"], "B20");
    assert_eq!(radio["state"]["cell_id"], 2650371);
    assert_eq!(radio["state"]["operator"], "Telia");
    let kinds: Vec<&str> = radio["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    // A signal that moves is no change; band, cell and the secondary cell are.
    assert_eq!(kinds.iter().filter(|k| **k == "band").count(), 1, "{radio}");
    assert_eq!(kinds.iter().filter(|k| **k == "cell").count(), 1, "{radio}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "carrier_aggregation")
            .count(),
        1,
        "{radio}"
    );
    let band = radio["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["kind"] == "band")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (band["before"].as_str(), band["after"].as_str()),
        (Some("B3"), Some("B20"))
    );
}
