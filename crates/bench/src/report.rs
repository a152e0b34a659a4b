//! What a run measured, as a table line for people and JSON for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// The result of one scenario run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub connections: usize,
    pub payload_bytes: usize,
    pub qos: u8,
    /// Target publish rate (messages per second, all publishers), None for max.
    pub rate: Option<u64>,
    pub duration_secs: f64,
    /// PUBLISH packets written by the publishers.
    pub sent: u64,
    /// Of those, acknowledged by the broker (QoS 1 and 2).
    pub acked: u64,
    /// PUBLISH packets the subscribers received.
    pub received: u64,
    /// Deliveries the subscribers should have had for what was acknowledged.
    pub expected: u64,
    /// Expected but not received (QoS ≥ 1 only; QoS 0 may drop by design).
    pub lost: u64,
    /// Received more than once (same stream and sequence).
    pub duplicates: u64,
    /// Received out of order within a stream.
    pub out_of_order: u64,
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
    pub latency: Latency,
    /// Connections per second (`connect`; `idle`: while opening them).
    pub connects_per_sec: f64,
    /// Connections held (`idle`).
    pub held: usize,
    /// At the maximum rate: messages each publisher may have on their way
    /// (per subscriber it fans out to); None at a fixed rate.
    pub window: Option<usize>,
    pub broker_cpu_percent: Option<f64>,
    /// The broker's CPU time per delivered message, microseconds (the same
    /// figure as CPU-seconds per million messages).
    pub broker_cpu_us_per_message: Option<f64>,
    /// This generator's own CPU use over the run, percent of one core: near
    /// the machine's free cores, the generator was the limit.
    pub generator_cpu_percent: Option<f64>,
    pub broker_peak_rss_kib: Option<u64>,
    /// Broker memory added per held connection (`idle`), bytes.
    pub broker_bytes_per_connection: Option<f64>,
}

impl Report {
    /// One human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} conns={} payload={}B qos={} rate={} | sent {:.0}/s received {:.0}/s lost {} dup {} ooo {}",
            self.scenario,
            self.connections,
            self.payload_bytes,
            self.qos,
            self.rate.map_or("max".to_owned(), |r| r.to_string()),
            self.sent_per_sec,
            self.received_per_sec,
            self.lost,
            self.duplicates,
            self.out_of_order
        );
        if self.latency.samples > 0 {
            s.push_str(&format!(
                " | latency p50 {}us p99 {}us p99.9 {}us max {}us",
                self.latency.p50_us, self.latency.p99_us, self.latency.p999_us, self.latency.max_us
            ));
        }
        if self.connects_per_sec > 0.0 {
            s.push_str(&format!(" | {:.0} connects/s", self.connects_per_sec));
        }
        if self.held > 0 {
            s.push_str(&format!(" | held {}", self.held));
        }
        if let Some(cpu) = self.broker_cpu_percent {
            s.push_str(&format!(" | broker cpu {cpu:.0}%"));
        }
        if let Some(us) = self.broker_cpu_us_per_message {
            s.push_str(&format!(" ({us:.1} us/message)"));
        }
        if let Some(cpu) = self.generator_cpu_percent {
            s.push_str(&format!(" | generator cpu {cpu:.0}%"));
        }
        if let Some(rss) = self.broker_peak_rss_kib {
            s.push_str(&format!(" peak rss {} MiB", rss / 1024));
        }
        if let Some(b) = self.broker_bytes_per_connection {
            s.push_str(&format!(" | {b:.0} B/connection"));
        }
        s
    }
}
