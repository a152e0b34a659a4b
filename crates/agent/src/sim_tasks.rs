//! How a simulated device answers tasks: after a believable delay, with
//! results shaped like the agent's and drawn from the device's simulated
//! state (a fading signal makes pings lose packets), and a share of
//! failures, so a demo's jobs have something to show.

use std::collections::VecDeque;
use std::time::Duration;

use device_protocol::task::{
    self, AnswerState, DnsResult, Hop, HttpResult, ModemResult, PingResult, ShellResult,
    TaskAnswer, TaskParams, TaskRequest, TracerouteResult,
};
use rand::Rng;
use tokio::time::Instant;

use crate::now_millis;
use crate::session::SeenTasks;
use crate::sim::{SimDevice, SimOptions, SimulatedDevice};

/// Commands a simulated device's allowlist holds, with their output.
pub(crate) const SHELL: [(&str, &str); 3] = [
    (
        "uptime",
        " 10:42:01 up 12 days,  3:04,  load average: 0.08, 0.12, 0.10\n",
    ),
    (
        "df -h",
        "Filesystem      Size  Used Avail Use% Mounted on\n/dev/root       240M  118M  122M  50% /\ntmpfs           124M  1.2M  123M   1% /tmp\n",
    ),
    (
        "ip addr",
        "1: lo: <LOOPBACK,UP> mtu 65536\n    inet 127.0.0.1/8 scope host lo\n4: wwan0: <POINTOPOINT,UP> mtu 1500\n    inet 10.64.12.9/30 scope global wwan0\n",
    ),
];

pub(crate) enum Due {
    Answer { topic: String, payload: Vec<u8> },
    Reboot,
}

/// Answers waiting for their time, oldest first.
#[derive(Default)]
pub(crate) struct SimAnswers {
    waiting: VecDeque<(Instant, Due)>,
    seen: SeenTasks,
    shells: crate::sim_shell::SimShells,
}

impl SimAnswers {
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.waiting.iter().map(|(at, _)| *at).min()
    }

    /// What is due now.
    pub(crate) fn due(&mut self) -> Vec<Due> {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|(at, _)| *at <= now);
        self.waiting = later.into();
        due.into_iter().map(|(_, d)| d).collect()
    }

    /// Takes a request and schedules its answers. A black-box request is
    /// uploaded here, before its answer is scheduled.
    pub(crate) async fn take(
        &mut self,
        payload: &[u8],
        state: &mut SimulatedDevice,
        device: &SimDevice,
        options: &SimOptions,
    ) {
        let Ok(request) = serde_json::from_slice::<TaskRequest>(payload) else {
            return;
        };
        if !self.seen.first(request.id, request.attempt) {
            return;
        }
        let now = Instant::now();
        let status_topic = task::status_topic(&device.model, &device.device_id, request.id);
        let result_topic = task::result_topic(&device.model, &device.device_id, request.id);
        let (delay, answer) = match TaskParams::from_parts(&request.kind, &request.params) {
            Ok(TaskParams::RemoteSession(s))
                if s.kind == device_protocol::session::SessionKind::Terminal
                    && request.deadline > now_millis() =>
            {
                let frames = self.shells.open(
                    &s.session,
                    s.cols.unwrap_or(80),
                    s.rows.unwrap_or(24),
                    &options.firmware,
                );
                let answer = if frames.is_empty() {
                    finish(
                        &request,
                        AnswerState::Rejected,
                        None,
                        Some("this device already has 4 terminals open".into()),
                    )
                } else {
                    ok(
                        &request,
                        device_protocol::session::SessionOpened {
                            session: s.session.clone(),
                            bound_port: None,
                        },
                    )
                };
                self.waiting.push_back((
                    now,
                    Due::Answer {
                        topic: result_topic,
                        payload: answer.to_json(),
                    },
                ));
                self.session_frames(&s.session, frames, device);
                return;
            }
            Ok(TaskParams::FirmwareUpdate(update)) if request.deadline > now_millis() => {
                let steps = crate::sim_firmware::update(
                    &request,
                    &update,
                    state.firmware_version(),
                    options.license_public_key.as_deref(),
                    options.fota_failure,
                )
                .await;
                let mut at = Instant::now();
                for (delay, answer) in steps.progress {
                    at += delay;
                    self.waiting.push_back((
                        at,
                        Due::Answer {
                            topic: status_topic.clone(),
                            payload: answer.to_json(),
                        },
                    ));
                }
                match steps.outcome {
                    Ok(pending) => {
                        state.pending_update = Some(pending);
                        self.waiting
                            .push_back((at + Duration::from_millis(200), Due::Reboot));
                    }
                    Err(answer) => self.waiting.push_back((
                        at + Duration::from_millis(100),
                        Due::Answer {
                            topic: result_topic,
                            payload: answer.to_json(),
                        },
                    )),
                }
                return;
            }
            Ok(TaskParams::FirmwareRollback {}) if request.deadline > now_millis() => {
                match state.previous_firmware.clone() {
                    Some(previous) => {
                        state.pending_update = Some(crate::sim_firmware::PendingUpdate {
                            request: request.clone(),
                            version: previous,
                            previous: state.firmware_version().to_owned(),
                            fails_first_boot: false,
                            rollback: true,
                        });
                        let answer = crate::sim_firmware::stage_answer(
                            &request,
                            device_protocol::firmware::Stage::Rebooting,
                            None,
                        );
                        self.waiting.push_back((
                            now,
                            Due::Answer {
                                topic: status_topic,
                                payload: answer.to_json(),
                            },
                        ));
                        self.waiting
                            .push_back((now + Duration::from_millis(500), Due::Reboot));
                    }
                    None => self.waiting.push_back((
                        now,
                        Due::Answer {
                            topic: result_topic,
                            payload: finish(
                                &request,
                                AnswerState::Rejected,
                                None,
                                Some("no previous image to return to".into()),
                            )
                            .to_json(),
                        },
                    )),
                }
                return;
            }
            Ok(TaskParams::BlackBox(task::BlackBox {
                upload_url: Some(url),
            })) if request.deadline > now_millis() => (
                Duration::ZERO,
                upload_bundle(&request, &url, state, device).await,
            ),
            _ => simulate(&request, state, device, options),
        };
        if request.kind == "reboot" && answer.state == AnswerState::InProgress {
            self.waiting.push_back((
                now,
                Due::Answer {
                    topic: status_topic,
                    payload: answer.to_json(),
                },
            ));
            self.waiting
                .push_back((now + Duration::from_millis(200), Due::Reboot));
            return;
        }
        if delay > Duration::from_secs(1) {
            let mut accepted = TaskAnswer::new(&request, AnswerState::InProgress);
            accepted.ts = now_millis();
            accepted.progress = Some(10);
            self.waiting.push_back((
                now + Duration::from_millis(100),
                Due::Answer {
                    topic: status_topic,
                    payload: accepted.to_json(),
                },
            ));
        }
        self.waiting.push_back((
            now + delay,
            Due::Answer {
                topic: result_topic,
                payload: answer.to_json(),
            },
        ));
    }
}

