//! The agent's hands: each task type of the contract run on this Linux
//! system, answered with a structured result beside the raw output.
//!
//! Nothing here runs a shell: diagnostics call `ping`, `traceroute` and
//! `mmcli` with their arguments (the platform refuses a host that looks
//! like an option), and the shell task runs only a command line that is on
//! the device's own allowlist, split into words.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use device_protocol::task::{
    AnswerState, DnsResult, Hop, HttpResult, ModemResult, PingResult, ShellResult, TaskAnswer,
    TaskParams, TaskRequest, TracerouteResult,
};
use serde::Deserialize;
use tokio::process::Command;

use crate::now_millis;

/// The `[tasks]` section of the provisioning file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// Run after a reboot was acknowledged.
    pub reboot_command: Vec<String>,
    /// Exact command lines the `shell` task may run.
    pub shell_allowlist: Vec<String>,
    /// Where a desired configuration is written before the hook runs.
    pub config_file: PathBuf,
    /// Applies the configuration; gets `config_file` as its last argument.
    /// None: the file is written and that is the application.
    pub config_hook: Option<Vec<String>>,
    /// The platform's license key (base64, from `GET /api/v1/license/public-key`).
    pub license_public_key: Option<String>,
    /// Where a verified license token is kept.
    pub license_file: PathBuf,
    /// Where the kernel's boot id is read.
    pub boot_id_file: PathBuf,
    /// Most bytes of command output kept in a result.
    pub max_output: usize,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            reboot_command: vec!["/sbin/reboot".into()],
            shell_allowlist: Vec::new(),
            config_file: PathBuf::from("/var/lib/telemark-agent/config.json"),
            config_hook: None,
            license_public_key: None,
            license_file: PathBuf::from("/var/lib/telemark-agent/license.token"),
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            max_output: 16 * 1024,
        }
    }
}

impl TaskSettings {
    pub fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string(&self.boot_id_file)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
}

/// What running a task produced: a final answer, or for a reboot the
/// acknowledgement to send before the reboot command runs.
pub enum Outcome {
    Final(TaskAnswer),
    Reboot(TaskAnswer),
}

fn answer(request: &TaskRequest, state: AnswerState) -> TaskAnswer {
    let mut a = TaskAnswer::new(request, state);
    a.ts = now_millis();
    a
}

pub fn rejected(request: &TaskRequest, why: impl Into<String>) -> TaskAnswer {
    let mut a = answer(request, AnswerState::Rejected);
    a.error = Some(why.into());
    a
}

pub(crate) fn failed(request: &TaskRequest, why: impl Into<String>) -> TaskAnswer {
    let mut a = answer(request, AnswerState::Failed);
    a.error = Some(why.into());
    a
}

pub(crate) fn succeeded(request: &TaskRequest, result: impl serde::Serialize) -> TaskAnswer {
    let mut a = answer(request, AnswerState::Succeeded);
    a.result = serde_json::to_value(result).ok();
    a
}

/// Runs one request on this system.
pub async fn run(request: &TaskRequest, p: &crate::Provisioning) -> Outcome {
    let (device_id, settings) = (p.device_id.as_str(), &p.tasks);
    if request.deadline <= now_millis() {
        return Outcome::Final(rejected(
            request,
            "the deadline passed before the task arrived",
        ));
    }
    let params = match TaskParams::from_parts(&request.kind, &request.params) {
        Ok(p) => p,
        Err(why) => return Outcome::Final(rejected(request, why)),
    };
    let budget = Duration::from_millis((request.deadline - now_millis()).max(1000) as u64);
    let outcome = match params {
        TaskParams::Reboot {} => {
            if settings.reboot_command.is_empty() {
                return Outcome::Final(rejected(request, "no reboot command is configured"));
            }
            let mut a = answer(request, AnswerState::InProgress);
            a.message = Some("rebooting".into());
            a.result = Some(serde_json::json!({ "boot_id": settings.boot_id() }));
            return Outcome::Reboot(a);
        }
        TaskParams::Ping(p) => ping(request, &p.host, p.count, budget, settings).await,
        TaskParams::Traceroute(t) => {
            traceroute(request, &t.host, t.max_hops, budget, settings).await
        }
        TaskParams::DnsLookup(d) => dns_lookup(request, &d.name, budget).await,
        TaskParams::HttpGet(h) => http_get(request, &h.url, budget).await,
        TaskParams::ModemStatus {} => modem_status(request, settings).await,
        TaskParams::LicenseDeploy(l) => license_deploy(request, &l.token, device_id, settings),
        TaskParams::LicenseRevoke(l) => license_revoke(request, &l.key, settings),
        TaskParams::Configure(c) => {
            configure(request, c.version, &c.document, budget, settings).await
        }
        TaskParams::BlackBox(b) => match b.upload_url {
            Some(url) => black_box(request, &url, p, budget).await,
            None => rejected(request, "black_box: the request carries no upload_url"),
        },
        TaskParams::Shell(s) => shell(request, &s.command, budget, settings).await,
        // Run by the installer, which reports its stages as it goes.
        TaskParams::FirmwareUpdate(_) | TaskParams::FirmwareRollback {} => {
            rejected(request, "firmware tasks are run by the installer")
        }
        // Opened by the session's registry, which owns what it starts.
        TaskParams::RemoteSession(_) => rejected(request, "remote sessions are opened elsewhere"),
    };
    Outcome::Final(outcome)
}

