//! Malformed input over raw sockets: each case closes that connection (an
//! MQTT 5 client first gets DISCONNECT with the reason [MQTT-4.13.1-1]) and
//! the broker goes on serving everyone else.

mod common;

use common::*;
use mqtt::*;

/// A CONNECT, then `bytes`; expects the given DISCONNECT reason (MQTT 5) or a
/// plain close (3.1.1).
async fn check(
    b: &TestBroker,
    version: ProtocolVersion,
    bytes: &[u8],
    expected: Option<ReasonCode>,
) {
    let conn = Conn {
        version,
        ..Conn::v5("victim")
    };
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    c.send_bytes(bytes).await;
    let got = c.expect_closed().await;
    assert_eq!(got, expected, "{version} {bytes:02X?}");
}

async fn still_serving(b: &TestBroker) {
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("survivor")).await;
    c.subscribe("alive/t", QoS::AtLeastOnce).await;
    c.publish("alive/t", b"yes", QoS::AtLeastOnce, false).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"yes");
}

#[tokio::test]
async fn malformed_packets_close_only_their_connection() {
    use ReasonCode::*;
    let b = start().await;
    // A bystander stays connected through everything.
    let (mut bystander, _) = Client::connect(b.tcp, &Conn::v311("bystander")).await;
    bystander.subscribe("by/t", QoS::AtMostOnce).await;
    let v5: &[(&[u8], ReasonCode)] = &[
        // [MQTT-3.3.1-4] QoS 3.
        (&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], MalformedPacket),
        // [MQTT-2.1.3-1] wrong flags on PUBREL and SUBSCRIBE.
        (&[0x60, 0x02, 0x00, 0x01], MalformedPacket),
        (
            &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
            MalformedPacket,
        ),
        // [MQTT-1.5.5-1] five-byte remaining length.
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], MalformedPacket),
        // [MQTT-3.3.2-2] wildcard in the topic name.
        (&[0x30, 0x04, 0x00, 0x01, b'#', 0x00], TopicNameInvalid),
        // [MQTT-1.5.4-1] invalid UTF-8; [MQTT-1.5.4-2] U+0000.
        (&[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00], MalformedPacket),
        (&[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00], MalformedPacket),
        // [MQTT-2.2.1-3] packet id 0.
        (
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            ProtocolError,
        ),
        // [MQTT-3.8.3-3] SUBSCRIBE without filters.
        (&[0x82, 0x03, 0x00, 0x01, 0x00], ProtocolError),
        // [MQTT-3.10.3-2] UNSUBSCRIBE without filters.
        (&[0xA2, 0x03, 0x00, 0x01, 0x00], ProtocolError),
        // Retain handling 3 [MQTT-3.8.3.1].
        (
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            ProtocolError,
        ),
        // [MQTT-4.7.1-2] '#' not last.
        (
            &[
                0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'#', b'/', b'a', 0x00,
            ],
            MalformedPacket,
        ),
        // Duplicate property [MQTT-2.2.2.2].
        (
            &[
                0x30, 0x0E, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
            ],
            ProtocolError,
        ),
        // Property not allowed in PUBLISH.
        (
            &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1],
            MalformedPacket,
        ),
        // [MQTT-3.3.4-6] subscription identifier from a client.
        (
            &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x01],
            ProtocolError,
        ),
        // Reserved packet type 0.
        (&[0x00, 0x00], MalformedPacket),
        // A server-only packet from a client.
        (&[0x20, 0x03, 0x00, 0x00, 0x00], ProtocolError),
        (&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00], ProtocolError),
        // [MQTT-3.1.0-2] second CONNECT.
        (
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
                0x01, b'a',
            ],
            ProtocolError,
        ),
        // PINGREQ with a body.
        (&[0xC0, 0x01, 0x00], MalformedPacket),
        // Invalid reason code in PUBACK.
        (&[0x40, 0x03, 0x00, 0x01, 0x05], MalformedPacket),
        // AUTH without enhanced authentication [MQTT-4.12.0-6]... and with a method.
        (&[0xF0, 0x00], ProtocolError),
        // [MQTT-3.3.2-9] topic alias 0.
        (
            &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
            TopicAliasInvalid,
        ),
        // DISCONNECT raising a zero session expiry [MQTT-3.14.2-2].
        (
            &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A],
            ProtocolError,
        ),
    ];
    for (bytes, reason) in v5 {
        check(&b, ProtocolVersion::V5, bytes, Some(*reason)).await;
    }
    let v311: &[&[u8]] = &[
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        &[0x62, 0x02, 0x00, 0x00],
        &[0xF0, 0x00],
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
        &[0x30, 0x02, 0x00, 0x00],
        &[0xE0, 0x01, 0x00],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    ];
    for bytes in v311 {
        check(&b, ProtocolVersion::V3_1_1, bytes, None).await;
    }
    still_serving(&b).await;
    bystander.send(&Packet::PingReq).await;
    assert_eq!(bystander.recv().await, Some(Packet::PingResp));
    assert!(b.broker.stats().malformed_packets >= (v5.len() + v311.len()) as u64);
}