impl SimAnswers {
    /// A frame on one of the device's `sessions/{id}/in` topics.
    pub(crate) fn session_input(&mut self, id: &str, payload: &[u8], device: &SimDevice) {
        let frames = self.shells.input(id, payload);
        self.session_frames(id, frames, device);
    }

    fn session_frames(&mut self, id: &str, frames: Vec<Vec<u8>>, device: &SimDevice) {
        let topic = device_protocol::session::output_topic(&device.model, &device.device_id, id);
        let now = Instant::now();
        for payload in frames {
            self.waiting.push_back((
                now,
                Due::Answer {
                    topic: topic.clone(),
                    payload,
                },
            ));
        }
    }
}

fn finish(
    request: &TaskRequest,
    state: AnswerState,
    result: Option<serde_json::Value>,
    error: Option<String>,
) -> TaskAnswer {
    let mut a = TaskAnswer::new(request, state);
    a.ts = now_millis();
    a.result = result;
    a.error = error;
    a
}

fn ok<T: serde::Serialize>(request: &TaskRequest, result: T) -> TaskAnswer {
    finish(
        request,
        AnswerState::Succeeded,
        serde_json::to_value(result).ok(),
        None,
    )
}

/// A pseudo-address for a name, stable per name.
fn address_for(name: &str, base: u8) -> String {
    let h = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!(
        "{base}.{}.{}.{}",
        (h >> 16) as u8,
        (h >> 8) as u8,
        (h as u8).max(1)
    )
}

