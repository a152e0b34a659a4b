//! Telemark's MQTT load generator. It speaks MQTT through the project's own
//! codec on tokio, so the generator is cheap next to the broker it measures.
//!
//! Every scenario connects to one broker address (127.0.0.1 only in tests and
//! benchmarks), runs for a bounded time and returns a [`Report`]: messages
//! sent, acknowledged and received per second, loss, latency percentiles
//! from an HDR histogram (send time travels in the payload), and the broker
//! process's CPU and memory read from `/proc`.

mod client;
mod payload;
mod process;
mod report;
mod scenario;

pub use payload::{STAMP_LEN, Stamp};
pub use process::ProcessSample;
pub use report::{Latency, Report};
pub use scenario::{Options, Scenario, run};

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the broker refused the connection: {0}")]
    Refused(mqtt::ReasonCode),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent a bad packet: {0}")]
    Decode(#[from] mqtt::DecodeError),
    #[error("the broker closed the connection")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{0}")]
    Options(String),
}
