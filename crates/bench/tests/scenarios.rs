//! Every scenario at small scale against the real broker on 127.0.0.1: the
//! wiring, the loss accounting and the latency math.

use std::sync::Arc;
use std::time::Duration;

use bench::{Options, Scenario};
use broker::{AllowAll, Broker, ListenerKind, Settings};
use mqtt::QoS;

async fn broker() -> std::net::SocketAddr {
    broker_with(Settings {
        sys_interval_secs: 0,
        ..Settings::default()
    })
    .await
}

async fn broker_with(settings: Settings) -> std::net::SocketAddr {
    let broker = Broker::new(settings, Arc::new(AllowAll));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    broker.serve(listener, ListenerKind::Tcp);
    addr
}

fn options(scenario: Scenario, addr: std::net::SocketAddr) -> Options {
    Options {
        scenario,
        addr,
        connections: 4,
        duration: Duration::from_millis(800),
        drain: Duration::from_secs(3),
        broker_pid: Some(std::process::id()),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_at_qos1_lose_nothing_and_measure_latency() {
    let addr = broker().await;
    let report = bench::run(&Options {
        qos: QoS::AtLeastOnce,
        rate: Some(2000),
        ..options(Scenario::Pairs, addr)
    })
    .await
    .expect("run");
    assert!(report.sent > 100, "{report:?}");
    assert_eq!(report.acked, report.sent);
    assert_eq!(report.expected, report.acked);
    assert_eq!((report.received, report.lost), (report.expected, 0));
    assert_eq!((report.duplicates, report.out_of_order), (0, 0));
    assert_eq!(report.latency.samples, report.received);
    assert!(report.latency.p50_us > 0 && report.latency.p50_us <= report.latency.p99_us);
    assert!(report.latency.p99_us <= report.latency.max_us);
    // A fixed rate is kept: 2000/s for 0.8 s.
    assert!((1200..=2000).contains(&report.sent), "sent {}", report.sent);
    assert!(report.broker_peak_rss_kib.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_counts_every_subscriber() {
    let addr = broker().await;
    let report = bench::run(&Options {
        qos: QoS::AtLeastOnce,
        rate: Some(500),
        ..options(Scenario::FanOut, addr)
    })
    .await
    .expect("run");
    assert_eq!(report.expected, report.acked * 4);
    assert_eq!(report.received, report.expected, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_at_max_rate_and_qos2() {
    let addr = broker().await;
    let report = bench::run(&Options {
        qos: QoS::ExactlyOnce,
        ..options(Scenario::FanIn, addr)
    })
    .await
    .expect("run");
    assert!(report.sent > 0);
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_a_broker_drops_do_not_stall_the_window() {
    // A subscriber queue of two and more in flight than the socket holds:
    // the broker drops QoS 0 messages, as MQTT allows.
    let addr = broker_with(Settings {
        sys_interval_secs: 0,
        max_queued_messages: 2,
        ..Settings::default()
    })
    .await;
    let report = bench::run(&Options {
        connections: 8,
        window: 64,
        payload: 64 * 1024,
        duration: Duration::from_millis(1500),
        ..options(Scenario::FanIn, addr)
    })
    .await
    .expect("run");
    assert_eq!(report.lost, 0, "QoS 0 drops are not losses");
    // Had a window counted messages, each drop would have held a place in
    // it for good, and no publisher could have had more than its 64
    // undelivered: together the publishers went on well past that.
    assert!(
        report.sent - report.received > 2 * 8 * 64,
        "dropped messages stalled the publishers: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_devices_publish_their_telemetry_rounds() {
    let addr = broker().await;
    let report = bench::run(&Options {
        qos: QoS::AtLeastOnce,
        connections: 20,
        fleet_interval: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        ..options(Scenario::Fleet, addr)
    })
    .await
    .expect("run");
    // 20 devices × 4 topics every 0.2 s for 1 s: about 400 messages.
    assert!((300..=420).contains(&report.sent), "sent {}", report.sent);
    assert_eq!(report.received, report.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_idle_report_their_figures() {
    let addr = broker().await;
    let report = bench::run(&options(Scenario::Connect, addr))
        .await
        .expect("run");
    assert!(report.connects_per_sec > 10.0, "{report:?}");
    let report = bench::run(&Options {
        connections: 200,
        sources: 2,
        duration: Duration::from_millis(200),
        ..options(Scenario::Idle, addr)
    })
    .await
    .expect("run");
    assert_eq!(report.held, 200);
    assert!(report.broker_bytes_per_connection.is_some());
}
