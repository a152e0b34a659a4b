//! The task section of the device contract (version 2): what the platform
//! asks a device to do and how the device answers.
//!
//! - Request, platform → device, QoS 1, not retained:
//!   `dwr/{model}/{device}/tasks/{execution}`. An MQTT 5 request carries the
//!   response topic `…/tasks/{execution}/result` and correlation data
//!   `{execution}/{attempt}`; an MQTT 3.1.1 device answers on the same
//!   topic, which the contract names, so both forms meet in one place.
//! - Progress, device → platform, QoS 1: `…/tasks/{execution}/status` with
//!   state `accepted` or `in_progress`.
//! - Final answer, device → platform, QoS 1: `…/tasks/{execution}/result`
//!   with state `succeeded`, `failed` or `rejected`.
//!
//! Every answer names the execution and the attempt it answers, so a late
//! answer to an earlier attempt is told apart from the current one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{PREFIX, has_escaped_nul};

/// The version of the task section; requests and answers carry it as `v`.
pub const TASK_VERSION: u32 = 2;
/// Largest answer a device may send (the result document and raw output).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest progress or error message kept.
pub const MAX_MESSAGE: usize = 1024;
/// Most packets one ping may send.
pub const MAX_PING_COUNT: u32 = 100;
/// Most hops one traceroute may probe.
pub const MAX_HOPS: u32 = 64;
/// Longest host name or URL a diagnostic takes.
pub const MAX_TARGET: usize = 255;
/// Longest shell command line.
pub const MAX_COMMAND: usize = 1024;
/// Largest configuration document.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024;

/// `dwr/{model}/{device}/tasks/{execution}`: where the request goes.
pub fn request_topic(model: &str, device: &str, execution: i64) -> String {
    format!("{PREFIX}/{model}/{device}/tasks/{execution}")
}

/// What a device subscribes to for its requests.
pub fn request_filter(model: &str, device: &str) -> String {
    format!("{PREFIX}/{model}/{device}/tasks/+")
}

/// Where a device sends its final answer (also the MQTT 5 response topic).
pub fn result_topic(model: &str, device: &str, execution: i64) -> String {
    format!("{PREFIX}/{model}/{device}/tasks/{execution}/result")
}

/// Where a device sends progress.
pub fn status_topic(model: &str, device: &str, execution: i64) -> String {
    format!("{PREFIX}/{model}/{device}/tasks/{execution}/status")
}

/// The MQTT 5 correlation data of a request.
pub fn correlation(execution: i64, attempt: u32) -> String {
    format!("{execution}/{attempt}")
}

/// What a topic suffix (after `dwr/{model}/{device}/`) of the task section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskTopic {
    Request(i64),
    Status(i64),
    Result(i64),
}

impl TaskTopic {
    /// None when the suffix is not under `tasks/`; Err when it is, but malformed.
    pub fn parse(suffix: &str) -> Option<Result<TaskTopic, String>> {
        let rest = suffix.strip_prefix("tasks/")?;
        let (id, kind) = match rest.split_once('/') {
            Some((id, kind)) => (id, Some(kind)),
            None => (rest, None),
        };
        // Canonical decimal only, so one execution has one topic.
        let Some(id) = id
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0 && n.to_string() == id)
        else {
            return Some(Err(format!("task topic {suffix:?} names no execution id")));
        };
        Some(match kind {
            None => Ok(TaskTopic::Request(id)),
            Some("status") => Ok(TaskTopic::Status(id)),
            Some("result") => Ok(TaskTopic::Result(id)),
            Some(other) => Err(format!("unknown task topic tasks/{id}/{other}")),
        })
    }
}

/// A request as the device receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub v: u32,
    pub ts: i64,
    /// The execution id (also in the topic).
    pub id: i64,
    /// 1 for the first delivery, one more for each retry.
    pub attempt: u32,
    /// The task type, e.g. `reboot`, `ping`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub params: Value,
    /// Unix milliseconds after which the platform no longer waits: a device
    /// that sees it passed does not start the work.
    pub deadline: i64,
}

