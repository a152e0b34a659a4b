//! Benchmark: how long a large device import stops the ingest. While
//! 100,000 devices are imported (checked, then written in one
//! transaction), a writer stores a small batch of readings every 20 ms as
//! the ingest does; printed are the import's time and the longest wait of
//! a readings batch.
//!
//!     cargo run --release -p store --example import_stall [-- DEVICES [postgres://…]]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod fleet;

use store::{ImportBatch, NewDevice, NewReading, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let store = match args.get(2) {
        Some(url) => Store::open(url).await?,
        None => Store::open_data_dir(dir.path()).await?,
    };
    // A fleet that reports, and the import's devices (MACs past the fleet's).
    let (root, ids) = fleet::seed(&store, 1_000).await?;
    let model = store.device_models().await?[0].id;
    let rows: Vec<(i64, NewDevice)> = (0..devices)
        .map(|n| {
            let n = n + 1_000_000;
            (
                n as i64,
                NewDevice {
                    organisation_id: root.organisation_id,
                    model_id: model,
                    name: format!("import-{n}"),
                    serial: format!("IMP{n:09}"),
                    mac: fleet::mac(n),
                    imei: None,
                    iccid: None,
                    labels: vec!["imported".into()],
                },
            )
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut ts = store::now_millis();
            while !done.load(Ordering::Relaxed) {
                ts += 1000;
                let batch: Vec<NewReading> = ids
                    .iter()
                    .map(|&device_id| NewReading {
                        device_id,
                        metric: "cpu.usage_percent".into(),
                        ts,
                        value: 1.0,
                    })
                    .collect();
                let started = Instant::now();
                if let Err(e) = store.insert_readings(&batch).await {
                    eprintln!("readings not written: {e}");
                }
                longest = longest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            longest
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let record = store
        .import_devices(
            &root,
            ImportBatch {
                actor: "bench".into(),
                source_name: "erp.csv".into(),
                partial: false,
                rows,
                rejected: Vec::new(),
            },
        )
        .await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let longest = writer.await?;
    println!(
        "{} backend: {} devices imported in {:.2} s; the longest readings write meanwhile took {} ms",
        store.backend(),
        record.rows_accepted,
        took.as_secs_f64(),
        longest.as_millis()
    );
    Ok(())
}
