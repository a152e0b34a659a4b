//! The device contract of `docs/device-protocol.md`, version 1: every topic
//! below `dwr/{model}/{device-id}/`, its payload, QoS and retain flag.
//!
//! The agent and the simulator build payloads with these types, the
//! platform validates what arrives with [`parse`]; one definition keeps the
//! two sides honest.

use serde::{Deserialize, Serialize};

pub mod broker_url;
pub mod firmware;
pub mod session;
pub mod task;

/// The schema version every payload carries as `v`.
pub const VERSION: u32 = 1;
/// The fleet prefix of every device topic.
pub const PREFIX: &str = "dwr";

/// A topic of the contract: the part after `dwr/{model}/{device-id}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Loadavg,
    Memory,
    Cpu,
    Lte,
    Ipv4,
    Traffic,
    Firmware,
    Uptime,
    Syslog,
    Dmesg,
    Status,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Topic::Loadavg,
        Topic::Memory,
        Topic::Cpu,
        Topic::Lte,
        Topic::Ipv4,
        Topic::Traffic,
        Topic::Firmware,
        Topic::Uptime,
        Topic::Syslog,
        Topic::Dmesg,
        Topic::Status,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Topic::Loadavg => "hardware/loadavg",
            Topic::Memory => "hardware/memory",
            Topic::Cpu => "hardware/cpu",
            Topic::Lte => "hardware/lte",
            Topic::Ipv4 => "network/ipv4",
            Topic::Traffic => "network/traffic",
            Topic::Firmware => "system/firmware",
            Topic::Uptime => "system/uptime",
            Topic::Syslog => "log/syslog",
            Topic::Dmesg => "log/dmesg",
            Topic::Status => "status",
        }
    }

    pub fn from_suffix(suffix: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }

    /// Readings and logs are QoS 1 so store-and-forward knows what arrived;
    /// nothing of the contract needs exactly-once.
    pub fn qos(self) -> u8 {
        1
    }

    /// State that a subscriber wants at once is retained: presence, the
    /// addresses and the firmware. Readings and logs are a stream.
    pub fn retain(self) -> bool {
        matches!(self, Topic::Status | Topic::Ipv4 | Topic::Firmware)
    }

    /// The full topic of this kind for one device.
    pub fn for_device(self, model: &str, device_id: &str) -> String {
        format!("{PREFIX}/{model}/{device_id}/{}", self.suffix())
    }
}

/// `dwr/{model}/{device}/{suffix}` split into its parts.
pub fn split_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (model, rest) = rest.split_once('/')?;
    let (device, suffix) = rest.split_once('/')?;
    if model.is_empty() || device.is_empty() || suffix.is_empty() {
        return None;
    }
    Some((model, device, suffix))
}

/// Filters that together match every reading a device sends (each of
/// [`Topic::ALL`], by its first level), and nothing else: what a platform
/// instance behind a broker cluster reads as a stream that may queue.
pub fn reading_filters() -> Vec<String> {
    let mut filters: Vec<String> = Vec::new();
    for topic in Topic::ALL {
        let filter = match topic.suffix().split_once('/') {
            Some((subtree, _)) => format!("{PREFIX}/+/+/{subtree}/#"),
            None => format!("{PREFIX}/+/+/{}", topic.suffix()),
        };
        if !filters.contains(&filter) {
            filters.push(filter);
        }
    }
    filters
}

/// Filters matching what someone waits for: a task's status and result and
/// a remote session's output, but not the platform's own requests and
/// input on the same subtrees. Read apart from [`reading_filters`], so an
/// answer never queues behind a backlog of readings.
pub fn answer_filters() -> [String; 2] {
    [
        format!("{PREFIX}/+/+/tasks/+/+"),
        format!("{PREFIX}/+/+/sessions/+/out"),
    ]
}

/// `hardware/loadavg`: the kernel's run-queue averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loadavg {
    pub v: u32,
    /// Device time, Unix milliseconds.
    pub ts: i64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
}

