//! Benchmark: the store's insert rate as the ingest writes — every device
//! reports 13 metrics each second, flushed 50,000 rows per transaction —
//! printed per million rows, so a slowdown as the table grows shows.
//!
//!     cargo run --release -p store --example insert_rate [-- DEVICES SECONDS [postgres://…]]

use std::time::Instant;

use store::{NewDevice, NewDeviceModel, NewReading, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8_000);
    let seconds: i64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir()?;
    let store = match args.get(3) {
        Some(url) => Store::open(url).await?,
        None => Store::open_data_dir(dir.path()).await?,
    };
    let op = store.create_operator("Ops").await?;
    let root = store.scope_of(op.id).await?;
    let model = store
        .create_device_model(&NewDeviceModel {
            name: "DWM-311-A1".into(),
            vendor: "D-Link".into(),
            hardware_revision: "A1".into(),
            topic_segment: "311-a1".into(),
            description: String::new(),
        })
        .await?;
    let mut ids = Vec::new();
    for chunk in (0..devices).collect::<Vec<_>>().chunks(5000) {
        let batch: Vec<NewDevice> = chunk
            .iter()
            .map(|&n| NewDevice {
                organisation_id: op.id,
                model_id: model.id,
                name: format!("d{n}"),
                serial: format!("S{n:08}"),
                mac: format!(
                    "02-00-00-{:02x}-{:02x}-{:02x}",
                    n >> 16,
                    (n >> 8) & 0xff,
                    n & 0xff
                ),
                imei: None,
                iccid: None,
                labels: vec![],
            })
            .collect();
        ids.extend(store.insert_devices(&root, &batch).await?);
    }
    const METRICS: [&str; 13] = [
        "load.1m",
        "load.5m",
        "load.15m",
        "memory.used_percent",
        "memory.available_kb",
        "cpu.usage_percent",
        "lte.rsrp_dbm",
        "lte.rsrq_db",
        "lte.sinr_db",
        "lte.rssi_dbm",
        "traffic.wwan0.rx_bps",
        "traffic.wwan0.tx_bps",
        "uptime.seconds",
    ];
    let start = store::now_millis() - seconds * 1000;
    let started = Instant::now();
    let mut lap = Instant::now();
    let mut written = 0usize;
    let mut batch = Vec::with_capacity(50_000);
    for second in 0..seconds {
        for (n, id) in ids.iter().enumerate() {
            let ts = start + second * 1000 + (n as i64 % 1000);
            for (m, metric) in METRICS.iter().enumerate() {
                batch.push(NewReading {
                    device_id: *id,
                    metric: (*metric).to_owned(),
                    ts,
                    value: ((second + n as i64 + m as i64) % 100) as f64,
                });
            }
            if batch.len() >= 50_000 {
                store.insert_readings(&batch).await?;
                written += batch.len();
                batch.clear();
                if written % 1_000_000 < 50_000 {
                    println!(
                        "{:>9} rows  {:>8.0} rows/s over the last million",
                        written,
                        1_000_000.0 / lap.elapsed().as_secs_f64()
                    );
                    lap = Instant::now();
                }
            }
        }
    }
    store.insert_readings(&batch).await?;
    written += batch.len();
    println!(
        "{}: {written} readings of {devices} devices in {:.1} s ({:.0} rows/s)",
        store.backend(),
        started.elapsed().as_secs_f64(),
        written as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
