//! A simulated fleet: each device a real MQTT connection with its own
//! credentials, publishing the contract's payloads with believable,
//! changing values — CPU bursts, memory that creeps until a reboot, traffic
//! with the shape of a day, LTE signal that drifts and now and then fades
//! below −110 dBm, log lines, and devices that drop off and come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use device_protocol::{
    CarrierComponent, Cpu, Firmware, InterfaceTraffic, Loadavg, LogBatch, LogLine, Lte, Memory,
    Reading, Topic, Traffic, Uptime, VERSION,
};
use mqtt::{
    Connect, Decoder, Disconnect, Packet as MqttPacket, Properties, ProtocolVersion, Publish,
    QoS as MqttQoS, ReasonCode, Will, encode,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::session::{backoff, status};
use crate::sim_tasks::{Due, SimAnswers};

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
    /// Changes with every (simulated) reboot, as the kernel's does.
    pub boot_id: String,
    /// The serving cell and band: a handover now and then, to the low band
    /// when the signal fades.
    cell_id: u64,
    band: &'static str,
    /// A firmware update (or rollback) waiting for the reboot to finish.
    pub(crate) pending_update: Option<crate::sim_firmware::PendingUpdate>,
    /// The version before the last update, for a rollback.
    pub(crate) previous_firmware: Option<String>,
}

struct TaskAnswerOut {
    execution: i64,
    payload: Vec<u8>,
}

/// Cells of the simulated operator, one of which serves each device.
const CELLS: [u64; 4] = [2_650_113, 2_650_114, 2_650_371, 2_651_009];

fn new_boot_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
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
            boot_id: new_boot_id(),
            cell_id: CELLS[rng.random_range(0..CELLS.len())],
            band: "B3",
            pending_update: None,
            previous_firmware: None,
        }
    }

    pub fn firmware(&self, ts: i64) -> Reading {
        Reading::Firmware(Firmware {
            v: VERSION,
            ts,
            version: self.firmware.clone(),
        })
    }

    pub fn firmware_version(&self) -> &str {
        &self.firmware
    }

    /// Back from the reboot of an update: the answer it owes, on the
    /// version it now runs.
    fn finish_update(&mut self) -> Option<TaskAnswerOut> {
        let pending = self.pending_update.take()?;
        let (answer, version) = crate::sim_firmware::after_reboot(&pending, &self.boot_id);
        if version != self.firmware {
            self.previous_firmware = Some(std::mem::replace(&mut self.firmware, version));
        }
        Some(TaskAnswerOut {
            execution: pending.request.id,
            payload: answer.to_json(),
        })
    }

    /// Starts over as after a power cycle.
    pub fn reboot(&mut self) {
        self.uptime = 0;
        self.boot_id = new_boot_id();
        self.memory_percent = rand::rng().random_range(25.0..35.0);
        self.cpu_burst = 0;
    }

    /// The radio as a `hardware/lte` reading with signal `rsrp`.
    fn lte(&self, ts: i64, rsrp: f64) -> Lte {
        Lte {
            v: VERSION,
            ts,
            technology: "lte".into(),
            rsrp_dbm: Some(rsrp),
            rsrq_db: Some((-3.0 + (rsrp + 80.0) * 0.35).clamp(-20.0, -3.0)),
            sinr_db: Some((25.0 + (rsrp + 80.0) * 0.8).clamp(-5.0, 30.0)),
            rssi_dbm: Some(rsrp + 28.0),
            band: Some(self.band.into()),
            // No secondary cell on the low band.
            carrier_aggregation: if self.band == "B3" {
                vec![CarrierComponent {
                    band: "B7".into(),
                    pci: Some(301),
                    rsrp_dbm: Some(rsrp - 6.0),
                }]
            } else {
                Vec::new()
            },
            operator: Some("Telia".into()),
            cell_id: Some(self.cell_id),
            smcc: Some(244),
            smnc: Some(91),
        }
    }

    /// The radio now, as a modem status would read it.
    pub fn lte_now(&self) -> Lte {
        let rsrp = if self.fading() {
            -115.0
        } else {
            self.rsrp.clamp(-110.0, -70.0)
        };
        self.lte(crate::now_millis(), rsrp)
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
        // Handovers: now and then to a neighbour cell; a fade drops the
        // device to the 800 MHz band and its end brings it back.
        if rng.random_bool(0.003) {
            self.cell_id = CELLS[rng.random_range(0..CELLS.len())];
        }
        self.band = if self.fade > 0 { "B20" } else { "B3" };
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
            Reading::Lte(self.lte(ts, rsrp)),
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
    /// `mqtt://host:port`, or several comma-separated (a cluster's nodes):
    /// each device starts at one chosen by its id, so a fleet spreads over
    /// them, and moves to the next when a connect fails.
    pub broker: String,
    /// Seconds between readings of a device.
    pub interval: Duration,
    /// Chance per interval that a device drops off for a while (0 to keep
    /// every device online).
    pub dropout: f64,
    pub firmware: String,
    /// How long a simulated reboot keeps a device away.
    pub reboot_time: Duration,
    /// The platform's license key (base64): license tokens are verified
    /// with it as the agent does; without it they are refused.
    pub license_public_key: Option<String>,
    /// The chance that a firmware update fails somewhere (install, first
    /// boot); firmware images are checked against `license_public_key`.
    pub fota_failure: f64,
}