/// `hardware/memory`, in KiB as /proc/meminfo has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub v: u32,
    pub ts: i64,
    pub total_kb: u64,
    pub available_kb: u64,
    /// 100 × (total − available) / total.
    pub used_percent: f64,
}

/// `hardware/cpu`: busy share of all cores since the previous reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub v: u32,
    pub ts: i64,
    pub usage_percent: f64,
    pub cores: u32,
}

/// One carrier-aggregation component (a secondary cell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierComponent {
    /// E-UTRA or NR band, e.g. `B3`, `n78`.
    pub band: String,
    pub pci: Option<u32>,
    pub rsrp_dbm: Option<f64>,
}

/// `hardware/lte`. Names follow the LwM2M Connectivity Monitoring object
/// (4) where it has them: `radio_signal_strength` (resource 2, dBm, here
/// `rssi_dbm`), `link_quality` (3, here RSRQ), `cell_id` (8), `smnc` (9),
/// `smcc` (10); extended with RSRP, SINR, band and carrier aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lte {
    pub v: u32,
    pub ts: i64,
    /// `lte`, `nr5g-nsa`, `nr5g-sa`, `umts`, `gsm`.
    pub technology: String,
    pub rsrp_dbm: Option<f64>,
    pub rsrq_db: Option<f64>,
    pub sinr_db: Option<f64>,
    pub rssi_dbm: Option<f64>,
    pub band: Option<String>,
    #[serde(default)]
    pub carrier_aggregation: Vec<CarrierComponent>,
    pub operator: Option<String>,
    pub cell_id: Option<u64>,
    pub smcc: Option<u16>,
    pub smnc: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4Address {
    pub interface: String,
    pub address: String,
    pub prefix_len: u8,
}

/// `network/ipv4` (retained): the device's addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4 {
    pub v: u32,
    pub ts: i64,
    pub addresses: Vec<Ipv4Address>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceTraffic {
    pub interface: String,
    /// Counters since boot.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Rates since the previous reading, bits per second.
    pub rx_bps: f64,
    pub tx_bps: f64,
}

/// `network/traffic`: counters and rates per interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub v: u32,
    pub ts: i64,
    pub interfaces: Vec<InterfaceTraffic>,
}

/// `system/firmware` (retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    pub v: u32,
    pub ts: i64,
    pub version: String,
}

/// `system/uptime`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uptime {
    pub v: u32,
    pub ts: i64,
    pub seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub ts: i64,
    pub text: String,
}

/// `log/syslog` and `log/dmesg`: lines since the previous batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub v: u32,
    pub ts: i64,
    pub lines: Vec<LogLine>,
}

/// `status` (retained): `online` at connect, `offline` as the will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub v: u32,
    pub ts: i64,
    /// `online` or `offline`.
    pub state: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) with
    /// `online`: a new one tells the platform a reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// A message that follows the contract.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Loadavg(Loadavg),
    Memory(Memory),
    Cpu(Cpu),
    Lte(Lte),
    Ipv4(Ipv4),
    Traffic(Traffic),
    Firmware(Firmware),
    Uptime(Uptime),
    Syslog(LogBatch),
    Dmesg(LogBatch),
    Status(Status),
}

/// Why a message breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("topic {0:?} is not dwr/{{model}}/{{device-id}}/…")]
    Topic(String),
    #[error("unknown topic suffix {0:?}")]
    UnknownTopic(String),
    #[error("{topic}: {message}")]
    Payload {
        topic: &'static str,
        message: String,
    },
    #[error("{topic}: schema version {found}, this platform reads {VERSION}")]
    Version { topic: &'static str, found: u32 },
    #[error("status: state must be online or offline, not {0:?}")]
    State(String),
    /// Within the schema, but past what one device may make the platform
    /// keep (see the limits below).
    #[error("{topic}: {message}")]
    Limit {
        topic: &'static str,
        message: String,
    },
}