/// Runs the reboot command (after the acknowledgement went out).
pub async fn reboot(settings: &TaskSettings) -> Result<(), String> {
    let Some((program, args)) = settings.reboot_command.split_first() else {
        return Err("no reboot command".into());
    };
    let status = Command::new(program)
        .args(args)
        .status()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

pub(crate) struct Captured {
    pub(crate) code: Option<i32>,
    pub(crate) output: String,
    pub(crate) truncated: bool,
}

/// Runs a program with a time limit, stdout and stderr captured and cut at
/// `max` bytes.
pub(crate) async fn capture(
    program: &str,
    args: &[&str],
    limit: Duration,
    max: usize,
) -> Result<Captured, String> {
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{program} did not finish within {} s", limit.as_secs()))?
        .map_err(|e| format!("{program}: {e}"))?;
    let mut bytes = output.stdout;
    bytes.extend_from_slice(&output.stderr);
    let truncated = bytes.len() > max;
    bytes.truncate(max);
    Ok(Captured {
        code: output.status.code(),
        output: String::from_utf8_lossy(&bytes).into_owned(),
        truncated,
    })
}

async fn ping(
    request: &TaskRequest,
    host: &str,
    count: u32,
    budget: Duration,
    s: &TaskSettings,
) -> TaskAnswer {
    let count_arg = count.to_string();
    match capture(
        "ping",
        &["-n", "-c", &count_arg, "-W", "2", "--", host],
        budget,
        s.max_output,
    )
    .await
    {
        Ok(out) => {
            let mut result = parse_ping(&out.output);
            result.host = host.to_owned();
            if result.sent == 0 {
                return failed(request, format!("ping: {}", out.output.trim()));
            }
            let mut a = succeeded(request, &result);
            if result.received == 0 {
                a.state = AnswerState::Failed;
                a.error = Some(format!("no reply from {host}"));
            }
            a
        }
        Err(e) => failed(request, e),
    }
}

/// iputils ping's summary: `4 packets transmitted, 4 received, 0% packet
/// loss` and `rtt min/avg/max/mdev = 0.03/0.04/0.05/0.01 ms`.
pub fn parse_ping(raw: &str) -> PingResult {
    let mut result = PingResult {
        raw: raw.to_owned(),
        ..PingResult::default()
    };
    for line in raw.lines() {
        if line.contains("packets transmitted") {
            let numbers: Vec<f64> = line
                .split([',', ' ', '%'])
                .filter_map(|w| w.parse::<f64>().ok())
                .collect();
            if let [sent, received, loss, ..] = numbers[..] {
                result.sent = sent as u32;
                result.received = received as u32;
                result.loss_percent = loss;
            }
        } else if let Some((_, values)) = line.split_once(" = ")
            && (line.starts_with("rtt") || line.starts_with("round-trip"))
        {
            let v: Vec<f64> = values
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|n| n.trim().parse().ok())
                .collect();
            if v.len() >= 3 {
                (result.rtt_min_ms, result.rtt_avg_ms, result.rtt_max_ms) =
                    (Some(v[0]), Some(v[1]), Some(v[2]));
            }
        }
    }
    result
}

async fn traceroute(
    request: &TaskRequest,
    host: &str,
    max_hops: u32,
    budget: Duration,
    s: &TaskSettings,
) -> TaskAnswer {
    let hops = max_hops.to_string();
    match capture(
        "traceroute",
        &["-n", "-q", "1", "-w", "2", "-m", &hops, "--", host],
        budget,
        s.max_output,
    )
    .await
    {
        Ok(out) if out.code == Some(0) => {
            let mut result = parse_traceroute(&out.output);
            result.host = host.to_owned();
            succeeded(request, &result)
        }
        Ok(out) => failed(request, format!("traceroute: {}", out.output.trim())),
        Err(e) => failed(request, e),
    }
}