/// What the fleet did, counted.
#[derive(Debug, Default)]
pub struct SimCounters {
    pub connected: AtomicU64,
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    /// Readings in messages the broker acknowledged (PUBACK): what a
    /// broker and platform that lose nothing acknowledged must store.
    pub readings_acknowledged: AtomicU64,
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

/// One simulated device's MQTT 3.1.1 connection on the project's own codec:
/// a fleet of 10,000 in one process needs a client leaner than one event
/// loop per device. A tick's messages go out in one write.
struct SimConnection {
    stream: TcpStream,
    decoder: Decoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
    /// QoS 1 messages sent and not yet acknowledged, by packet id, with
    /// the readings each carries.
    unacked: std::collections::HashMap<u16, u64>,
    counters: Arc<SimCounters>,
    /// Task requests and session input received and not yet taken, with
    /// their topics.
    requests: Vec<(String, bytes::Bytes)>,
}

const KEEP_ALIVE: Duration = Duration::from_secs(60);

impl SimConnection {
    async fn connect(
        address: &device_protocol::broker_url::BrokerAddress,
        device: &SimDevice,
        counters: &Arc<SimCounters>,
    ) -> std::io::Result<SimConnection> {
        let stream = TcpStream::connect((address.host.as_str(), address.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = SimConnection {
            stream,
            decoder: Decoder::with_version(ProtocolVersion::V3_1_1),
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(4096),
            next_id: 0,
            unacked: Default::default(),
            counters: counters.clone(),
            requests: Vec::new(),
        };
        // The will says what the agent's does: gone, retained.
        conn.push(&MqttPacket::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V3_1_1,
            // A persistent session keeps the task subscription, and QoS 1
            // requests sent while the device is away, as the agent's does.
            clean_start: false,
            keep_alive: KEEP_ALIVE.as_secs() as u16,
            properties: Properties::default(),
            client_id: device.device_id.clone(),
            will: Some(Will {
                topic: Topic::Status.for_device(&device.model, &device.device_id),
                payload: status("offline", None).into(),
                qos: MqttQoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some(device.device_id.clone()),
            password: Some(device.secret.clone().into_bytes().into()),
        })));
        conn.flush().await?;
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why);
        match tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
            Ok(Ok(MqttPacket::ConnAck(ack))) if ack.reason == ReasonCode::Success => Ok(conn),
            Ok(Ok(MqttPacket::ConnAck(ack))) => Err(refused(format!("{:?}", ack.reason))),
            Ok(Ok(_)) => Err(refused("no CONNACK".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(refused("no CONNACK within 30 s".into())),
        }
    }

    fn push(&mut self, packet: &MqttPacket) {
        // Packets built here always encode.
        let _ = encode(packet, ProtocolVersion::V3_1_1, &mut self.wbuf);
    }

    /// A QoS 1 message carrying `readings` readings.
    fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>, readings: u64) {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.unacked.insert(self.next_id, readings);
        self.push(&MqttPacket::Publish(Publish {
            dup: false,
            qos: MqttQoS::AtLeastOnce,
            retain,
            topic,
            packet_id: self.next_id,
            properties: Properties::default(),
            payload: payload.into(),
        }));
    }

