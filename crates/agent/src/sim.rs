//! A simulated fleet: each device a real MQTT connection with its own
//! credentials, publishing the contract's payloads with believable,
//! changing values — CPU bursts, memory that creeps until a reboot, traffic
//! with the shape of a day, LTE signal that drifts and now and then fades
//! below −110 dBm, log lines, and devices that drop off and come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use device_protocol::{
    CarrierComponent, Cpu, Firmware, InterfaceTraffic, Loadavg, LogBatch, LogLine, Lte, Memory,
    Reading, Topic, Traffic, Uptime, VERSION,
};
use rand::Rng;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::watch;

use crate::Provisioning;
use crate::session::{backoff, device_options, status};

/// One simulated device's changing state.
#[derive(Debug, Clone)]
pub struct SimulatedDevice {
    pub device_id: String,
    pub model: String,
    cpu_burst: u32,
    memory_percent: f64,
    rsrp: f64,
    fade: u32,
    rx_bytes: u64,
    tx_bytes: u64,
    uptime: u64,
    firmware: String,
}

impl SimulatedDevice {
    pub fn new(device_id: &str, model: &str, firmware: &str) -> Self {
        let mut rng = rand::rng();
        SimulatedDevice {
            device_id: device_id.to_owned(),
            model: model.to_owned(),
            cpu_burst: 0,
            memory_percent: rng.random_range(30.0..55.0),
            rsrp: rng.random_range(-105.0..-80.0),
            fade: 0,
            rx_bytes: rng.random_range(0..1 << 30),
            tx_bytes: rng.random_range(0..1 << 28),
            uptime: rng.random_range(600..3_000_000),
            firmware: firmware.to_owned(),
        }
    }

    pub fn firmware(&self, ts: i64) -> Reading {
        Reading::Firmware(Firmware {
            v: VERSION,
            ts,
            version: self.firmware.clone(),
        })
    }

    /// Starts over as after a power cycle.
    pub fn reboot(&mut self) {
        self.uptime = 0;
        self.memory_percent = rand::rng().random_range(25.0..35.0);
        self.cpu_burst = 0;
    }

    /// Is the LTE signal in a fade now?
    pub fn fading(&self) -> bool {
        self.fade > 0
    }

    /// Starts a fade below −110 dBm for `ticks` readings.
    pub fn start_fade(&mut self, ticks: u32) {
        self.fade = ticks;
    }

    /// The readings of one interval of `seconds`, at device time `ts`.
    pub fn tick(&mut self, ts: i64, seconds: u64) -> Vec<Reading> {
        let mut rng = rand::rng();
        self.uptime += seconds;
        if self.cpu_burst > 0 {
            self.cpu_burst -= 1;
        } else if rng.random_bool(0.03) {
            self.cpu_burst = rng.random_range(2..8);
        }
        let cpu = if self.cpu_burst > 0 {
            rng.random_range(70.0..99.0)
        } else {
            rng.random_range(3.0..22.0)
        };
        self.memory_percent =
            (self.memory_percent + rng.random_range(-0.05..0.15)).clamp(10.0, 99.0);
        // Drift, pulled back towards a typical −95 dBm, and rare deep fades.
        self.rsrp += rng.random_range(-1.5..1.5) + (-95.0 - self.rsrp) * 0.02;
        if self.fade == 0 && rng.random_bool(0.002) {
            self.fade = rng.random_range(30..120);
        }
        let rsrp = if self.fade > 0 {
            self.fade -= 1;
            rng.random_range(-121.0..-111.0)
        } else {
            self.rsrp.clamp(-110.0, -70.0)
        };
        let hour = (ts / 3_600_000) % 24;
        let day = 0.5 - 0.5 * ((hour as f64 - 3.0) / 24.0 * std::f64::consts::TAU).cos();
        let rx_bps = 2.0e6 * (0.1 + 0.9 * day) * rng.random_range(0.6..1.4);
        let tx_bps = rx_bps * rng.random_range(0.1..0.3);
        self.rx_bytes += (rx_bps / 8.0 * seconds as f64) as u64;
        self.tx_bytes += (tx_bps / 8.0 * seconds as f64) as u64;
        let total_kb = 262_144u64;
        let mut readings = vec![
            Reading::Cpu(Cpu {
                v: VERSION,
                ts,
                usage_percent: cpu,
                cores: 2,
            }),
            Reading::Loadavg(Loadavg {
                v: VERSION,
                ts,
                load1: cpu / 50.0,
                load5: cpu / 60.0,
                load15: cpu / 70.0,
            }),
            Reading::Memory(Memory {
                v: VERSION,
                ts,
                total_kb,
                available_kb: (total_kb as f64 * (1.0 - self.memory_percent / 100.0)) as u64,
                used_percent: self.memory_percent,
            }),
            Reading::Traffic(Traffic {
                v: VERSION,
                ts,
                interfaces: vec![InterfaceTraffic {
                    interface: "wwan0".into(),
                    rx_bytes: self.rx_bytes,
                    tx_bytes: self.tx_bytes,
                    rx_bps,
                    tx_bps,
                }],
            }),
            Reading::Lte(Lte {
                v: VERSION,
                ts,
                technology: "lte".into(),
                rsrp_dbm: Some(rsrp),
                rsrq_db: Some((-3.0 + (rsrp + 80.0) * 0.35).clamp(-20.0, -3.0)),
                sinr_db: Some((25.0 + (rsrp + 80.0) * 0.8).clamp(-5.0, 30.0)),
                rssi_dbm: Some(rsrp + 28.0),
                band: Some("B3".into()),
                carrier_aggregation: vec![CarrierComponent {
                    band: "B7".into(),
                    pci: Some(301),
                    rsrp_dbm: Some(rsrp - 6.0),
                }],
                operator: Some("Telia".into()),
                cell_id: Some(2_650_113),
                smcc: Some(244),
                smnc: Some(91),
            }),
            Reading::Uptime(Uptime {
                v: VERSION,
                ts,
                seconds: self.uptime,
            }),
        ];
        if rng.random_bool(0.1) {
            let text = if self.fade > 0 {
                "ModemManager: signal quality low, rsrp below -110 dBm"
            } else if self.cpu_burst > 0 {
                "kernel: net_ratelimit: 12 callbacks suppressed"
            } else {
                "dnsmasq-dhcp: DHCPACK(br-lan) 192.168.1.23 lan-client"
            };
            readings.push(Reading::Syslog(LogBatch {
                v: VERSION,
                ts,
                lines: vec![LogLine {
                    ts,
                    text: text.to_owned(),
                }],
            }));
        }
        readings
    }
}

