//! Idle TCP connections hibernate (no task, no buffers) and come back for
//! everything a connection must answer: a packet, a delivery, a takeover,
//! the keep-alive, the client going away and shutdown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::{AllowAll, Broker, Settings};
use common::*;
use mqtt::*;

/// A broker whose connections hibernate after 50 ms with nothing to do.
async fn start_hibernating() -> TestBroker {
    let settings = Settings {
        hibernate_after_ms: 50,
        ..quick_settings()
    };
    start_with(settings, Arc::new(AllowAll)).await
}

/// Waits until `n` connections hibernate.
async fn until_hibernated(broker: &Broker, n: u64) {
    let deadline = Instant::now() + WAIT;
    while broker.stats().clients_hibernated != n {
        assert!(
            Instant::now() < deadline,
            "{} connections hibernate, expected {n}",
            broker.stats().clients_hibernated
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_hibernated_subscriber_gets_its_messages_and_answers_pings() {
    let b = start_hibernating().await;
    let (mut sub, _) = Client::connect(b.tcp, &Conn::v5("sleeper")).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client::connect(b.tcp, &Conn::v311("publisher")).await;
    until_hibernated(&b.broker, 2).await;

    // The publisher wakes by its packet, the subscriber by the delivery.
    for n in 0..3u8 {
        assert_eq!(
            publisher
                .publish("t/x", &[n], QoS::AtLeastOnce, false)
                .await,
            ReasonCode::Success
        );
        let p = sub.recv_publish().await;
        assert_eq!((&p.topic[..], &p.payload[..]), ("t/x", &[n][..]));
        until_hibernated(&b.broker, 2).await;
    }
    // [MQTT-3.12.4-1] a ping to a sleeping connection is answered.
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    assert_eq!(b.broker.stats().clients_connected, 2);
}

#[tokio::test]
async fn a_hibernated_session_is_taken_over() {
    // [MQTT-3.1.4-3]
    let b = start_hibernating().await;
    let (mut first, _) = Client::connect(b.tcp, &Conn::v5("same")).await;
    until_hibernated(&b.broker, 1).await;
    let (mut second, _) = Client::connect(b.tcp, &Conn::v5("same")).await;
    assert_eq!(
        first.expect_closed().await,
        Some(ReasonCode::SessionTakenOver)
    );
    until_hibernated(&b.broker, 1).await;
    second.send(&Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn keep_alive_runs_out_while_hibernated() {
    // [MQTT-3.1.2-24] [MQTT-3.1.2-8]
    let b = start_hibernating().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v311("watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut conn = Conn::v5("sleepy");
    conn.keep_alive = 1;
    conn.will = Some(will("wills/sleepy"));
    let started = Instant::now();
    let (mut sleepy, _) = Client::connect(b.tcp, &conn).await;
    until_hibernated(&b.broker, 2).await;
    assert_eq!(
        sleepy.expect_closed().await,
        Some(ReasonCode::KeepAliveTimeout)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}"
    );
    let will = watcher.recv_publish().await;
    assert_eq!(&will.topic[..], "wills/sleepy");
}

#[tokio::test]
async fn a_client_that_vanishes_while_hibernated_leaves_its_will() {
    // [MQTT-3.1.2-8] closed by the network without DISCONNECT.
    let b = start_hibernating().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v311("watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut conn = Conn::v311("vanishing");
    conn.will = Some(will("wills/vanishing"));
    let (vanishing, _) = Client::connect(b.tcp, &conn).await;
    until_hibernated(&b.broker, 2).await;
    drop(vanishing);
    let will = watcher.recv_publish().await;
    assert_eq!(&will.topic[..], "wills/vanishing");
    assert_eq!(b.broker.stats().clients_connected, 1);
}

#[tokio::test]
async fn shutdown_wakes_hibernated_connections() {
    let b = start_hibernating().await;
    let mut clients = Vec::new();
    for n in 0..20 {
        let (client, _) = Client::connect(b.tcp, &Conn::v5(&format!("idle-{n}"))).await;
        clients.push(client);
    }
    until_hibernated(&b.broker, 20).await;
    let broker = b.broker.clone();
    let shutdown = tokio::spawn(async move { broker.shutdown().await });
    for client in &mut clients {
        assert_eq!(
            client.expect_closed().await,
            Some(ReasonCode::ServerShuttingDown)
        );
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown waits for no one")
        .expect("shutdown");
    assert_eq!(b.broker.stats().clients_connected, 0);
}

#[tokio::test]
async fn a_busy_connection_stops_hibernating() {
    // Woken soon after it fell asleep, a connection waits twice its quiet
    // spell before it hibernates again: one publishing every 200 ms
    // hibernates once, then stays up.
    let b = start_hibernating().await;
    let (mut publisher, _) = Client::connect(b.tcp, &Conn::v311("busy")).await;
    until_hibernated(&b.broker, 1).await;
    let mut asleep = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        asleep.push(b.broker.stats().clients_hibernated);
        assert_eq!(
            publisher.publish("t", b"x", QoS::AtLeastOnce, false).await,
            ReasonCode::Success
        );
    }
    assert!(
        asleep[2..].iter().all(|n| *n == 0),
        "hibernated before each message: {asleep:?}"
    );
}