#[tokio::test]
async fn bad_connects_are_refused() {
    let b = start().await;
    // [MQTT-3.1.0-1] the first packet is not CONNECT: closed, no CONNACK.
    let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
    c.send_bytes(&[0xC0, 0x00]).await;
    assert_eq!(c.recv().await, None);
    // A malformed MQTT 5 CONNECT (receive maximum 0) gets CONNACK with the reason.
    let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
    c.send_bytes(&[
        0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00,
        0x00, 0x00, 0x01, b'a',
    ])
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
    // [MQTT-3.1.2-3] reserved flag in a 3.1.1 CONNECT: closed.
    let mut c = Client::open(b.tcp, ProtocolVersion::V3_1_1).await;
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    assert_eq!(c.recv().await, None);
    // A CONNECT that never completes is dropped after the connect timeout;
    // here the client just goes away half-way.
    let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
    c.send_bytes(&[0x10, 0x20, 0x00, 0x04]).await;
    drop(c);
    still_serving(&b).await;
}

#[tokio::test]
async fn random_bytes_never_take_the_broker_down() {
    let b = start().await;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
        // Half the rounds start with a valid CONNECT so the garbage reaches
        // the post-CONNECT parser.
        if round % 2 == 0 {
            c.send(&Conn::v5(&format!("fuzz{round}")).packet()).await;
        }
        let len = (next() % 64) as usize + 1;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        c.send_bytes(&bytes).await;
        drop(c);
    }
    still_serving(&b).await;
}

#[tokio::test]
async fn strangers_who_never_finish_connect_cost_little_and_are_closed() {
    let settings = broker::Settings {
        connect_timeout_secs: 1,
        ..quick_settings()
    };
    let b = start_with(settings, std::sync::Arc::new(broker::AllowAll)).await;
    // A CONNECT header declaring 16 MiB: no CONNECT is that large, so it is
    // refused at once (MQTT 5: CONNACK 0x95) instead of waited for.
    let mut huge = Client::open(b.tcp, ProtocolVersion::V5).await;
    huge.send_bytes(&[
        0x10, 0xF9, 0xFF, 0xFF, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
    ])
    .await;
    match huge.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::PacketTooLarge),
        other => panic!("expected CONNACK 0x95, got {other:?}"),
    }
    assert_eq!(huge.recv().await, None);
    // A plausible size that never completes: closed after the connect
    // timeout, and the broker holds only what arrived meanwhile.
    let started = std::time::Instant::now();
    let stalled = stalled_connects(&b, 50).await;
    for mut c in stalled {
        assert_eq!(c.recv().await, None, "closed without a CONNACK");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "closed by the connect timeout"
    );
    still_serving(&b).await;
}

/// `n` connections that each send the first bytes of a 400 KiB CONNECT.
async fn stalled_connects(b: &TestBroker, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = Client::open(b.tcp, ProtocolVersion::V3_1_1).await;
        // Remaining length 409,600 = 0x80 0x80 0x19.
        c.send_bytes(&[0x10, 0x80, 0x80, 0x19, 0x00, 0x04, b'M', b'Q'])
            .await;
        out.push(c);
    }
    out
}
