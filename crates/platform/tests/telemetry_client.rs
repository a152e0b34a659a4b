//! The ingest as an MQTT client of a broker it does not run (DESIGN.md:
//! external broker mode): it acknowledges a message only once it is
//! written, so a message it took and had not written when it died comes
//! again to the next ingest on the same session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use platform::telemetry::{BrokerConnection, Ingest};
use store::Store;

mod common;

const MESSAGES: i64 = 4_000;

fn payload(ts: i64) -> String {
    format!(r#"{{"v":1,"ts":{ts},"total_kb":1000,"available_kb":250,"used_percent":75.0}}"#)
}

#[test]
fn a_message_the_ingest_took_but_had_not_written_when_it_died_comes_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = tokio::runtime::Runtime::new().expect("runtime");
    let (store, port, _broker) = main.block_on(async {
        let broker = broker::Broker::new(broker::Settings::default(), Arc::new(broker::AllowAll));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        broker.serve(listener, broker::ListenerKind::Tcp);
        let store = Store::open_data_dir(dir.path()).await.expect("store");
        common::one_device(&store).await;
        (store, port, broker)
    });
    let connection = BrokerConnection {
        endpoint: platform::broker_client::BrokerEndpoint {
            addresses: vec![platform::broker_client::BrokerAddress {
                host: "127.0.0.1".into(),
                port,
                tls: false,
            }],
            username: "platform".into(),
            password: "secret".into(),
            ca_pem: None,
        },
        sessions: vec![platform::telemetry::IngestSession {
            client_id: "telemark-ingest".into(),
            filters: vec!["dwr/#".into()],
        }],
    };
    let per_message = device_protocol::parse("hardware/memory", payload(0).as_bytes())
        .expect("valid")
        .metrics()
        .len() as i64;

    // The first ingest, on a runtime of its own so it can die whole.
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let first_ingest = Ingest::new(store.clone());
    let (_stop_first, stopped) = tokio::sync::watch::channel(false);
    first.spawn(platform::telemetry::run(
        first_ingest.clone(),
        connection.clone(),
        stopped,
    ));
    main.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while first_ingest.counters.messages.load(Ordering::Relaxed) == 0
            && Instant::now() < deadline
        {
            // Subscribed once a message published now reaches it (a
            // reading from 1970: counted as a fault, not stored).
            publish(port, &[0]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let already = first_ingest.counters.messages.load(Ordering::Relaxed) as i64;
    assert!(already > 0, "the first ingest subscribed");

    // A device streams; the first ingest dies in the middle of it.
    let t0 = store::now_millis() - 86_400_000;
    let device = main.spawn(async move {
        let all: Vec<i64> = (1..=MESSAGES).map(|i| t0 + i * 1000).collect();
        publish(port, &all).await;
    });
    main.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while first_ingest.counters.messages.load(Ordering::Relaxed) < (MESSAGES / 4) as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    first.shutdown_background();
    let taken = first_ingest.counters.messages.load(Ordering::Relaxed);
    let written = first_ingest
        .counters
        .readings_stored
        .load(Ordering::Relaxed);

    // The next ingest on the same session gets what was not acknowledged.
    let second = Ingest::new(store.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = main.spawn(platform::telemetry::run(
        second.clone(),
        connection,
        stopped,
    ));
    let stored = main.block_on(async {
        device.await.expect("device");
        let expected = MESSAGES * per_message;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = store.count_readings().await.expect("count");
            if n >= expected || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eprintln!(
        "first ingest took {taken} messages and wrote {written} readings before it died; \
         {stored} readings stored in all"
    );
    assert_eq!(
        stored,
        MESSAGES * per_message,
        "every message the device published is stored"
    );
    let _ = stop.send(true);
    main.block_on(running).expect("ingest ends");
}

/// Publishes one reading at each time in `times` at QoS 1 and waits for
/// every PUBACK.
async fn publish(port: u16, times: &[i64]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut options = MqttOptions::new("00-11-22-33-44-55", "127.0.0.1", port);
    options.set_inflight(64);
    let (client, mut events) = AsyncClient::new(options, 128);
    let topic = "dwr/311-a1/00-11-22-33-44-55/hardware/memory";
    let sender = {
        let client = client.clone();
        let times = times.to_vec();
        tokio::spawn(async move {
            for ts in times {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload(ts))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked < times.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = sender.await;
    let _ = client.disconnect().await;
}
