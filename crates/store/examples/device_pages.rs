//! Benchmark: keyset pages of the device list with 100,000 devices in an
//! embedded SQLite file (the target: a page in under 20 ms).
//!
//!     cargo run --release -p store --example device_pages [-- DEVICES]

use std::time::Instant;

use store::{DeviceQuery, NewDevice, NewDeviceModel, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let store = Store::open_data_dir(dir.path()).await?;
    let op = store.create_operator("Ops").await?;
    let root = store.scope_of(op.id).await?;
    let integrator = store
        .create_organisation(&root, op.id, "Integrator")
        .await?;
    let customer = store
        .create_organisation(
            &store.scope_of(integrator.id).await?,
            integrator.id,
            "Customer",
        )
        .await?;
    let model = store
        .create_device_model(&NewDeviceModel {
            name: "DWM-311-A1".into(),
            vendor: "D-Link".into(),
            hardware_revision: "A1".into(),
            topic_segment: "311-a1".into(),
            description: String::new(),
        })
        .await?;
    let started = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let devices: Vec<NewDevice> = chunk
            .iter()
            .map(|n| NewDevice {
                organisation_id: if n % 2 == 0 {
                    customer.id
                } else {
                    integrator.id
                },
                model_id: model.id,
                name: format!("router-{n:06}"),
                serial: format!("SN{n:09}"),
                mac: format!(
                    "02-00-{:02x}-{:02x}-{:02x}-{:02x}",
                    n >> 24,
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    n & 0xff
                ),
                imei: None,
                iccid: None,
                labels: vec![],
            })
            .collect();
        store.insert_devices(&root, &devices).await?;
    }
    println!(
        "inserted {total} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut timings = Vec::new();
    let scopes = [
        ("operator", root.clone()),
        ("customer", store.scope_of(customer.id).await?),
    ];
    for (name, scope) in &scopes {
        let mut after = None;
        let mut pages = 0;
        let mut slowest = 0.0f64;
        let mut sum = 0.0;
        let mut all = Vec::new();
        loop {
            let t = Instant::now();
            let page = store
                .devices(
                    scope,
                    &DeviceQuery {
                        after: after.clone(),
                        limit: 100,
                        ..Default::default()
                    },
                )
                .await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            slowest = slowest.max(ms);
            all.push(ms);
            sum += ms;
            pages += 1;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        all.sort_by(f64::total_cmp);
        let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
        println!(
            "{name}: {pages} pages of 100, mean {:.2} ms, p99 {p99:.2} ms, slowest {slowest:.2} ms",
            sum / f64::from(pages)
        );
        timings.push(slowest);
    }
    for search in ["SN00009", "router-05", "02-00-00-01", "02:00:00:01:86"] {
        let t = Instant::now();
        let page = store
            .devices(
                &root,
                &DeviceQuery {
                    search: Some(search.into()),
                    limit: 100,
                    ..Default::default()
                },
            )
            .await?;
        println!(
            "search {search:?}: {} found in {:.2} ms",
            page.devices.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let t = Instant::now();
    let n = store.count_devices(&root).await?;
    println!("count {n} in {:.2} ms", t.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}