/// The answer of a simulated device to a request, and how long it takes.
fn simulate(
    request: &TaskRequest,
    state: &SimulatedDevice,
    device: &SimDevice,
    options: &SimOptions,
) -> (Duration, TaskAnswer) {
    let mut rng = rand::rng();
    let quick = Duration::from_millis(rng.random_range(100..600));
    if request.deadline <= now_millis() {
        return (
            quick,
            finish(
                request,
                AnswerState::Rejected,
                None,
                Some("the deadline passed before the task arrived".into()),
            ),
        );
    }
    let params = match TaskParams::from_parts(&request.kind, &request.params) {
        Ok(p) => p,
        Err(why) => {
            return (
                quick,
                finish(request, AnswerState::Rejected, None, Some(why)),
            );
        }
    };
    // Slower, lossier answers while the signal fades.
    let base_rtt = if state.fading() {
        rng.random_range(180.0..600.0)
    } else {
        rng.random_range(28.0..65.0)
    };
    match params {
        TaskParams::RemoteSession(_) => (
            Duration::from_millis(200),
            finish(
                request,
                AnswerState::Rejected,
                None,
                Some("a simulated device has no ports to forward; connect a real agent".into()),
            ),
        ),
        // Past their deadline (the ones in time were taken above).
        TaskParams::FirmwareUpdate(_) | TaskParams::FirmwareRollback {} => (
            quick,
            finish(
                request,
                AnswerState::Rejected,
                None,
                Some("the deadline passed before the task arrived".into()),
            ),
        ),
        TaskParams::Reboot {} => {
            let mut a = finish(
                request,
                AnswerState::InProgress,
                Some(serde_json::json!({ "boot_id": state.boot_id })),
                None,
            );
            a.message = Some("rebooting".into());
            (Duration::ZERO, a)
        }
        TaskParams::Ping(p) => {
            let lost = if state.fading() {
                rng.random_range(p.count / 4..=p.count)
            } else if rng.random_bool(0.05) {
                p.count
            } else {
                u32::from(rng.random_bool(0.1))
            };
            let received = p.count - lost.min(p.count);
            let (min, avg, max) = (base_rtt * 0.8, base_rtt, base_rtt * 1.6);
            let raw = format!(
                "PING {h} ({h}) 56(84) bytes of data.\n\n--- {h} ping statistics ---\n{} packets transmitted, {received} received, {:.0}% packet loss, time {}ms\n{}",
                p.count,
                100.0 * f64::from(p.count - received) / f64::from(p.count),
                p.count * 1000,
                if received > 0 {
                    format!(
                        "rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{:.3} ms\n",
                        avg * 0.2
                    )
                } else {
                    String::new()
                },
                h = p.host
            );
            let mut result = crate::tasks::parse_ping(&raw);
            result.host = p.host.clone();
            let delay = Duration::from_millis(u64::from(p.count.min(10)) * 300);
            if received == 0 {
                let mut a = ok(request, &result);
                a.state = AnswerState::Failed;
                a.error = Some(format!("no reply from {}", p.host));
                return (delay, a);
            }
            (delay, ok(request, PingResult { ..result }))
        }
        TaskParams::Traceroute(t) => {
            let hops_total = rng.random_range(4..9).min(t.max_hops);
            let mut rtt: f64 = 1.0;
            let hops: Vec<Hop> = (1..=hops_total)
                .map(|hop| {
                    rtt += rng.random_range(2.0..base_rtt / 3.0);
                    let silent = hop > 1 && hop < hops_total && rng.random_bool(0.15);
                    Hop {
                        hop,
                        address: (!silent).then(|| {
                            if hop == hops_total {
                                t.host.clone()
                            } else {
                                address_for(&format!("{}{hop}", device.device_id), 10)
                            }
                        }),
                        rtt_ms: (!silent).then_some((rtt * 1000.0).round() / 1000.0),
                    }
                })
                .collect();
            let raw = hops
                .iter()
                .map(|h| match (&h.address, h.rtt_ms) {
                    (Some(a), Some(r)) => format!("{:2}  {a}  {r:.3} ms", h.hop),
                    _ => format!("{:2}  *", h.hop),
                })
                .collect::<Vec<_>>()
                .join("\n");
            (
                Duration::from_millis(u64::from(hops_total) * 250),
                ok(
                    request,
                    TracerouteResult {
                        host: t.host,
                        hops,
                        raw,
                    },
                ),
            )
        }
        TaskParams::DnsLookup(d) => {
            if rng.random_bool(0.05) {
                return (
                    quick,
                    finish(
                        request,
                        AnswerState::Failed,
                        None,
                        Some(format!("{}: Name or service not known", d.name)),
                    ),
                );
            }
            let answers = vec![
                address_for(&d.name, 93),
                address_for(&format!("{}.", d.name), 93),
            ];
            (
                quick,
                ok(
                    request,
                    DnsResult {
                        name: d.name,
                        answers,
                        time_ms: base_rtt * rng.random_range(0.5..1.5),
                    },
                ),
            )
        }
        TaskParams::HttpGet(h) => {
            let ttfb = base_rtt * rng.random_range(2.0..4.0);
            let bytes = rng.random_range(40_000..1_200_000u64);
            let bps = if state.fading() {
                rng.random_range(0.2e6..2.0e6)
            } else {
                rng.random_range(8.0e6..45.0e6)
            };
            let body_ms = bytes as f64 * 8.0 / bps * 1000.0;
            let status = if rng.random_bool(0.05) { 503 } else { 200 };
            let result = HttpResult {
                url: h.url,
                status,
                time_to_first_byte_ms: ttfb,
                total_ms: ttfb + body_ms,
                bytes,
                throughput_bps: bps,
            };
            let mut a = ok(request, &result);
            if status != 200 {
                a.state = AnswerState::Failed;
                a.error = Some(format!("HTTP {status}"));
            }
            (
                Duration::from_millis((ttfb + body_ms) as u64).min(Duration::from_secs(5)),
                a,
            )
        }
        TaskParams::ModemStatus {} => {
            let lte = state.lte_now();
            let result = ModemResult {
                registration: Some("home".into()),
                operator: lte.operator.clone(),
                technology: Some(lte.technology.clone()),
                band: lte.band.clone(),
                rsrp_dbm: lte.rsrp_dbm,
                rsrq_db: lte.rsrq_db,
                sinr_db: lte.sinr_db,
                cell_id: lte.cell_id,
                carrier_aggregation: lte.carrier_aggregation.clone(),
                raw: serde_json::to_string(&lte).unwrap_or_default(),
            };
            (quick, ok(request, result))
        }
        TaskParams::LicenseDeploy(l) => {
            let verified = options
                .license_public_key
                .as_deref()
                .ok_or_else(|| "no license_public_key is configured".to_owned())
                .and_then(|k| license::public_key_from_base64(k).map_err(|e| e.to_string()))
                .and_then(|k| {
                    license::verify(&k, &l.token, &device.device_id, now_millis() / 1000)
                        .map_err(|e| format!("license refused: {e}"))
                });
            match verified {
                Ok(claims) => (
                    quick,
                    ok(
                        request,
                        serde_json::json!({ "key": claims.key, "service_model": claims.service_model, "expires_at": claims.expires_at }),
                    ),
                ),
                Err(why) => (
                    quick,
                    finish(request, AnswerState::Rejected, None, Some(why)),
                ),
            }
        }
        TaskParams::LicenseRevoke(l) => (
            quick,
            ok(
                request,
                serde_json::json!({ "key": l.key, "removed": true }),
            ),
        ),
        TaskParams::Configure(c) => {
            if rng.random_bool(0.05) {
                let mut a = finish(
                    request,
                    AnswerState::Failed,
                    None,
                    Some("apply-config exited with 1".into()),
                );
                a.result = Some(
                    serde_json::json!({ "applied_version": null, "output": "uci: Invalid argument\n" }),
                );
                return (quick, a);
            }
            (
                quick,
                ok(
                    request,
                    serde_json::json!({ "applied_version": c.version, "state": "applied", "output": "" }),
                ),
            )
        }
        TaskParams::BlackBox(_) => (
            quick,
            finish(
                request,
                AnswerState::Rejected,
                None,
                Some("black_box: this agent has no bundle upload yet".into()),
            ),
        ),
        TaskParams::Shell(s) => match SHELL.iter().find(|(command, _)| *command == s.command) {
            Some((_, output)) => (
                quick,
                ok(
                    request,
                    ShellResult {
                        exit_code: Some(0),
                        output: (*output).to_owned(),
                        truncated: false,
                    },
                ),
            ),
            None => (
                quick,
                finish(
                    request,
                    AnswerState::Rejected,
                    None,
                    Some(format!("{:?} is not on this device's allowlist", s.command)),
                ),
            ),
        },
    }
}

