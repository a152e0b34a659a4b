//! The agent's provisioning file: who the device is and where its broker is.
//!
//! ```toml
//! broker = "mqtts://mqtt.example.net:8883"
//! device_id = "00-11-22-33-44-55"
//! model = "311-a1"
//! secret = "…"                       # or certificate_file + key_file
//! ca_file = "/etc/telemark/ca.pem"   # for mqtts://
//! buffer_dir = "/var/lib/telemark-agent"
//! ```

use std::path::{Path, PathBuf};

pub use device_protocol::broker_url::BrokerAddress;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    /// `mqtt://host:port` or `mqtts://host:port`; several, comma-separated,
    /// for a broker cluster: the agent starts at one picked by its device
    /// id and moves to the next after a failed connection.
    pub broker: String,
    /// The device id: its MAC, `00-11-22-33-44-55`.
    pub device_id: String,
    /// The model's topic segment, e.g. `311-a1`.
    pub model: String,
    pub secret: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Where readings wait while the broker is unreachable.
    #[serde(default = "default_buffer_dir")]
    pub buffer_dir: PathBuf,
    /// Readings kept at most; the oldest go first.
    #[serde(default = "default_buffer_capacity")]
    pub buffer_capacity: usize,
    /// Where the firmware version is read (`VERSION_ID` or `PRETTY_NAME` of
    /// an os-release file, or the first line of any other file).
    #[serde(default = "default_firmware_file")]
    pub firmware_file: PathBuf,
    /// A log file to follow for `log/syslog` (none: no syslog topic).
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub intervals: Intervals,
    /// What remote tasks may do here: reboot command, shell allowlist,
    /// configuration hook, license key.
    #[serde(default)]
    pub tasks: crate::tasks::TaskSettings,
    /// Remote access here: terminal command, ports a port forward may
    /// reach, reverse SSH.
    #[serde(default)]
    pub remote: crate::remote::RemoteSettings,
    /// Firmware updates here: install, first-boot check, confirm and
    /// rollback hooks, keys, download limit.
    #[serde(default)]
    pub firmware: crate::firmware::FirmwareSettings,
}

/// Seconds between readings of each group.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Intervals {
    pub hardware: u64,
    pub network: u64,
    pub lte: u64,
    pub uptime: u64,
    pub logs: u64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            hardware: 10,
            network: 10,
            lte: 30,
            uptime: 60,
            logs: 10,
        }
    }
}

fn default_buffer_dir() -> PathBuf {
    PathBuf::from("/var/lib/telemark-agent")
}
fn default_buffer_capacity() -> usize {
    100_000
}
fn default_firmware_file() -> PathBuf {
    PathBuf::from("/etc/os-release")
}

impl Provisioning {
    pub fn load(path: &Path) -> Result<Self, ProvisioningError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProvisioningError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ProvisioningError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let p: Provisioning = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        p.broker_addresses().map_err(invalid)?;
        if p.secret.is_none() && (p.certificate_file.is_none() || p.key_file.is_none()) {
            return Err(invalid(
                "needs a secret, or a certificate_file and a key_file".into(),
            ));
        }
        Ok(p)
    }

    /// The brokers in the order this device tries them, its first first.
    pub fn broker_addresses(&self) -> Result<Vec<BrokerAddress>, String> {
        let mut list = BrokerAddress::parse_list(&self.broker)?;
        let first = device_protocol::broker_url::first_for(&self.device_id, list.len());
        list.rotate_left(first);
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example shipped for packagers is a file the agent takes.
    #[test]
    fn the_packaged_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/agent.toml.example");
        let p = Provisioning::load(&path).expect("the example loads");
        assert_eq!(p.remote.allowed_ports, vec![22, 80]);
        assert!(p.remote.terminal);
    }
}
