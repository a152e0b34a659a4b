//! The device side of the device contract (`docs/device-protocol.md`):
//! [`collect`] reads the black box from a Linux system, [`buffer`] keeps
//! readings on disk while the broker is away, [`session`] runs the MQTT
//! connection, and [`sim`] drives a whole simulated fleet with the same
//! payloads.

pub mod buffer;
pub mod channel;
pub mod collect;
pub mod firmware;
pub mod provisioning;
pub mod remote;
pub mod session;
pub mod sim;
mod sim_firmware;
mod sim_shell;
mod sim_tasks;
pub mod tasks;

pub use provisioning::Provisioning;

/// Unix milliseconds now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
