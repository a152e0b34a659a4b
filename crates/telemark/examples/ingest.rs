//! Benchmark: the black box's ingest end to end on one machine — a
//! simulated fleet of real MQTT connections publishing the device contract
//! to the embedded broker, the platform's ingest validating and writing
//! readings in batches — counting readings sent against readings stored.
//!
//!     cargo run --release -p telemark --example ingest -- DEVICES INTERVAL_S SECONDS [postgres://…]
//!
//! Authentication is the broker's allow-all here: the benchmark measures
//! ingest, not logins (device logins are measured by `telemark bench connect`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent::sim::{SimCounters, SimDevice, SimOptions, run_fleet};
use platform::telemetry::{BrokerConnection, Ingest};
use store::Store;

// The store's benchmark fleet: the same model and MACs.
#[path = "../../store/examples/fleet/mod.rs"]
mod fleet;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Lets everyone in, and gives the ingest the deep queue `telemark serve`
/// gives the platform's internal clients.
struct BenchAuth;

impl broker::Authenticator for BenchAuth {
    fn authenticate<'a>(
        &'a self,
        request: &'a broker::ConnectRequest,
    ) -> broker::BoxFuture<'a, Result<broker::ClientIdentity, mqtt::ReasonCode>> {
        Box::pin(async move {
            let mut identity = broker::ClientIdentity::from_request(request);
            if request.client_id.as_str() == "bench-ingest" {
                identity.max_queued_messages = Some(2_000_000);
            }
            Ok(identity)
        })
    }

    fn authorize(&self, _: &broker::ClientIdentity, _: broker::Action, _: &str) -> bool {
        true
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let interval: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(30);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir()?;
    let store = match args.get(4) {
        Some(url) => Store::open(url).await?,
        None => Store::open_data_dir(dir.path()).await?,
    };
    fleet::seed(&store, devices)
        .await
        .map_err(|e| anyhow::anyhow!("seeding the fleet: {e}"))?;

    let settings = broker::Settings {
        max_connections: devices + 100,
        ..Default::default()
    };
    let broker = broker::Broker::new(settings, Arc::new(BenchAuth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let _accept = broker.serve(listener, broker::ListenerKind::Tcp);
    let ingest = Ingest::new(store.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ingest_task = tokio::spawn(platform::telemetry::run(
        ingest.clone(),
        BrokerConnection {
            endpoint: platform::broker_client::BrokerEndpoint {
                addresses: vec![platform::broker_client::BrokerAddress {
                    host: "127.0.0.1".into(),
                    port: addr.port(),
                    tls: false,
                }],
                username: "bench".into(),
                password: "bench".into(),
                ca_pem: None,
            },
            sessions: vec![platform::telemetry::IngestSession {
                client_id: "bench-ingest".into(),
                filters: vec!["dwr/#".into()],
            }],
        },
        stopped.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fleet: Vec<SimDevice> = (0..devices)
        .map(|n| SimDevice {
            device_id: fleet::mac(n),
            model: "311-a1".into(),
            secret: "x".into(),
        })
        .collect();
    let counters = Arc::new(SimCounters::default());
    let (stop_fleet, fleet_stopped) = tokio::sync::watch::channel(false);
    let fleet_task = tokio::spawn(run_fleet(
        fleet,
        SimOptions {
            broker: format!("mqtt://{addr}"),
            interval: Duration::from_secs(interval),
            dropout: 0.0,
            firmware: "1.0.0".into(),
            reboot_time: Duration::from_secs(3),
            license_public_key: None,
            fota_failure: 0.0,
        },
        counters.clone(),
        fleet_stopped,
    ));
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stored = ingest.counters.readings_stored.load(Ordering::Relaxed);
        let rate = (stored - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (stored, Instant::now());
        rss.push(rss_kb());
        println!(
            "{:>4} s  connected {:>6}  sent {:>10}  stored {:>10}  {:>9.0} readings/s  rss {} MiB",
            started.elapsed().as_secs(),
            counters.connected.load(Ordering::Relaxed),
            counters.readings.load(Ordering::Relaxed),
            stored,
            rate,
            rss_kb() / 1024
        );
    }
    let _ = stop_fleet.send(true);
    let _ = fleet_task.await;
    // Let what is in flight land.
    let sent = counters.readings.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ingest.counters.readings_stored.load(Ordering::Relaxed) < sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    let _ = ingest_task.await;
    let stored = ingest.counters.readings_stored.load(Ordering::Relaxed);
    let in_db = store.count_readings().await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} devices every {interval} s for {seconds} s on {}: sent {sent} readings, stored {stored} (table: {in_db}), lost {}, {:.0} readings/s stored on average; rss first {} MiB, last {} MiB; rejected {}, unknown {}",
        devices,
        store.backend(),
        sent.saturating_sub(in_db as u64),
        in_db as f64 / elapsed,
        rss.first().copied().unwrap_or(0) / 1024,
        rss.last().copied().unwrap_or(0) / 1024,
        ingest.counters.rejected.load(Ordering::Relaxed),
        ingest.counters.unknown_devices.load(Ordering::Relaxed),
    );
    broker.shutdown().await;
    Ok(())
}
