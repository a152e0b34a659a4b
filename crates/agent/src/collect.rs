//! Readings from the running Linux system: /proc for load, memory, CPU,
//! traffic and uptime; `ip -j` for addresses; os-release (or another file)
//! for the firmware; ModemManager (`mmcli -J`) for LTE where it is present;
//! a followed log file for syslog. What a system lacks is simply not read.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use device_protocol::{
    Cpu, Firmware, InterfaceTraffic, Ipv4, Ipv4Address, Loadavg, LogBatch, LogLine, Lte, Memory,
    Reading, Traffic, Uptime, VERSION,
};

use crate::now_millis;

/// Keeps what rates need between readings.
pub struct SystemCollector {
    proc_root: PathBuf,
    last_cpu: Option<(u64, u64)>,
    last_traffic: HashMap<String, (u64, u64, i64)>,
    log_file: Option<PathBuf>,
    log_offset: Option<u64>,
    /// The kernel ring buffer, opened once; None after it could not be.
    kmsg: Option<std::fs::File>,
    kmsg_tried: bool,
}

impl SystemCollector {
    pub fn new(log_file: Option<PathBuf>) -> Self {
        SystemCollector {
            proc_root: PathBuf::from("/proc"),
            last_cpu: None,
            last_traffic: HashMap::new(),
            log_file,
            log_offset: None,
            kmsg: None,
            kmsg_tried: false,
        }
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_root.join(name)).ok()
    }

    pub fn loadavg(&self) -> Option<Reading> {
        let text = self.read("loadavg")?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
        Some(Reading::Loadavg(Loadavg {
            v: VERSION,
            ts: now_millis(),
            load1: fields.next()??,
            load5: fields.next()??,
            load15: fields.next()??,
        }))
    }

    pub fn memory(&self) -> Option<Reading> {
        let text = self.read("meminfo")?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        };
        let total = field("MemTotal:")?;
        let available = field("MemAvailable:")?;
        Some(Reading::Memory(Memory {
            v: VERSION,
            ts: now_millis(),
            total_kb: total,
            available_kb: available,
            used_percent: if total == 0 {
                0.0
            } else {
                100.0 * (total.saturating_sub(available)) as f64 / total as f64
            },
        }))
    }

    /// Busy share since the previous call (the first call has none).
    pub fn cpu(&mut self) -> Option<Reading> {
        let text = self.read("stat")?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        let values: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
        let total: u64 = values.iter().take(8).sum();
        let cores = text
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let previous = self.last_cpu.replace((idle, total));
        let (prev_idle, prev_total) = previous?;
        let dt = total.saturating_sub(prev_total);
        let busy = dt.saturating_sub(idle.saturating_sub(prev_idle));
        Some(Reading::Cpu(Cpu {
            v: VERSION,
            ts: now_millis(),
            usage_percent: if dt == 0 {
                0.0
            } else {
                100.0 * busy as f64 / dt as f64
            },
            cores: cores as u32,
        }))
    }

    pub fn uptime(&self) -> Option<Reading> {
        let text = self.read("uptime")?;
        let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
        Some(Reading::Uptime(Uptime {
            v: VERSION,
            ts: now_millis(),
            seconds: seconds as u64,
        }))
    }

    /// Counters of every interface but loopback, and rates since the last call.
    pub fn traffic(&mut self) -> Option<Reading> {
        let text = self.read("net/dev")?;
        let now = now_millis();
        let mut interfaces = Vec::new();
        for line in text.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name == "lo" {
                continue;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let (Some(rx), Some(tx)) = (fields.first().copied(), fields.get(8).copied()) else {
                continue;
            };
            let (rx_bps, tx_bps) = match self.last_traffic.insert(name.to_owned(), (rx, tx, now)) {
                Some((prx, ptx, pts)) if now > pts => {
                    let secs = (now - pts) as f64 / 1000.0;
                    (
                        rx.saturating_sub(prx) as f64 * 8.0 / secs,
                        tx.saturating_sub(ptx) as f64 * 8.0 / secs,
                    )
                }
                _ => (0.0, 0.0),
            };
            interfaces.push(InterfaceTraffic {
                interface: name.to_owned(),
                rx_bytes: rx,
                tx_bytes: tx,
                rx_bps,
                tx_bps,
            });
        }
        Some(Reading::Traffic(Traffic {
            v: VERSION,
            ts: now,
            interfaces,
        }))
    }

    /// IPv4 addresses from `ip -j -4 addr` (iproute2).
    pub fn ipv4(&self) -> Option<Reading> {
        let output = Command::new("ip")
            .args(["-j", "-4", "addr"])
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let mut addresses = Vec::new();
        for interface in json.as_array()? {
            let name = interface["ifname"].as_str().unwrap_or_default();
            for info in interface["addr_info"].as_array().into_iter().flatten() {
                if let (Some(address), Some(prefix)) =
                    (info["local"].as_str(), info["prefixlen"].as_u64())
                {
                    addresses.push(Ipv4Address {
                        interface: name.to_owned(),
                        address: address.to_owned(),
                        prefix_len: prefix as u8,
                    });
                }
            }
        }
        Some(Reading::Ipv4(Ipv4 {
            v: VERSION,
            ts: now_millis(),
            addresses,
        }))
    }

    /// The signal of the first modem ModemManager knows, if any.
    pub fn lte(&self) -> Option<Reading> {
        let run = |args: &[&str]| -> Option<serde_json::Value> {
            let out = Command::new("mmcli").args(args).output().ok()?;
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).ok())?
        };
        let modem = run(&["-J", "-m", "any"])?;
        let signal = run(&["-J", "-m", "any", "--signal-get"]).unwrap_or_default();
        let m = &modem["modem"];
        let lte = &signal["modem"]["signal"]["lte"];
        let number = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .or(v.as_f64())
        };
        let technology = m["generic"]["access-technologies"][0]
            .as_str()
            .unwrap_or("lte");
        Some(Reading::Lte(Lte {
            v: VERSION,
            ts: now_millis(),
            technology: technology.to_ascii_lowercase(),
            rsrp_dbm: number(&lte["rsrp"]),
            rsrq_db: number(&lte["rsrq"]),
            sinr_db: number(&lte["snr"]),
            rssi_dbm: number(&lte["rssi"]),
            band: None,
            carrier_aggregation: Vec::new(),
            operator: m["3gpp"]["operator-name"].as_str().map(str::to_owned),
            cell_id: None,
            smcc: None,
            smnc: None,
        }))
    }

    /// New lines of the followed log file since the last call. The first
    /// call starts at the file's end: history is not the black box's job.
    pub fn syslog(&mut self) -> Option<Reading> {
        let path = self.log_file.as_ref()?;
        let mut file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let start = match self.log_offset {
            Some(offset) if offset <= len => offset,
            // Rotated or truncated: read the new file from its start.
            Some(_) => 0,
            None => len,
        };
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut text = String::new();
        // At most 256 KiB a round, so one noisy minute cannot flood the link.
        file.by_ref()
            .take(256 * 1024)
            .read_to_string(&mut text)
            .ok()?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.log_offset = Some(start + complete as u64);
        let now = now_millis();
        let lines: Vec<LogLine> = text[..complete]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| LogLine {
                ts: now,
                text: l.to_owned(),
            })
            .collect();
        (!lines.is_empty()).then_some(Reading::Syslog(LogBatch {
            v: VERSION,
            ts: now,
            lines,
        }))
    }
}