/// Where an answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerState {
    Accepted,
    InProgress,
    Succeeded,
    Failed,
    /// Not attempted: an unknown type, bad parameters, a command off the
    /// allowlist, a deadline already passed.
    Rejected,
}

impl AnswerState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AnswerState::Succeeded | AnswerState::Failed | AnswerState::Rejected
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerState::Accepted => "accepted",
            AnswerState::InProgress => "in_progress",
            AnswerState::Succeeded => "succeeded",
            AnswerState::Failed => "failed",
            AnswerState::Rejected => "rejected",
        }
    }
}

/// A device's progress or final answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAnswer {
    pub v: u32,
    pub ts: i64,
    pub id: i64,
    pub attempt: u32,
    pub state: AnswerState,
    /// 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The structured result of the type (see [`TaskParams`]'s results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskAnswer {
    pub fn new(request: &TaskRequest, state: AnswerState) -> Self {
        TaskAnswer {
            v: TASK_VERSION,
            ts: 0,
            id: request.id,
            attempt: request.attempt,
            state,
            progress: None,
            message: None,
            result: None,
            error: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why a task message breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("tasks: {0}")]
    Payload(String),
    #[error("tasks: schema version {0}, this platform reads {TASK_VERSION}")]
    Version(u32),
    #[error("tasks: {0}")]
    Limit(String),
}

/// Validates a device's answer on `topic` (its status or result form).
pub fn parse_answer(topic: TaskTopic, payload: &[u8]) -> Result<TaskAnswer, TaskError> {
    if payload.len() > MAX_ANSWER_BYTES {
        return Err(TaskError::Limit(format!(
            "answer of {} bytes, at most {MAX_ANSWER_BYTES}",
            payload.len()
        )));
    }
    if has_escaped_nul(payload) {
        return Err(TaskError::Limit("a string holds a NUL character".into()));
    }
    let answer: TaskAnswer =
        serde_json::from_slice(payload).map_err(|e| TaskError::Payload(e.to_string()))?;
    if answer.v != TASK_VERSION {
        return Err(TaskError::Version(answer.v));
    }
    let id = match topic {
        TaskTopic::Status(id) | TaskTopic::Result(id) => id,
        TaskTopic::Request(_) => {
            return Err(TaskError::Payload(
                "a request topic carries no answer".into(),
            ));
        }
    };
    if answer.id != id {
        return Err(TaskError::Payload(format!(
            "answer names execution {} on the topic of {id}",
            answer.id
        )));
    }
    match (topic, answer.state.is_final()) {
        (TaskTopic::Status(_), true) => {
            return Err(TaskError::Payload(format!(
                "a final state ({}) belongs on …/result",
                answer.state.as_str()
            )));
        }
        (TaskTopic::Result(_), false) => {
            return Err(TaskError::Payload(format!(
                "a progress state ({}) belongs on …/status",
                answer.state.as_str()
            )));
        }
        _ => {}
    }
    if answer.progress.is_some_and(|p| p > 100) {
        return Err(TaskError::Limit("progress above 100".into()));
    }
    for text in [&answer.message, &answer.error].into_iter().flatten() {
        if text.len() > MAX_MESSAGE {
            return Err(TaskError::Limit(format!(
                "message longer than {MAX_MESSAGE} bytes"
            )));
        }
    }
    if answer.result.as_ref().is_some_and(|r| !r.is_object()) {
        return Err(TaskError::Payload("result must be a JSON object".into()));
    }
    Ok(answer)
}