/// `traceroute -n -q 1`: ` 1  192.168.1.1  0.512 ms` or ` 2  *`.
pub fn parse_traceroute(raw: &str) -> TracerouteResult {
    let hops = raw
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let hop = words.next()?.parse::<u32>().ok()?;
            let address = words.next().filter(|w| *w != "*").map(str::to_owned);
            let rtt_ms = words.next().and_then(|w| w.parse::<f64>().ok());
            Some(Hop {
                hop,
                address,
                rtt_ms,
            })
        })
        .collect();
    TracerouteResult {
        host: String::new(),
        hops,
        raw: raw.to_owned(),
    }
}

async fn dns_lookup(request: &TaskRequest, name: &str, budget: Duration) -> TaskAnswer {
    let started = Instant::now();
    match tokio::time::timeout(budget, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addresses)) => {
            let mut answers: Vec<String> = addresses.map(|a| a.ip().to_string()).collect();
            answers.dedup();
            succeeded(
                request,
                DnsResult {
                    name: name.to_owned(),
                    answers,
                    time_ms: started.elapsed().as_secs_f64() * 1000.0,
                },
            )
        }
        Ok(Err(e)) => failed(request, format!("{name}: {e}")),
        Err(_) => failed(request, format!("{name}: no answer in time")),
    }
}

async fn http_get(request: &TaskRequest, url: &str, budget: Duration) -> TaskAnswer {
    let client = match reqwest::Client::builder()
        .timeout(budget)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(request, e.to_string()),
    };
    let started = Instant::now();
    let mut response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => return failed(request, format!("GET {url}: {e}")),
    };
    let first_byte = started.elapsed();
    let mut bytes = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes += chunk.len() as u64,
            Ok(None) => break,
            Err(e) => return failed(request, format!("GET {url}: {e}")),
        }
    }
    let total = started.elapsed();
    let body_secs = (total - first_byte).as_secs_f64();
    let result = HttpResult {
        url: url.to_owned(),
        status: response.status().as_u16(),
        time_to_first_byte_ms: first_byte.as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        bytes,
        throughput_bps: if body_secs > 0.0 {
            bytes as f64 * 8.0 / body_secs
        } else {
            0.0
        },
    };
    let mut a = succeeded(request, &result);
    if !response.status().is_success() {
        a.state = AnswerState::Failed;
        a.error = Some(format!("HTTP {}", result.status));
    }
    a
}

async fn modem_status(request: &TaskRequest, s: &TaskSettings) -> TaskAnswer {
    let limit = Duration::from_secs(10);
    let modem = match capture("mmcli", &["-J", "-m", "any"], limit, 1 << 20).await {
        Ok(out) if out.code == Some(0) => out.output,
        Ok(out) => return failed(request, format!("mmcli: {}", out.output.trim())),
        Err(e) => return failed(request, format!("no modem: {e}")),
    };
    let signal = capture(
        "mmcli",
        &["-J", "-m", "any", "--signal-get"],
        limit,
        1 << 20,
    )
    .await
    .map(|o| o.output)
    .unwrap_or_default();
    let mut result = parse_modem(&modem, &signal);
    result.raw.truncate(s.max_output);
    succeeded(request, &result)
}

/// ModemManager's `mmcli -J` views of the modem and of its signal.
pub fn parse_modem(modem: &str, signal: &str) -> ModemResult {
    let m: serde_json::Value = serde_json::from_str(modem).unwrap_or_default();
    let sig: serde_json::Value = serde_json::from_str(signal).unwrap_or_default();
    let text = |v: &serde_json::Value| {
        v.as_str()
            .filter(|s| !s.is_empty() && *s != "--")
            .map(str::to_owned)
    };
    let number = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .or(v.as_f64())
    };
    let lte = &sig["modem"]["signal"]["lte"];
    ModemResult {
        registration: text(&m["modem"]["3gpp"]["registration-state"]),
        operator: text(&m["modem"]["3gpp"]["operator-name"]),
        technology: text(&m["modem"]["generic"]["access-technologies"][0]),
        band: None,
        rsrp_dbm: number(&lte["rsrp"]),
        rsrq_db: number(&lte["rsrq"]),
        sinr_db: number(&lte["snr"]),
        cell_id: None,
        carrier_aggregation: Vec::new(),
        raw: format!("{modem}\n{signal}"),
    }
}