impl SystemCollector {
    /// Kernel messages since the last call, from /dev/kmsg (readable with
    /// CAP_SYSLOG or where `kernel.dmesg_restrict` is 0; absent otherwise).
    /// The first call starts at the buffer's end.
    pub fn dmesg(&mut self) -> Option<Reading> {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.kmsg_tried {
            self.kmsg_tried = true;
            // O_NONBLOCK: a read with nothing new returns at once.
            const O_NONBLOCK: i32 = 0o4000;
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(O_NONBLOCK)
                .open("/dev/kmsg")
            {
                Ok(mut file) => {
                    if file.seek(SeekFrom::End(0)).is_ok() {
                        self.kmsg = Some(file);
                    }
                }
                Err(e) => tracing::info!(error = %e, "no kernel messages (/dev/kmsg)"),
            }
        }
        self.kmsg.as_ref()?;
        let now = now_millis();
        let boot = self
            .read("uptime")
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .map(|up| now - (up * 1000.0) as i64)
            .unwrap_or(now);
        let file = self.kmsg.as_mut()?;
        let mut lines = Vec::new();
        let mut record = vec![0u8; 8192];
        while lines.len() < 500 {
            match file.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    // "priority,sequence,microseconds,flags;message"
                    let Some((header, message)) = text.split_once(';') else {
                        continue;
                    };
                    let micros = header
                        .split(',')
                        .nth(2)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    lines.push(LogLine {
                        ts: boot + micros / 1000,
                        text: message.lines().next().unwrap_or_default().to_owned(),
                    });
                }
                // Overwritten records (EPIPE) are skipped; WouldBlock means done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => continue,
                Err(_) => break,
            }
        }
        (!lines.is_empty()).then_some(Reading::Dmesg(LogBatch {
            v: VERSION,
            ts: now,
            lines,
        }))
    }
}