    fn subscribe_to_tasks(&mut self, device: &SimDevice) {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.push(&MqttPacket::Subscribe(mqtt::Subscribe {
            packet_id: self.next_id,
            properties: Properties::default(),
            filters: [
                device_protocol::task::request_filter(&device.model, &device.device_id),
                device_protocol::session::input_filter(&device.model, &device.device_id),
            ]
            .into_iter()
            .map(|filter| {
                (
                    filter,
                    mqtt::SubscriptionOptions {
                        qos: MqttQoS::AtLeastOnce,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        }));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads what the broker sent (cancel-safe) and counts acknowledgements.
    async fn read(&mut self) -> std::io::Result<()> {
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        while let Some(packet) = self.decode()? {
            match packet {
                MqttPacket::PubAck(ack) => {
                    if let Some(readings) = self.unacked.remove(&ack.packet_id) {
                        self.counters
                            .readings_acknowledged
                            .fetch_add(readings, Ordering::Relaxed);
                    }
                }
                MqttPacket::Publish(publish) => {
                    // [MQTT-4.3.2-1]: a QoS 1 PUBLISH is answered with PUBACK.
                    if publish.qos == MqttQoS::AtLeastOnce {
                        self.push(&MqttPacket::PubAck(mqtt::PubResponse::new(
                            publish.packet_id,
                        )));
                    }
                    self.requests
                        .push((publish.topic.to_string(), publish.payload));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn decode(&mut self) -> std::io::Result<Option<MqttPacket>> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }

    async fn next(&mut self) -> std::io::Result<MqttPacket> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Waits (at most 10 s) for every message to be acknowledged, then says goodbye.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.unacked.is_empty() {
                if self.read().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.push(&MqttPacket::Disconnect(Disconnect::new(
            ReasonCode::Success,
        )));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

async fn run_device(
    device: SimDevice,
    options: SimOptions,
    counters: Arc<SimCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let addresses = match device_protocol::broker_url::BrokerAddress::parse_list(&options.broker) {
        Ok(list) if list.iter().all(|a| !a.tls) => list,
        _ => {
            tracing::warn!(broker = %options.broker, "the simulator speaks mqtt://HOST:PORT only");
            return;
        }
    };
    let mut node = device_protocol::broker_url::first_for(&device.device_id, addresses.len());
    let mut state = SimulatedDevice::new(&device.device_id, &device.model, &options.firmware);
    let topic = |t: Topic| t.for_device(&device.model, &device.device_id);
    let mut failures = 0u32;
    let mut answers = SimAnswers::default();
    while !*stop.borrow() {
        let connected = tokio::select! {
            _ = stop.changed() => return,
            c = SimConnection::connect(&addresses[node % addresses.len()], &device, &counters) => c,
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(device = %device.device_id, error = %e, "connect failed");
                node = node.wrapping_add(1);
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
                continue;
            }
        };
        failures = 0;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let now = crate::now_millis();
        conn.subscribe_to_tasks(&device);
        let prefix = format!(
            "{}/{}/{}/",
            device_protocol::PREFIX,
            device.model,
            device.device_id
        );
        let update_answer = state.finish_update();
        conn.publish(
            topic(Topic::Status),
            true,
            status("online", Some(&state.boot_id)),
            0,
        );
        conn.publish(
            topic(Topic::Firmware),
            true,
            state.firmware(now).to_json(),
            0,
        );
        counters.messages.fetch_add(2, Ordering::Relaxed);
        if let Some(answer) = update_answer {
            conn.publish(
                device_protocol::task::result_topic(
                    &device.model,
                    &device.device_id,
                    answer.execution,
                ),
                false,
                answer.payload,
                0,
            );
        }
        let mut tick = tokio::time::interval(options.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_write = tokio::time::Instant::now();
        let mut rebooting = false;
        let dropped_off = loop {
            if conn.flush().await.is_err() {
                break false;
            }
            let ping_at = last_write + KEEP_ALIVE / 2;
            let answer_at = answers.next_at().unwrap_or(ping_at + KEEP_ALIVE);
            tokio::select! {
                _ = stop.changed() => break false,
                read = conn.read() => {
                    if read.is_err() { break false; }
                    for (topic, payload) in std::mem::take(&mut conn.requests) {
                        let suffix = topic.strip_prefix(&prefix).unwrap_or_default();
                        match crate::sim_shell::input_session(suffix) {
                            Some(id) => answers.session_input(id, &payload, &device),
                            None => answers.take(&payload, &mut state, &device, &options).await,
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(answer_at) => {
                    for due in answers.due() {
                        match due {
                            Due::Answer { topic, payload } => {
                                conn.publish(topic, false, payload, 0);
                            }
                            Due::Reboot => rebooting = true,
                        }
                    }
                    last_write = tokio::time::Instant::now();
                    if rebooting {
                        break true;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    conn.push(&MqttPacket::PingReq);
                    last_write = tokio::time::Instant::now();
                    continue;
                }
                _ = tick.tick() => {}
            }
            for reading in state.tick(crate::now_millis(), options.interval.as_secs().max(1)) {
                let t = reading.topic();
                let readings = reading.metrics().len() as u64;
                counters.readings.fetch_add(readings, Ordering::Relaxed);
                conn.publish(topic(t), t.retain(), reading.to_json(), readings);
                counters.messages.fetch_add(1, Ordering::Relaxed);
            }
            last_write = tokio::time::Instant::now();
            if options.dropout > 0.0 && rand::rng().random_bool(options.dropout.min(1.0)) {
                break true;
            }
        };
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        if rebooting {
            // The acknowledgement goes out, then the device is gone for
            // its reboot and comes back with a new boot id.
            let _ = conn.flush().await;
            drop(conn);
            state.reboot();
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(options.reboot_time.mul_f64(rand::rng().random_range(0.5..1.5))) => {}
            }
            continue;
        }
        if dropped_off {
            // Gone without a goodbye: the broker publishes the will.
            drop(conn);
            if rand::rng().random_bool(0.5) {
                state.reboot();
            }
            let away = options.interval * rand::rng().random_range(3..12);
            tokio::time::sleep(away).await;
        } else if *stop.borrow() {
            conn.publish(topic(Topic::Status), true, status("offline", None), 0);
            let _ = conn.flush().await;
            conn.close().await;
            return;
        } else {
            // The broker closed the connection: come back after a pause.
            tokio::time::sleep(backoff(0)).await;
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
