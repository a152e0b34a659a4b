//! Benchmark: the store's insert rate as the ingest writes — every device
//! reports 13 metrics each second, flushed 50,000 rows per transaction —
//! printed per million rows, so a slowdown as the table grows shows.
//!
//!     [BATCH=rows] cargo run --release -p store --example insert_rate [-- DEVICES SECONDS [postgres://…]]

use std::time::Instant;

mod fleet;

use store::{NewReading, Store};

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
    let (_, ids) = fleet::seed(&store, devices).await?;
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
    let batch_rows: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(50_000);
    let mut batch = Vec::with_capacity(batch_rows);
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
            if batch.len() >= batch_rows {
                store.insert_readings(&batch).await?;
                written += batch.len();
                batch.clear();
                if written % 1_000_000 < batch_rows {
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