/// A simulated device's bundle: its readings now, a few log lines, its modem.
async fn upload_bundle(
    request: &TaskRequest,
    url: &str,
    state: &mut SimulatedDevice,
    device: &SimDevice,
) -> TaskAnswer {
    let now = now_millis();
    let readings: Vec<serde_json::Value> = state
        .tick(now, 1)
        .iter()
        .filter_map(|r| {
            let mut v: serde_json::Value = serde_json::from_slice(&r.to_json()).ok()?;
            v["topic"] = r.topic().suffix().into();
            Some(v)
        })
        .collect();
    let bundle = serde_json::json!({
        "v": 1,
        "device": device.device_id,
        "model": device.model,
        "created_at": now,
        "agent": concat!("sim ", env!("CARGO_PKG_VERSION")),
        "boot_id": state.boot_id,
        "readings": readings,
        "syslog": [
            "kernel: wwan0: carrier on",
            "ModemManager: modem 0: state changed (registered -> connected)",
            "dnsmasq-dhcp: DHCPACK(br-lan) 192.168.1.23 lan-client",
        ],
        "dmesg": ["[    0.000000] Linux version 5.15.137 (builder@telemark) #0 SMP"],
        "config": {"version": 1, "document": {"apn": "internet"}},
        "modem": state.lte_now(),
    });
    let sections = ["readings", "syslog", "dmesg", "config", "modem"]
        .map(str::to_owned)
        .to_vec();
    crate::tasks::upload(
        request,
        url,
        bundle.to_string().into_bytes(),
        sections,
        Duration::from_secs(20),
    )
    .await
}