/// A device of the simulated fleet and how it logs in.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub device_id: String,
    pub model: String,
    pub secret: String,
}

/// How the fleet behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// `mqtt://host:port`.
    pub broker: String,
    /// Seconds between readings of a device.
    pub interval: Duration,
    /// Chance per interval that a device drops off for a while (0 to keep
    /// every device online).
    pub dropout: f64,
    pub firmware: String,
}

/// What the fleet did, counted.
#[derive(Debug, Default)]
pub struct SimCounters {
    pub connected: AtomicU64,
    pub messages: AtomicU64,
    pub readings: AtomicU64,
}

/// Runs the fleet until `stop` turns true.
pub async fn run_fleet(
    devices: Vec<SimDevice>,
    options: SimOptions,
    counters: Arc<SimCounters>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = Vec::with_capacity(devices.len());
    for (n, device) in devices.into_iter().enumerate() {
        let options = options.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        // Spread connects over the first interval, as a fleet does.
        let delay = options.interval.mul_f64((n % 1000) as f64 / 1000.0);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_device(device, options, counters, stop).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn run_device(
    device: SimDevice,
    options: SimOptions,
    counters: Arc<SimCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let provisioning = Provisioning {
        broker: options.broker.clone(),
        device_id: device.device_id.clone(),
        model: device.model.clone(),
        secret: Some(device.secret.clone()),
        ca_file: None,
        certificate_file: None,
        key_file: None,
        buffer_dir: std::env::temp_dir(),
        buffer_capacity: 1,
        firmware_file: std::path::PathBuf::new(),
        log_file: None,
        intervals: Default::default(),
    };
    let Ok(mqtt) = device_options(&provisioning) else {
        tracing::warn!(device = %device.device_id, "bad broker address");
        return;
    };
    let mut state = SimulatedDevice::new(&device.device_id, &device.model, &options.firmware);
    let topic = |t: Topic| t.for_device(&device.model, &device.device_id);
    let mut failures = 0u32;
    while !*stop.borrow() {
        let (client, mut events) = AsyncClient::new(mqtt.clone(), 64);
        // Wait for the broker's answer.
        let up = loop {
            tokio::select! {
                _ = stop.changed() => return,
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            }
        };
        if !up {
            tokio::time::sleep(backoff(failures)).await;
            failures += 1;
            continue;
        }
        failures = 0;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let now = crate::now_millis();
        let _ = client
            .publish(
                topic(Topic::Status),
                QoS::AtLeastOnce,
                true,
                status("online"),
            )
            .await;
        let _ = client
            .publish(
                topic(Topic::Firmware),
                QoS::AtLeastOnce,
                true,
                state.firmware(now).to_json(),
            )
            .await;
        let mut tick = tokio::time::interval(options.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dropped_off = loop {
            tokio::select! {
                _ = stop.changed() => break false,
                _ = tick.tick() => {}
            }
            if poller.is_finished() {
                break false;
            }
            let readings = state.tick(crate::now_millis(), options.interval.as_secs().max(1));
            for reading in readings {
                let t = reading.topic();
                counters
                    .readings
                    .fetch_add(reading.metrics().len() as u64, Ordering::Relaxed);
                if client
                    .publish(topic(t), QoS::AtLeastOnce, t.retain(), reading.to_json())
                    .await
                    .is_ok()
                {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                }
            }
            let drop_off =
                options.dropout > 0.0 && rand::rng().random_bool(options.dropout.min(1.0));
            if drop_off {
                break true;
            }
        };
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        if dropped_off {
            // Gone without a goodbye: the broker publishes the will.
            poller.abort();
            if rand::rng().random_bool(0.5) {
                state.reboot();
            }
            let away = options.interval * rand::rng().random_range(3..12);
            tokio::time::sleep(away).await;
        } else {
            let _ = client
                .publish(
                    topic(Topic::Status),
                    QoS::AtLeastOnce,
                    true,
                    status("offline"),
                )
                .await;
            let _ = client.disconnect().await;
            // The event loop sends what is queued, then DISCONNECT, then ends.
            let abort = poller.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), poller)
                .await
                .is_err()
            {
                abort.abort();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_readings_follow_the_contract_and_fade() {
        let mut device = SimulatedDevice::new("00-11-22-33-44-55", "311-a1", "1.2.3");
        device.start_fade(3);
        let mut faded = false;
        for n in 0..50 {
            for reading in device.tick(1_764_000_000_000 + n * 10_000, 10) {
                let json = reading.to_json();
                assert_eq!(
                    device_protocol::parse(reading.topic().suffix(), &json),
                    Ok(reading.clone())
                );
                if let Reading::Lte(lte) = &reading
                    && lte.rsrp_dbm.is_some_and(|r| r < -110.0)
                {
                    faded = true;
                }
            }
        }
        assert!(faded, "a fade goes below -110 dBm");
    }
}
