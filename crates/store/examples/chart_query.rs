//! Benchmark: a 24-hour chart of one device with 10,000 devices' readings
//! stored (one metric a minute each: 14.4 million rows) in embedded SQLite
//! or PostgreSQL. The target: under 50 ms.
//!
//!     cargo run --release -p store --example chart_query [-- DEVICES [METRICS INTERVAL_S [postgres://…]]]
//!
//! With METRICS and INTERVAL_S each device reports that many metrics every
//! INTERVAL_S seconds instead (13 every 10 s is the simulated fleet's black
//! box), so the chart reads past the device's other metrics.

use std::time::Instant;

mod fleet;

use store::{NewReading, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let metrics: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let interval_ms: i64 = args
        .get(3)
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(60)
        * 1000;
    let store = match args.get(4) {
        Some(url) => Store::open(url).await?,
        None => Store::open_data_dir(dir.path()).await?,
    };
    let (root, ids) = fleet::seed(&store, devices).await?;
    let end = store::now_millis();
    let start = end - 24 * 3_600_000;
    let started = Instant::now();
    // Step by step, every device, as the ingest writes them.
    let names: Vec<String> = std::iter::once("memory.used_percent".to_owned())
        .chain((1..metrics).map(|m| format!("other.metric_{m}")))
        .collect();
    let mut batch = Vec::with_capacity(50_000);
    for step in 0..(24 * 3_600_000 / interval_ms) {
        for (n, id) in ids.iter().enumerate() {
            for name in &names {
                batch.push(NewReading {
                    device_id: *id,
                    metric: name.clone(),
                    ts: start + step * interval_ms + (n as i64 % interval_ms),
                    value: 40.0 + ((step + n as i64) % 50) as f64,
                });
            }
            if batch.len() >= 50_000 {
                store.insert_readings(&batch).await?;
                batch.clear();
            }
        }
    }
    store.insert_readings(&batch).await?;
    let rows = store.count_readings().await?;
    println!(
        "{}: stored {rows} readings of {devices} devices in {:.1} s ({:.0} rows/s)",
        store.backend(),
        started.elapsed().as_secs_f64(),
        rows as f64 / started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for i in 0..20 {
        let id = ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        let series = store
            .series(&root, id, "memory.used_percent", start, end + 1, 300_000)
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(series.len() >= 287, "{}", series.len());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "24-hour chart of one device (288 points of 5 min): median {:.2} ms, slowest {:.2} ms over 20 devices",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    Ok(())
}