fn license_deploy(
    request: &TaskRequest,
    token: &str,
    device_id: &str,
    s: &TaskSettings,
) -> TaskAnswer {
    let Some(key) = &s.license_public_key else {
        return rejected(request, "no license_public_key is configured");
    };
    let key = match license::public_key_from_base64(key) {
        Ok(k) => k,
        Err(e) => return rejected(request, format!("license_public_key: {e}")),
    };
    match license::verify(&key, token, device_id, now_millis() / 1000) {
        Ok(claims) => match write_atomically(&s.license_file, token.as_bytes()) {
            Ok(()) => succeeded(
                request,
                serde_json::json!({
                    "key": claims.key,
                    "service_model": claims.service_model,
                    "expires_at": claims.expires_at,
                }),
            ),
            Err(e) => failed(request, format!("{}: {e}", s.license_file.display())),
        },
        Err(e) => rejected(request, format!("license refused: {e}")),
    }
}

fn license_revoke(request: &TaskRequest, key: &str, s: &TaskSettings) -> TaskAnswer {
    let held = std::fs::read_to_string(&s.license_file).unwrap_or_default();
    let holds_key = held
        .split('.')
        .next()
        .and_then(|claims| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|c| c["key"] == key);
    if holds_key && let Err(e) = std::fs::remove_file(&s.license_file) {
        return failed(request, format!("{}: {e}", s.license_file.display()));
    }
    succeeded(
        request,
        serde_json::json!({ "key": key, "removed": holds_key }),
    )
}

async fn configure(
    request: &TaskRequest,
    version: i64,
    document: &serde_json::Value,
    budget: Duration,
    s: &TaskSettings,
) -> TaskAnswer {
    let body = serde_json::json!({ "version": version, "document": document });
    if let Err(e) = write_atomically(&s.config_file, body.to_string().as_bytes()) {
        return failed(request, format!("{}: {e}", s.config_file.display()));
    }
    let output = match &s.config_hook {
        None => String::new(),
        Some(hook) => {
            let Some((program, args)) = hook.split_first() else {
                return rejected(request, "config_hook is empty");
            };
            let path = s.config_file.display().to_string();
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            all.push(&path);
            match capture(program, &all, budget, s.max_output).await {
                Ok(out) if out.code == Some(0) => out.output,
                Ok(out) => {
                    let mut a = failed(request, format!("{program} exited with {:?}", out.code));
                    a.result =
                        Some(serde_json::json!({ "applied_version": null, "output": out.output }));
                    return a;
                }
                Err(e) => return failed(request, e),
            }
        }
    };
    succeeded(
        request,
        serde_json::json!({ "applied_version": version, "state": "applied", "output": output }),
    )
}

async fn shell(
    request: &TaskRequest,
    command: &str,
    budget: Duration,
    s: &TaskSettings,
) -> TaskAnswer {
    if !s.shell_allowlist.iter().any(|allowed| allowed == command) {
        return rejected(
            request,
            format!("{command:?} is not on this device's allowlist"),
        );
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some((program, args)) = words.split_first() else {
        return rejected(request, "an empty command");
    };
    match capture(program, args, budget, s.max_output).await {
        Ok(out) => {
            let result = ShellResult {
                exit_code: out.code,
                output: out.output,
                truncated: out.truncated,
            };
            let mut a = succeeded(request, &result);
            if result.exit_code != Some(0) {
                a.state = AnswerState::Failed;
                a.error = Some(format!("exit code {:?}", result.exit_code));
            }
            a
        }
        Err(e) => failed(request, e),
    }
}

/// The last `n` lines of a text file, if it can be read.
fn tail(path: &Path, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| (*l).to_owned())
            .collect(),
    )
}