/// A task type with its parameters, as the platform accepts and the device
/// runs it. The request carries the type in `type` and these fields in
/// `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "params", rename_all = "snake_case")]
pub enum TaskParams {
    /// Acknowledged (`in_progress` with the current boot id), then the
    /// device's reboot command; the platform marks it succeeded when the
    /// device is back with another boot id.
    Reboot {},
    Ping(Ping),
    Traceroute(Traceroute),
    DnsLookup(DnsLookup),
    HttpGet(HttpGet),
    /// ModemManager's view of the modem: registration, operator, signal,
    /// band, carrier aggregation.
    ModemStatus {},
    /// A license token to verify (signature, device, expiry) and keep.
    LicenseDeploy(LicenseDeploy),
    /// Forget a deployed license.
    LicenseRevoke(LicenseRevoke),
    /// A desired configuration to apply through the device's hook.
    Configure(Configure),
    /// Upload a bundle (readings, logs, dmesg, configuration, modem) by
    /// HTTP PUT to a one-time URL.
    BlackBox(BlackBox),
    /// A command from the device's own allowlist.
    Shell(Shell),
    /// Open a terminal, port forward or reverse SSH tunnel
    /// ([`crate::session`]); made by the platform's remote-access service
    /// only, never by a job.
    RemoteSession(crate::session::RemoteSession),
    /// Download an image (resumable), check its SHA-256 and signature,
    /// install it through the device's hook, reboot and confirm the new
    /// version, or roll back to the previous one when the first boot fails
    /// its check. Made by a campaign ([`crate::firmware`]), never by a job.
    FirmwareUpdate(crate::firmware::FirmwareUpdate),
    /// Return to the image installed before the last update (a campaign's
    /// health gate found the new one unhealthy).
    FirmwareRollback {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    pub host: String,
    #[serde(default = "default_ping_count")]
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traceroute {
    pub host: String,
    #[serde(default = "default_hops")]
    pub max_hops: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsLookup {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGet {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseDeploy {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseRevoke {
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    pub version: i64,
    pub document: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackBox {
    /// Where to PUT the bundle; valid for this execution only. The
    /// platform makes it when it sends the request: a user does not choose
    /// where a device's black box goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    pub command: String,
}

fn default_ping_count() -> u32 {
    4
}
fn default_hops() -> u32 {
    30
}

impl TaskParams {
    /// Every type name, in the order the console offers them.
    pub const TYPES: [&'static str; 14] = [
        "reboot",
        "ping",
        "traceroute",
        "dns_lookup",
        "http_get",
        "modem_status",
        "license_deploy",
        "license_revoke",
        "configure",
        "black_box",
        "shell",
        "remote_session",
        "firmware_update",
        "firmware_rollback",
    ];

    /// The type and parameters of a request, checked against the limits.
    pub fn from_parts(kind: &str, params: &Value) -> Result<TaskParams, String> {
        if !Self::TYPES.contains(&kind) {
            return Err(format!("unknown task type {kind:?}"));
        }
        let params = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params.clone()
        };
        let tagged = serde_json::json!({ "type": kind, "params": params });
        let parsed: TaskParams =
            serde_json::from_value(tagged).map_err(|e| format!("{kind} parameters: {e}"))?;
        parsed.check()?;
        Ok(parsed)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TaskParams::Reboot {} => "reboot",
            TaskParams::Ping(_) => "ping",
            TaskParams::Traceroute(_) => "traceroute",
            TaskParams::DnsLookup(_) => "dns_lookup",
            TaskParams::HttpGet(_) => "http_get",
            TaskParams::ModemStatus {} => "modem_status",
            TaskParams::LicenseDeploy(_) => "license_deploy",
            TaskParams::LicenseRevoke(_) => "license_revoke",
            TaskParams::Configure(_) => "configure",
            TaskParams::BlackBox(_) => "black_box",
            TaskParams::Shell(_) => "shell",
            TaskParams::RemoteSession(_) => "remote_session",
            TaskParams::FirmwareUpdate(_) => "firmware_update",
            TaskParams::FirmwareRollback {} => "firmware_rollback",
        }
    }

    /// The `params` object of the request.
    pub fn params(&self) -> Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("params").map(Value::take))
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    fn check(&self) -> Result<(), String> {
        let target = |what: &str, value: &str| {
            if value.is_empty() || value.len() > MAX_TARGET {
                Err(format!("{what} must be 1 to {MAX_TARGET} bytes"))
            } else if value.starts_with('-') || value.chars().any(|c| c.is_whitespace()) {
                // Handed to ping/traceroute as an argument: never an option.
                Err(format!("{what} {value:?} is not a host"))
            } else {
                Ok(())
            }
        };
        match self {
            TaskParams::Ping(p) => {
                target("host", &p.host)?;
                if p.count == 0 || p.count > MAX_PING_COUNT {
                    return Err(format!("count must be 1 to {MAX_PING_COUNT}"));
                }
            }
            TaskParams::Traceroute(t) => {
                target("host", &t.host)?;
                if t.max_hops == 0 || t.max_hops > MAX_HOPS {
                    return Err(format!("max_hops must be 1 to {MAX_HOPS}"));
                }
            }
            TaskParams::DnsLookup(d) => target("name", &d.name)?,
            TaskParams::HttpGet(h) => {
                target("url", &h.url)?;
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err("url must be http:// or https://".into());
                }
            }
            TaskParams::LicenseDeploy(l) if l.token.is_empty() || l.token.len() > 4096 => {
                return Err("token must be 1 to 4096 bytes".into());
            }
            TaskParams::LicenseRevoke(l) if l.key.is_empty() || l.key.len() > 64 => {
                return Err("key must be 1 to 64 bytes".into());
            }
            TaskParams::Configure(c) => {
                if c.version < 1 {
                    return Err("version must be at least 1".into());
                }
                if !c.document.is_object() {
                    return Err("document must be a JSON object".into());
                }
                if serde_json::to_vec(&c.document).map_or(0, |v| v.len()) > MAX_CONFIG_BYTES {
                    return Err(format!("document larger than {MAX_CONFIG_BYTES} bytes"));
                }
            }
            TaskParams::Shell(s)
                if s.command.trim().is_empty() || s.command.len() > MAX_COMMAND =>
            {
                return Err(format!("command must be 1 to {MAX_COMMAND} bytes"));
            }
            TaskParams::RemoteSession(s) => s.check()?,
            TaskParams::FirmwareUpdate(f) => f.check()?,
            TaskParams::BlackBox(b) if b.upload_url.as_ref().is_some_and(|u| u.len() > 2048) => {
                return Err("upload_url longer than 2048 bytes".into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// `ping`'s result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PingResult {
    pub host: String,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub raw: String,
}

/// One hop of a traceroute; `address` and `rtt_ms` are absent for `*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub hop: u32,
    pub address: Option<String>,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TracerouteResult {
    pub host: String,
    pub hops: Vec<Hop>,
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DnsResult {
    pub name: String,
    pub answers: Vec<String>,
    pub time_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HttpResult {
    pub url: String,
    pub status: u16,
    pub time_to_first_byte_ms: f64,
    pub total_ms: f64,
    pub bytes: u64,
    pub throughput_bps: f64,
}

/// `modem_status`'s result: what `hardware/lte` carries, and registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModemResult {
    pub registration: Option<String>,
    pub operator: Option<String>,
    pub technology: Option<String>,
    pub band: Option<String>,
    pub rsrp_dbm: Option<f64>,
    pub rsrq_db: Option<f64>,
    pub sinr_db: Option<f64>,
    pub cell_id: Option<u64>,
    pub carrier_aggregation: Vec<crate::CarrierComponent>,
    pub raw: String,
}

/// `black_box`'s result: what was uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BlackBoxResult {
    pub bytes: u64,
    pub sha256: String,
    /// What the bundle holds, e.g. `readings`, `syslog`, `dmesg`, `config`, `modem`.
    pub sections: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ShellResult {
    pub exit_code: Option<i32>,
    pub output: String,
    /// The output was longer than the device keeps and was cut.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_topics_parse() {
        assert_eq!(TaskTopic::parse("hardware/cpu"), None);
        assert_eq!(
            TaskTopic::parse("tasks/12"),
            Some(Ok(TaskTopic::Request(12)))
        );
        assert_eq!(
            TaskTopic::parse("tasks/12/status"),
            Some(Ok(TaskTopic::Status(12)))
        );
        assert_eq!(
            TaskTopic::parse("tasks/12/result"),
            Some(Ok(TaskTopic::Result(12)))
        );
        for bad in [
            "tasks/x/result",
            "tasks/-1",
            "tasks/0",
            "tasks/012",
            "tasks/1/other",
        ] {
            assert!(matches!(TaskTopic::parse(bad), Some(Err(_))), "{bad}");
        }
        let topic = result_topic("311-a1", "00-11-22-33-44-55", 7);
        let (_, _, suffix) = crate::split_topic(&topic).expect("split");
        assert_eq!(TaskTopic::parse(suffix), Some(Ok(TaskTopic::Result(7))));
    }

    #[test]
    fn parameters_are_bounded() {
        let ok = TaskParams::from_parts("ping", &serde_json::json!({"host": "127.0.0.1"}));
        assert_eq!(
            ok,
            Ok(TaskParams::Ping(Ping {
                host: "127.0.0.1".into(),
                count: 4
            }))
        );
        assert_eq!(ok.map(|p| p.kind()), Ok("ping"));
        assert!(TaskParams::from_parts("reboot", &Value::Null).is_ok());
        for (kind, params) in [
            (
                "ping",
                serde_json::json!({"host": "127.0.0.1", "count": 10_000}),
            ),
            ("ping", serde_json::json!({"host": "-f"})),
            ("ping", serde_json::json!({"host": "a b"})),
            ("ping", serde_json::json!({"host": "x", "extra": 1})),
            (
                "traceroute",
                serde_json::json!({"host": "x", "max_hops": 0}),
            ),
            ("http_get", serde_json::json!({"url": "ftp://x"})),
            (
                "configure",
                serde_json::json!({"version": 0, "document": {}}),
            ),
            ("shell", serde_json::json!({"command": " "})),
            ("format_disk", serde_json::json!({})),
        ] {
            assert!(
                TaskParams::from_parts(kind, &params).is_err(),
                "{kind} {params}"
            );
        }
        let params =
            TaskParams::from_parts("dns_lookup", &serde_json::json!({"name": "a.example"}))
                .expect("valid");
        assert_eq!(params.params(), serde_json::json!({"name": "a.example"}));
    }

    #[test]
    fn answers_are_checked_against_their_topic() {
        let request = TaskRequest {
            v: TASK_VERSION,
            ts: 1,
            id: 5,
            attempt: 1,
            kind: "ping".into(),
            params: Value::Null,
            deadline: 2,
        };
        let mut answer = TaskAnswer::new(&request, AnswerState::Succeeded);
        answer.result = Some(serde_json::json!({"sent": 4}));
        let json = answer.to_json();
        assert_eq!(
            parse_answer(TaskTopic::Result(5), &json),
            Ok(answer.clone())
        );
        assert!(parse_answer(TaskTopic::Status(5), &json).is_err());
        assert!(parse_answer(TaskTopic::Result(6), &json).is_err());
        answer.result = Some(serde_json::json!({"raw": "x".repeat(MAX_ANSWER_BYTES)}));
        assert!(matches!(
            parse_answer(TaskTopic::Result(5), &answer.to_json()),
            Err(TaskError::Limit(_))
        ));
        answer.result = Some(serde_json::json!([1]));
        assert!(parse_answer(TaskTopic::Result(5), &answer.to_json()).is_err());
        assert!(matches!(
            parse_answer(
                TaskTopic::Result(5),
                br#"{"v":1,"ts":1,"id":5,"attempt":1,"state":"failed"}"#
            ),
            Err(TaskError::Version(1))
        ));
    }
}
