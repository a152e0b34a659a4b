//! CPU time and memory of the broker process, read from `/proc/PID`.

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessSample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessSample {
    /// Reads `/proc/PID`; None when the process is gone or /proc is absent.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; fields count from after ')'.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(ProcessSample {
            cpu_ticks: utime + stime,
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        })
    }

    /// CPU time used between two samples, seconds.
    pub fn cpu_seconds(before: &Self, after: &Self) -> f64 {
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SECOND
    }

    /// CPU use between two samples, in percent of one core.
    pub fn cpu_percent(before: &Self, after: &Self, seconds: f64) -> f64 {
        if seconds <= 0.0 {
            return 0.0;
        }
        Self::cpu_seconds(before, after) / seconds * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let sample = ProcessSample::read(std::process::id()).expect("/proc/self");
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_rss_kib >= sample.rss_kib);
    }
}