/// Interfaces in one `network/traffic` (each adds two metric series).
pub const MAX_INTERFACES: usize = 32;
/// Addresses in one `network/ipv4`.
pub const MAX_ADDRESSES: usize = 64;
/// Longest interface name: Linux allows 15 bytes; a little room for others.
pub const MAX_INTERFACE_NAME: usize = 32;
/// Log lines in one `log/syslog` or `log/dmesg` message.
pub const MAX_LOG_LINES: usize = 500;
/// Longest log line kept, in bytes.
pub const MAX_LOG_LINE: usize = 4096;
/// Longest other string (firmware version, band, operator), in bytes.
pub const MAX_TEXT: usize = 128;

/// Whether a payload's JSON carries a NUL character (`\u0000`), which no
/// field may hold (PostgreSQL refuses it in text). A raw NUL byte is not
/// JSON at all, and serde refuses it already.
pub(crate) fn has_escaped_nul(payload: &[u8]) -> bool {
    payload.windows(6).enumerate().any(|(i, w)| {
        w == br"\u0000" && {
            // Escaped only if the backslash itself is not escaped: an odd
            // run of backslashes ends here.
            let run = payload[..=i]
                .iter()
                .rev()
                .take_while(|b| **b == b'\\')
                .count();
            run % 2 == 1
        }
    })
}

fn interface_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