/// Collects the bundle (fresh readings, the followed log's tail, kernel
/// messages, the applied configuration, the modem, the provisioning minus
/// its secret) and PUTs it to the one-time URL.
async fn black_box(
    request: &TaskRequest,
    url: &str,
    p: &crate::Provisioning,
    budget: Duration,
) -> TaskAnswer {
    let mut collector = crate::collect::SystemCollector::new(None);
    let readings: Vec<serde_json::Value> = [
        collector.loadavg(),
        collector.memory(),
        collector.cpu(),
        collector.traffic(),
        collector.uptime(),
        collector.ipv4(),
        collector.lte(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|r| {
        let mut v: serde_json::Value = serde_json::from_slice(&r.to_json()).ok()?;
        v["topic"] = r.topic().suffix().into();
        Some(v)
    })
    .collect();
    let limit = Duration::from_secs(5);
    let dmesg = capture("dmesg", &[], limit, 256 * 1024)
        .await
        .ok()
        .map(|c| {
            c.output
                .lines()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
    let modem = capture("mmcli", &["-J", "-m", "any"], limit, 1 << 20)
        .await
        .ok()
        .filter(|c| c.code == Some(0))
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c.output).ok());
    let config = std::fs::read_to_string(&p.tasks.config_file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let syslog = p.log_file.as_deref().and_then(|f| tail(f, 500));
    let bundle = serde_json::json!({
        "v": 1,
        "device": p.device_id,
        "model": p.model,
        "created_at": now_millis(),
        "agent": env!("CARGO_PKG_VERSION"),
        "boot_id": p.tasks.boot_id(),
        "readings": readings,
        "syslog": syslog,
        "dmesg": dmesg,
        "config": config,
        "modem": modem,
        "provisioning": {"broker": p.broker, "buffer_dir": p.buffer_dir, "log_file": p.log_file, "intervals": {
            "hardware": p.intervals.hardware, "network": p.intervals.network, "lte": p.intervals.lte,
            "uptime": p.intervals.uptime, "logs": p.intervals.logs}},
    });
    let sections: Vec<String> = [
        "readings",
        "syslog",
        "dmesg",
        "config",
        "modem",
        "provisioning",
    ]
    .iter()
    .filter(|s| !bundle[**s].is_null())
    .map(|s| (*s).to_owned())
    .collect();
    let body = bundle.to_string().into_bytes();
    upload(request, url, body, sections, budget).await
}

/// PUTs a bundle and answers with its size and digest.
pub async fn upload(
    request: &TaskRequest,
    url: &str,
    body: Vec<u8>,
    sections: Vec<String>,
    budget: Duration,
) -> TaskAnswer {
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let bytes = body.len() as u64;
    let client = match reqwest::Client::builder()
        .timeout(budget)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(request, e.to_string()),
    };
    match client
        .put(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => succeeded(
            request,
            device_protocol::task::BlackBoxResult {
                bytes,
                sha256,
                sections,
            },
        ),
        Ok(r) => failed(request, format!("upload refused: HTTP {}", r.status())),
        Err(e) => failed(request, format!("upload failed: {e}")),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_becomes_numbers() {
        let raw = "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.035 ms\n\n--- 127.0.0.1 ping statistics ---\n4 packets transmitted, 3 received, 25% packet loss, time 3050ms\nrtt min/avg/max/mdev = 0.035/0.114/0.193/0.079 ms\n";
        let r = parse_ping(raw);
        assert_eq!((r.sent, r.received, r.loss_percent), (4, 3, 25.0));
        assert_eq!(
            (r.rtt_min_ms, r.rtt_avg_ms, r.rtt_max_ms),
            (Some(0.035), Some(0.114), Some(0.193))
        );
        let none = parse_ping("2 packets transmitted, 0 received, 100% packet loss, time 1000ms\n");
        assert_eq!(
            (none.received, none.loss_percent, none.rtt_avg_ms),
            (0, 100.0, None)
        );
    }

    #[test]
    fn traceroute_output_becomes_hops() {
        let raw = "traceroute to 10.0.0.9 (10.0.0.9), 30 hops max, 60 byte packets\n 1  192.168.1.1  0.512 ms\n 2  *\n 3  10.0.0.9  12.250 ms\n";
        let r = parse_traceroute(raw);
        assert_eq!(r.hops.len(), 3);
        assert_eq!(r.hops[0].address.as_deref(), Some("192.168.1.1"));
        assert_eq!(
            r.hops[1],
            Hop {
                hop: 2,
                address: None,
                rtt_ms: None
            }
        );
        assert_eq!(r.hops[2].rtt_ms, Some(12.25));
    }

    #[test]
    fn modem_json_becomes_radio_state() {
        let modem = r#"{"modem":{"3gpp":{"registration-state":"home","operator-name":"Telia"},"generic":{"access-technologies":["lte"]}}}"#;
        let signal =
            r#"{"modem":{"signal":{"lte":{"rsrp":"-97.00","rsrq":"-11.00","snr":"12.50"}}}}"#;
        let r = parse_modem(modem, signal);
        assert_eq!(r.registration.as_deref(), Some("home"));
        assert_eq!(r.rsrp_dbm, Some(-97.0));
        assert_eq!(r.sinr_db, Some(12.5));
    }
}