/// The firmware version: `VERSION_ID` (or `PRETTY_NAME`) of an os-release
/// file, or the first line of any other file.
pub fn firmware(path: &Path) -> Option<Reading> {
    Some(Reading::Firmware(Firmware {
        v: VERSION,
        ts: now_millis(),
        version: firmware_version(path)?,
    }))
}

/// The version itself, as [`firmware`] reports it.
pub fn firmware_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    field("VERSION_ID=")
        .or_else(|| field("PRETTY_NAME="))
        .or_else(|| text.lines().next().map(|l| l.trim().to_owned()))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let mut c = SystemCollector::new(None);
        for reading in [c.loadavg(), c.memory(), c.uptime(), c.traffic()] {
            let reading = reading.expect("a Linux /proc");
            let json = reading.to_json();
            let parsed = device_protocol::parse(reading.topic().suffix(), &json)
                .expect("what the agent sends, the platform accepts");
            assert_eq!(parsed.topic(), reading.topic());
        }
        assert!(
            c.cpu().is_none(),
            "the first CPU reading has no interval yet"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(c.cpu().is_some());
    }

    #[test]
    fn reads_new_kernel_messages_where_permitted() {
        let mut c = SystemCollector::new(None);
        let _ = c.dmesg();
        let marker = format!("telemark-agent-test {}", now_millis());
        // Writing to /dev/kmsg needs root, as reading may: else the test
        // has nothing to check on this machine.
        let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") else {
            eprintln!("/dev/kmsg not writable here; skipped");
            return;
        };
        if c.kmsg.is_none() || std::io::Write::write_all(&mut kmsg, marker.as_bytes()).is_err() {
            eprintln!("/dev/kmsg not usable here; skipped");
            return;
        }
        // Some sandboxed kernels hand a record over only once the next one
        // is written.
        let _ = std::io::Write::write_all(&mut kmsg, b"telemark-agent-test end");
        // The kernel may hand it over a moment later.
        let mut seen = Vec::new();
        for _ in 0..50 {
            if let Some(Reading::Dmesg(batch)) = c.dmesg() {
                seen.extend(batch.lines.into_iter().map(|l| l.text));
            }
            if seen.contains(&marker) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{marker} not read back; read {seen:?}");
    }

    #[test]
    fn follows_a_log_file_from_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("messages");
        std::fs::write(&log, "old line\n").expect("write");
        let mut c = SystemCollector::new(Some(log.clone()));
        assert!(c.syslog().is_none());
        std::fs::write(&log, "old line\nnew one\nhalf").expect("write");
        let Some(Reading::Syslog(batch)) = c.syslog() else {
            panic!("a batch")
        };
        assert_eq!(batch.lines.len(), 1);
        assert_eq!(batch.lines[0].text, "new one");
    }
}