impl Reading {
    /// What one message may make the platform keep: metric names built
    /// from device data are short and tame, lists are bounded.
    fn check_limits(&self) -> Result<(), String> {
        let text = |what: &str, value: Option<&str>| match value {
            Some(v) if v.len() > MAX_TEXT => Err(format!("{what} longer than {MAX_TEXT} bytes")),
            _ => Ok(()),
        };
        match self {
            Reading::Traffic(t) => {
                if t.interfaces.len() > MAX_INTERFACES {
                    return Err(format!("more than {MAX_INTERFACES} interfaces"));
                }
                if let Some(bad) = t
                    .interfaces
                    .iter()
                    .find(|i| !interface_name_ok(&i.interface))
                {
                    return Err(format!(
                        "interface name {:?} is not 1 to {MAX_INTERFACE_NAME} of A-Z a-z 0-9 _ - . : @",
                        bad.interface.chars().take(40).collect::<String>()
                    ));
                }
            }
            Reading::Ipv4(a) => {
                if a.addresses.len() > MAX_ADDRESSES {
                    return Err(format!("more than {MAX_ADDRESSES} addresses"));
                }
                if let Some(bad) = a
                    .addresses
                    .iter()
                    .find(|a| !interface_name_ok(&a.interface) || a.address.len() > MAX_TEXT)
                {
                    return Err(format!(
                        "address entry {:?} is out of bounds",
                        bad.interface.chars().take(40).collect::<String>()
                    ));
                }
            }
            Reading::Syslog(b) | Reading::Dmesg(b) => {
                if b.lines.len() > MAX_LOG_LINES {
                    return Err(format!("more than {MAX_LOG_LINES} lines in one message"));
                }
                if b.lines.iter().any(|l| l.text.len() > MAX_LOG_LINE) {
                    return Err(format!("a line longer than {MAX_LOG_LINE} bytes"));
                }
            }
            Reading::Firmware(f) => text("version", Some(&f.version))?,
            Reading::Status(s) => text("boot_id", s.boot_id.as_deref())?,
            Reading::Lte(l) => {
                text("band", l.band.as_deref())?;
                text("operator", l.operator.as_deref())?;
                text("technology", Some(&l.technology))?;
                if l.carrier_aggregation.len() > 16 {
                    return Err("more than 16 carrier components".into());
                }
            }
            Reading::Loadavg(_) | Reading::Memory(_) | Reading::Cpu(_) | Reading::Uptime(_) => {}
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    topic: Topic,
    payload: &[u8],
) -> Result<T, ContractError> {
    serde_json::from_slice(payload).map_err(|e| ContractError::Payload {
        topic: topic.suffix(),
        message: e.to_string(),
    })
}

/// Validates one message by its topic suffix.
pub fn parse(suffix: &str, payload: &[u8]) -> Result<Reading, ContractError> {
    let topic =
        Topic::from_suffix(suffix).ok_or_else(|| ContractError::UnknownTopic(suffix.to_owned()))?;
    if has_escaped_nul(payload) {
        return Err(ContractError::Limit {
            topic: topic.suffix(),
            message: "a string holds a NUL character".into(),
        });
    }
    let reading = match topic {
        Topic::Loadavg => Reading::Loadavg(decode(topic, payload)?),
        Topic::Memory => Reading::Memory(decode(topic, payload)?),
        Topic::Cpu => Reading::Cpu(decode(topic, payload)?),
        Topic::Lte => Reading::Lte(decode(topic, payload)?),
        Topic::Ipv4 => Reading::Ipv4(decode(topic, payload)?),
        Topic::Traffic => Reading::Traffic(decode(topic, payload)?),
        Topic::Firmware => Reading::Firmware(decode(topic, payload)?),
        Topic::Uptime => Reading::Uptime(decode(topic, payload)?),
        Topic::Syslog => Reading::Syslog(decode(topic, payload)?),
        Topic::Dmesg => Reading::Dmesg(decode(topic, payload)?),
        Topic::Status => Reading::Status(decode(topic, payload)?),
    };
    let version = reading.version();
    if version != VERSION {
        return Err(ContractError::Version {
            topic: topic.suffix(),
            found: version,
        });
    }
    if let Reading::Status(s) = &reading
        && s.state != "online"
        && s.state != "offline"
    {
        return Err(ContractError::State(s.state.clone()));
    }
    reading
        .check_limits()
        .map_err(|message| ContractError::Limit {
            topic: topic.suffix(),
            message,
        })?;
    Ok(reading)
}

impl Reading {
    pub fn topic(&self) -> Topic {
        match self {
            Reading::Loadavg(_) => Topic::Loadavg,
            Reading::Memory(_) => Topic::Memory,
            Reading::Cpu(_) => Topic::Cpu,
            Reading::Lte(_) => Topic::Lte,
            Reading::Ipv4(_) => Topic::Ipv4,
            Reading::Traffic(_) => Topic::Traffic,
            Reading::Firmware(_) => Topic::Firmware,
            Reading::Uptime(_) => Topic::Uptime,
            Reading::Syslog(_) => Topic::Syslog,
            Reading::Dmesg(_) => Topic::Dmesg,
            Reading::Status(_) => Topic::Status,
        }
    }

    fn version(&self) -> u32 {
        match self {
            Reading::Loadavg(r) => r.v,
            Reading::Memory(r) => r.v,
            Reading::Cpu(r) => r.v,
            Reading::Lte(r) => r.v,
            Reading::Ipv4(r) => r.v,
            Reading::Traffic(r) => r.v,
            Reading::Firmware(r) => r.v,
            Reading::Uptime(r) => r.v,
            Reading::Syslog(r) | Reading::Dmesg(r) => r.v,
            Reading::Status(r) => r.v,
        }
    }

    /// The device's timestamp, Unix milliseconds.
    pub fn timestamp(&self) -> i64 {
        match self {
            Reading::Loadavg(r) => r.ts,
            Reading::Memory(r) => r.ts,
            Reading::Cpu(r) => r.ts,
            Reading::Lte(r) => r.ts,
            Reading::Ipv4(r) => r.ts,
            Reading::Traffic(r) => r.ts,
            Reading::Firmware(r) => r.ts,
            Reading::Uptime(r) => r.ts,
            Reading::Syslog(r) | Reading::Dmesg(r) => r.ts,
            Reading::Status(r) => r.ts,
        }
    }

    /// The numeric series this message adds to, as (metric, value): what
    /// charts draw and alarm rules watch. Metric names are stable API.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let m = |name: &str, v: f64| (name.to_owned(), v);
        match self {
            Reading::Loadavg(r) => vec![
                m("load.1m", r.load1),
                m("load.5m", r.load5),
                m("load.15m", r.load15),
            ],
            Reading::Memory(r) => vec![
                m("memory.used_percent", r.used_percent),
                m("memory.available_kb", r.available_kb as f64),
            ],
            Reading::Cpu(r) => vec![m("cpu.usage_percent", r.usage_percent)],
            Reading::Lte(r) => [
                ("lte.rsrp_dbm", r.rsrp_dbm),
                ("lte.rsrq_db", r.rsrq_db),
                ("lte.sinr_db", r.sinr_db),
                ("lte.rssi_dbm", r.rssi_dbm),
            ]
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| m(name, v)))
            .collect(),
            Reading::Traffic(r) => r
                .interfaces
                .iter()
                .flat_map(|i| {
                    [
                        m(&format!("traffic.{}.rx_bps", i.interface), i.rx_bps),
                        m(&format!("traffic.{}.tx_bps", i.interface), i.tx_bps),
                    ]
                })
                .collect(),
            Reading::Uptime(r) => vec![m("uptime.seconds", r.seconds as f64)],
            Reading::Ipv4(_)
            | Reading::Firmware(_)
            | Reading::Syslog(_)
            | Reading::Dmesg(_)
            | Reading::Status(_) => Vec::new(),
        }
    }

    /// The payload as the contract writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let json = match self {
            Reading::Loadavg(r) => serde_json::to_vec(r),
            Reading::Memory(r) => serde_json::to_vec(r),
            Reading::Cpu(r) => serde_json::to_vec(r),
            Reading::Lte(r) => serde_json::to_vec(r),
            Reading::Ipv4(r) => serde_json::to_vec(r),
            Reading::Traffic(r) => serde_json::to_vec(r),
            Reading::Firmware(r) => serde_json::to_vec(r),
            Reading::Uptime(r) => serde_json::to_vec(r),
            Reading::Syslog(r) | Reading::Dmesg(r) => serde_json::to_vec(r),
            Reading::Status(r) => serde_json::to_vec(r),
        };
        // Plain structs of numbers and strings always serialise.
        json.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_and_answers_are_read_apart_and_nothing_twice() {
        let count = |filters: &[String], topic: &str| {
            filters
                .iter()
                .filter(|f| mqtt::topic::matches(f, topic))
                .count()
        };
        let (readings, answers) = (reading_filters(), answer_filters());
        for topic in Topic::ALL {
            let full = topic.for_device("311-a1", "00-11-22-33-44-55");
            assert_eq!(count(&readings, &full), 1, "{full}");
            assert_eq!(count(&answers, &full), 0, "{full}");
        }
        let device = ("311-a1", "00-11-22-33-44-55");
        for answer in [
            task::status_topic(device.0, device.1, 7),
            task::result_topic(device.0, device.1, 7),
            session::output_topic(device.0, device.1, "s1"),
        ] {
            assert_eq!(count(&answers, &answer), 1, "{answer}");
            assert_eq!(count(&readings, &answer), 0, "{answer}");
        }
        // The platform's own publications come back to neither.
        for own in [
            task::request_topic(device.0, device.1, 7),
            session::input_topic(device.0, device.1, "s1"),
        ] {
            assert_eq!(count(&answers, &own) + count(&readings, &own), 0, "{own}");
        }
    }

    #[test]
    fn topics_split_and_round_trip() {
        for topic in Topic::ALL {
            let full = topic.for_device("311-a1", "00-11-22-33-44-55");
            let (model, device, suffix) = split_topic(&full).expect("split");
            assert_eq!((model, device), ("311-a1", "00-11-22-33-44-55"));
            assert_eq!(Topic::from_suffix(suffix), Some(topic));
        }
        assert_eq!(split_topic("dwr/311-a1"), None);
        assert_eq!(split_topic("other/311-a1/x/status"), None);
    }

    #[test]
    fn payloads_are_validated() {
        let memory =
            br#"{"v":1,"ts":1700000000000,"total_kb":1000,"available_kb":250,"used_percent":75.0}"#;
        let reading = parse("hardware/memory", memory).expect("valid");
        assert_eq!(
            reading.metrics()[0],
            ("memory.used_percent".to_owned(), 75.0)
        );
        assert_eq!(parse("hardware/memory", &reading.to_json()), Ok(reading));
        assert!(matches!(
            parse("hardware/memory", b"{}"),
            Err(ContractError::Payload { .. })
        ));
        assert!(matches!(
            parse(
                "hardware/memory",
                br#"{"v":2,"ts":1,"total_kb":1,"available_kb":1,"used_percent":0}"#
            ),
            Err(ContractError::Version { found: 2, .. })
        ));
        assert!(matches!(
            parse("hardware/fan", b"{}"),
            Err(ContractError::UnknownTopic(_))
        ));
        assert!(matches!(
            parse("status", br#"{"v":1,"ts":1,"state":"sleepy"}"#),
            Err(ContractError::State(_))
        ));
        let lte = br#"{"v":1,"ts":1,"technology":"lte","rsrp_dbm":-112.0,"rsrq_db":-14.0,"sinr_db":1.5,"rssi_dbm":null,"band":"B3","carrier_aggregation":[{"band":"B7","pci":12,"rsrp_dbm":-115.0}],"operator":"Telia","cell_id":123456,"smcc":244,"smnc":91}"#;
        let lte = parse("hardware/lte", lte).expect("lte");
        assert_eq!(lte.metrics().len(), 3, "absent values are not readings");
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    fn traffic(interfaces: &[&str]) -> Vec<u8> {
        Reading::Traffic(Traffic {
            v: VERSION,
            ts: 1,
            interfaces: interfaces
                .iter()
                .map(|name| InterfaceTraffic {
                    interface: (*name).to_owned(),
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_bps: 0.0,
                    tx_bps: 0.0,
                })
                .collect(),
        })
        .to_json()
    }

    #[test]
    fn metric_names_from_device_data_stay_tame() {
        assert!(parse("network/traffic", &traffic(&["wwan0", "br-lan", "eth0.2"])).is_ok());
        let many: Vec<String> = (0..=MAX_INTERFACES).map(|i| format!("if{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for bad in [
            traffic(&many),
            traffic(&["x".repeat(MAX_INTERFACE_NAME + 1).as_str()]),
            traffic(&["a/b"]),
            traffic(&["a b"]),
            traffic(&[""]),
            traffic(&["rx_bps\u{1F4A9}"]),
        ] {
            assert!(
                matches!(
                    parse("network/traffic", &bad),
                    Err(ContractError::Limit { .. })
                ),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn log_batches_are_bounded_and_nul_is_refused() {
        let batch = |lines: usize, len: usize| {
            Reading::Syslog(LogBatch {
                v: VERSION,
                ts: 1,
                lines: (0..lines)
                    .map(|_| LogLine {
                        ts: 1,
                        text: "x".repeat(len),
                    })
                    .collect(),
            })
            .to_json()
        };
        assert!(parse("log/syslog", &batch(MAX_LOG_LINES, 100)).is_ok());
        assert!(parse("log/syslog", &batch(MAX_LOG_LINES + 1, 1)).is_err());
        assert!(parse("log/syslog", &batch(1, MAX_LOG_LINE + 1)).is_err());
        let nul = br#"{"v":1,"ts":1,"lines":[{"ts":1,"text":"a\u0000b"}]}"#;
        assert!(matches!(
            parse("log/syslog", nul),
            Err(ContractError::Limit { .. })
        ));
        // An escaped backslash before "u0000" is text, not a NUL.
        let text = br#"{"v":1,"ts":1,"lines":[{"ts":1,"text":"C:\\u0000"}]}"#;
        assert!(parse("log/syslog", text).is_ok());
        let firmware = format!(
            r#"{{"v":1,"ts":1,"version":"{}"}}"#,
            "9".repeat(MAX_TEXT + 1)
        );
        assert!(parse("system/firmware", firmware.as_bytes()).is_err());
    }
}
