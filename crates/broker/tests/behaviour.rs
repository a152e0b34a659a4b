//! The broker's behaviour, one test per rule, each citing the statement it
//! checks. A real broker on 127.0.0.1 and a raw client that sees every byte.

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker::{AllowAll, Message, Settings};
use bytes::Bytes;
use common::*;
use mqtt::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn every_version_connects_on_one_port() {
    let b = start_with(quick_settings(), Arc::new(AllowAll)).await;
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let conn = Conn {
            version,
            ..Conn::v5(&format!("c-{version}"))
        };
        let (mut c, ack) = Client::connect(b.tcp, &conn).await;
        assert!(!ack.session_present);
        assert_eq!(
            c.subscribe("v/t", QoS::AtLeastOnce).await,
            ReasonCode::GrantedQoS1
        );
        c.publish("v/t", b"x", QoS::AtLeastOnce, false).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"x");
        c.disconnect().await;
    }
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-2]
    let b = start().await;
    let conn = Conn::v5("twice");
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    c.send(&conn.packet()).await;
    assert_eq!(c.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    // [MQTT-3.1.2-2]
    let b = start().await;
    let mut c = Client::open(b.tcp, ProtocolVersion::V3_1_1).await;
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason, ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv().await, None);
}

#[tokio::test]
async fn empty_client_id_rules() {
    let b = start().await;
    // [MQTT-3.1.3-8] 3.1.1 with a persistent session: identifier rejected.
    let (_c, ack) = Client::connect_with(b.tcp, &Conn::v311("").persistent(0)).await;
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    // [MQTT-3.1.3-6] 3.1.1 clean session: accepted.
    Client::connect(b.tcp, &Conn::v311("")).await;
    // [MQTT-3.2.2-16] 5.0: the server assigns one and says which.
    let (_c, ack) = Client::connect(b.tcp, &Conn::v5("")).await;
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!assigned.is_empty());
}

#[tokio::test]
async fn session_present_and_clean_start() {
    // [MQTT-3.2.2-2] [MQTT-3.2.2-3] [MQTT-3.1.2-4] [MQTT-3.1.2-5]
    let b = start().await;
    let conn = Conn::v5("sp").persistent(60);
    let (mut c, ack) = Client::connect(b.tcp, &conn).await;
    assert!(!ack.session_present);
    c.subscribe("sp/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (c, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.session_present, "resumed session");
    c.disconnect().await;
    // Subscriptions survived: a message published while offline is queued.
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("sp-pub")).await;
    p.publish("sp/t", b"queued", QoS::AtLeastOnce, false).await;
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"queued");
    c.disconnect().await;
    let mut clean = conn.clone();
    clean.clean_start = true;
    let (_c, ack) = Client::connect(b.tcp, &clean).await;
    assert!(!ack.session_present, "clean start discards the session");
}

#[tokio::test]
async fn v311_clean_session_false_keeps_the_session() {
    let b = start().await;
    let conn = Conn::v311("keep").persistent(0);
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    c.subscribe("k/#", QoS::ExactlyOnce).await;
    c.disconnect().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v311("keep-pub")).await;
    p.publish("k/1", b"one", QoS::ExactlyOnce, false).await;
    let (mut c, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.session_present);
    let got = c.recv_publish().await;
    assert_eq!((got.qos, &got.payload[..]), (QoS::ExactlyOnce, &b"one"[..]));
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    // [MQTT-3.1.2-23]
    let b = start().await;
    let conn = Conn::v5("expiring").persistent(1);
    let (c, _) = Client::connect(b.tcp, &conn).await;
    c.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_c, ack) = Client::connect(b.tcp, &conn).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn takeover_closes_the_old_connection() {
    // [MQTT-3.1.4-3]
    let b = start().await;
    let (mut first, _) = Client::connect(b.tcp, &Conn::v5("same")).await;
    let (mut second, _) = Client::connect(b.tcp, &Conn::v5("same")).await;
    assert_eq!(
        first.expect_closed().await,
        Some(ReasonCode::SessionTakenOver)
    );
    second.send(&Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn keepalive_expiry_closes_and_publishes_the_will() {
    // [MQTT-3.1.2-24] [MQTT-3.1.2-8]
    let b = start().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v311("watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut conn = Conn::v311("sleepy");
    conn.keep_alive = 1;
    conn.will = Some(will("wills/sleepy"));
    let started = std::time::Instant::now();
    let (mut sleepy, _) = Client::connect(b.tcp, &conn).await;
    let will = watcher.recv_publish().await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        ("wills/sleepy", &b"gone"[..])
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}"
    );
    assert_eq!(sleepy.recv().await, None);
}

#[tokio::test]
async fn normal_disconnect_deletes_the_will_and_0x04_sends_it() {
    // [MQTT-3.1.2-10] and DISCONNECT 0x04 [MQTT-3.14.2.1]
    let b = start().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v5("w2")).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut conn = Conn::v5("leaver");
    conn.will = Some(Will {
        topic: "wills/leaver".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (c, _) = Client::connect(b.tcp, &conn).await;
    c.disconnect().await;
    watcher.expect_silence(Duration::from_millis(300)).await;
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(&watcher.recv_publish().await.payload[..], b"bye");
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_reconnect_in_time() {
    // [MQTT-3.1.3-9]
    let b = start().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v5("w3")).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut conn = Conn::v5("delayed").persistent(30);
    let will_props = Properties {
        will_delay_interval: Some(1),
        ..Properties::default()
    };
    conn.will = Some(Will {
        topic: "wills/delayed".into(),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: will_props,
    });
    // Dropped without DISCONNECT, back within the delay: no will.
    let (c, _) = Client::connect(b.tcp, &conn).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(1300)).await;
    // Dropped and not back: the will goes out after the delay.
    let started = std::time::Instant::now();
    drop(c);
    assert_eq!(&watcher.recv_publish().await.payload[..], b"late");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn qos1_is_redelivered_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1] [MQTT-3.3.1-1]
    let b = start().await;
    let conn = Conn::v5("redeliver").persistent(60);
    let (mut sub, _) = Client::connect(b.tcp, &conn).await;
    sub.subscribe("r/q1", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("r-pub")).await;
    p.publish("r/q1", b"once", QoS::AtLeastOnce, false).await;
    let first = sub.recv_publish_no_ack().await;
    assert!(!first.dup);
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut sub, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.session_present);
    let again = sub.recv_publish().await;
    assert!(again.dup, "redelivery carries DUP");
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"once"[..])
    );
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn qos2_duplicate_before_pubrel_is_delivered_once() {
    // [MQTT-4.3.3-10] method B: the packet id is held from PUBLISH to PUBREL.
    let b = start().await;
    let (mut sub, _) = Client::connect(b.tcp, &Conn::v5("q2-sub")).await;
    sub.subscribe("q2/t", QoS::ExactlyOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("q2-pub")).await;
    let mut publish = p.publish_packet("q2/t", b"exactly", QoS::ExactlyOnce, false);
    p.send(&Packet::Publish(publish.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == publish.packet_id));
    publish.dup = true;
    p.send(&Packet::Publish(publish.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == publish.packet_id));
    p.send(&Packet::PubRel(PubResponse::new(publish.packet_id)))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    let got = sub.recv_publish().await;
    assert_eq!(
        (got.qos, &got.payload[..]),
        (QoS::ExactlyOnce, &b"exactly"[..])
    );
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn pubrel_for_unknown_id_is_answered() {
    // [MQTT-3.7.2.1] PUBCOMP 0x92 in 5.0.
    let b = start().await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("unknown-rel")).await;
    c.send(&Packet::PubRel(PubResponse::new(77))).await;
    match c.recv().await {
        Some(Packet::PubComp(r)) => assert_eq!(
            (r.packet_id, r.reason),
            (77, ReasonCode::PacketIdentifierNotFound)
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription() {
    // [MQTT-3.8.4-8]
    let b = start().await;
    let (mut sub, _) = Client::connect(b.tcp, &Conn::v311("down")).await;
    sub.subscribe("d/t", QoS::AtMostOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v311("down-pub")).await;
    p.publish("d/t", b"x", QoS::ExactlyOnce, false).await;
    assert_eq!(sub.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.4-2] [MQTT-3.3.4-3]
    let b = start().await;
    let (mut sub, _) = Client::connect(b.tcp, &Conn::v5("overlap")).await;
    let mut props = Properties {
        subscription_identifiers: vec![5],
        ..Properties::default()
    };
    sub.subscribe_with(
        "o/+",
        SubscriptionOptions {
            qos: QoS::AtMostOnce,
            ..Default::default()
        },
        props.clone(),
    )
    .await;
    props.subscription_identifiers = vec![9];
    sub.subscribe_with(
        "o/#",
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
        props,
    )
    .await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("overlap-pub")).await;
    p.publish("o/x", b"x", QoS::ExactlyOnce, false).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [5, 9]);
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn messages_on_one_topic_arrive_in_order() {
    // [MQTT-4.6.0-5] ordered per topic.
    let b = start().await;
    let (mut sub, _) = Client::connect(b.tcp, &Conn::v5("order")).await;
    sub.subscribe("ord/t", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("order-pub")).await;
    for i in 0..200u32 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let packet = p.publish_packet("ord/t", &i.to_be_bytes(), qos, false);
        p.send(&Packet::Publish(packet)).await;
    }
    for i in 0..200u32 {
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], &i.to_be_bytes());
    }
}

#[tokio::test]
async fn retained_set_replace_clear() {
    // [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8]
    let b = start().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v311("ret-pub")).await;
    p.publish("ret/a", b"1", QoS::AtLeastOnce, true).await;
    p.publish("ret/a", b"2", QoS::AtLeastOnce, true).await;
    let (mut s, _) = Client::connect(b.tcp, &Conn::v311("ret-sub")).await;
    s.subscribe("ret/#", QoS::AtLeastOnce).await;
    let got = s.recv_publish().await;
    assert!(got.retain, "retained message keeps RETAIN at subscribe");
    assert_eq!(&got.payload[..], b"2");
    // A live retained publish reaches 3.1.1 subscribers with RETAIN 0 [MQTT-3.3.1-9 (3.1.1)].
    p.publish("ret/a", b"3", QoS::AtLeastOnce, true).await;
    let live = s.recv_publish().await;
    assert!(!live.retain);
    p.publish("ret/a", b"", QoS::AtLeastOnce, true).await;
    s.recv_publish().await;
    let (mut s2, _) = Client::connect(b.tcp, &Conn::v311("ret-sub2")).await;
    s2.subscribe("ret/#", QoS::AtLeastOnce).await;
    s2.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    // [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-12] [MQTT-3.3.1-13]
    let b = start().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("rh-pub")).await;
    p.publish("rh/t", b"r", QoS::AtMostOnce, true).await;
    let (mut s, _) = Client::connect(b.tcp, &Conn::v5("rh-sub")).await;
    let opts = |rh, rap| SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: rh,
        retain_as_published: rap,
        no_local: false,
    };
    s.subscribe_with(
        "rh/t",
        opts(RetainHandling::DoNotSend, false),
        Properties::default(),
    )
    .await;
    s.expect_silence(Duration::from_millis(200)).await;
    s.subscribe_with(
        "rh/+",
        opts(RetainHandling::SendAtSubscribeIfNew, true),
        Properties::default(),
    )
    .await;
    assert!(s.recv_publish().await.retain);
    s.subscribe_with(
        "rh/+",
        opts(RetainHandling::SendAtSubscribeIfNew, true),
        Properties::default(),
    )
    .await;
    s.expect_silence(Duration::from_millis(200)).await;
    s.subscribe_with(
        "rh/+",
        opts(RetainHandling::SendAtSubscribe, true),
        Properties::default(),
    )
    .await;
    assert!(s.recv_publish().await.retain);
    p.publish("rh/t", b"live", QoS::AtMostOnce, true).await;
    let live = s.recv_publish().await;
    assert!(live.retain, "retain as published keeps the flag");
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]
    let b = start().await;
    let (mut s, _) = Client::connect(b.tcp, &Conn::v5("dollar")).await;
    s.subscribe("#", QoS::AtMostOnce).await;
    s.subscribe("+/broker/#", QoS::AtMostOnce).await;
    b.broker.publish(Message::new(
        "$SYS/broker/test",
        Bytes::from_static(b"x"),
        QoS::AtMostOnce,
        false,
    ));
    s.expect_silence(Duration::from_millis(200)).await;
    s.subscribe("$SYS/broker/test", QoS::AtMostOnce).await;
    b.broker.publish(Message::new(
        "$SYS/broker/test",
        Bytes::from_static(b"y"),
        QoS::AtMostOnce,
        false,
    ));
    assert_eq!(&s.recv_publish().await.payload[..], b"y");
}

#[tokio::test]
async fn clients_cannot_publish_into_sys() {
    let b = start().await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("sys-writer")).await;
    assert_eq!(
        c.publish("$SYS/broker/uptime", b"0", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_one_member() {
    // [MQTT-4.8.2-3]
    let b = start().await;
    let (mut a, _) = Client::connect(b.tcp, &Conn::v5("share-a")).await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("share-b")).await;
    a.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    c.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("share-pub")).await;
    for i in 0..10u8 {
        p.publish("jobs/x", &[i], QoS::AtLeastOnce, false).await;
    }
    let mut seen = Vec::new();
    for client in [&mut a, &mut c] {
        while let Ok(Some(Packet::Publish(got))) =
            client.recv_within(Duration::from_millis(300)).await
        {
            client.ack(&got).await;
            seen.push(got.payload[0]);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each message exactly once across the group"
    );
}

#[tokio::test]
async fn no_local_keeps_own_messages_away() {
    // [MQTT-3.8.3-3]
    let b = start().await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("self")).await;
    let opts = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    c.subscribe_with("nl/t", opts, Properties::default()).await;
    c.publish("nl/t", b"mine", QoS::AtMostOnce, false).await;
    c.expect_silence(Duration::from_millis(200)).await;
    let (mut other, _) = Client::connect(b.tcp, &Conn::v5("other")).await;
    other
        .publish("nl/t", b"theirs", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    // [MQTT-3.3.2-12] client to server; [MQTT-3.3.2-11] server to client.
    let b = start().await;
    let mut conn = Conn::v5("alias-sub");
    conn.properties.topic_alias_maximum = Some(4);
    let (mut s, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) > 0);
    s.subscribe("al/#", QoS::AtMostOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("alias-pub")).await;
    let mut first = p.publish_packet("al/long/topic", b"1", QoS::AtMostOnce, false);
    first.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(first)).await;
    let mut second = p.publish_packet("", b"2", QoS::AtMostOnce, false);
    second.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(second)).await;
    let one = s.recv_publish().await;
    assert_eq!(one.topic, "al/long/topic");
    let alias = one.properties.topic_alias.expect("server sets an alias");
    let two = s.recv_publish().await;
    assert_eq!(
        (
            two.topic.as_str(),
            two.properties.topic_alias,
            &two.payload[..]
        ),
        ("", Some(alias), &b"2"[..])
    );
    // [MQTT-3.3.2-9] an alias above the maximum closes the connection.
    let mut bad = p.publish_packet("al/x", b"3", QoS::AtMostOnce, false);
    bad.properties.topic_alias = Some(u16::MAX);
    p.send(&Packet::Publish(bad)).await;
    assert_eq!(p.expect_closed().await, Some(ReasonCode::TopicAliasInvalid));
}

#[tokio::test]
async fn unknown_topic_alias_is_a_protocol_error() {
    let b = start().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("alias-unknown")).await;
    let mut packet = p.publish_packet("", b"x", QoS::AtMostOnce, false);
    packet.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(packet)).await;
    assert_eq!(p.expect_closed().await, Some(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn message_expiry_drops_stale_messages_and_counts_down() {
    // [MQTT-3.3.2-5] [MQTT-3.3.2-6]
    let b = start().await;
    let conn = Conn::v5("exp-sub").persistent(60);
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    s.subscribe("exp/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("exp-pub")).await;
    let mut short = p.publish_packet("exp/short", b"stale", QoS::AtLeastOnce, false);
    short.properties.message_expiry_interval = Some(1);
    p.publish_full(short).await;
    let mut long = p.publish_packet("exp/long", b"fresh", QoS::AtLeastOnce, false);
    long.properties.message_expiry_interval = Some(100);
    p.publish_full(long).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"fresh");
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((98..100).contains(&left), "remaining expiry {left}");
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn properties_pass_through_unaltered() {
    // [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-20] [MQTT-3.3.2.3.2]
    let b = start().await;
    let (mut s, _) = Client::connect(b.tcp, &Conn::v5("props-sub")).await;
    s.subscribe("props/t", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("props-pub")).await;
    let mut packet = p.publish_packet("props/t", "héllo".as_bytes(), QoS::AtLeastOnce, false);
    packet.properties.payload_format_indicator = Some(1);
    packet.properties.content_type = Some("text/plain".into());
    packet.properties.response_topic = Some("props/reply".into());
    packet.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    packet.properties.user_properties = vec![
        ("a".into(), "1".into()),
        ("a".into(), "2".into()),
        ("b".into(), "3".into()),
    ];
    let sent = packet.properties.clone();
    p.publish_full(packet).await;
    let got = s.recv_publish().await.properties;
    assert_eq!(got.payload_format_indicator, sent.payload_format_indicator);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(
        got.user_properties, sent.user_properties,
        "order kept [MQTT-3.3.2-18]"
    );
}

#[tokio::test]
async fn invalid_utf8_payload_with_format_indicator_is_refused() {
    // [MQTT-3.3.2.3.2] PUBACK 0x99.
    let b = start().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("pfi")).await;
    let mut packet = p.publish_packet("pfi/t", &[0xFF, 0xFE], QoS::AtLeastOnce, false);
    packet.properties.payload_format_indicator = Some(1);
    assert_eq!(
        p.publish_full(packet).await,
        ReasonCode::PayloadFormatInvalid
    );
}

#[tokio::test]
async fn puback_says_when_nobody_subscribed() {
    let b = start().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("lonely")).await;
    assert_eq!(
        p.publish("nobody/here", b"x", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
    let b = start().await;
    let mut conn = Conn::v5("small");
    conn.properties.maximum_packet_size = Some(128);
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    s.subscribe("size/t", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("size-pub")).await;
    p.publish("size/t", &[7u8; 500], QoS::AtLeastOnce, false)
        .await;
    p.publish("size/t", b"small", QoS::AtLeastOnce, false).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"small");
}

#[tokio::test]
async fn server_maximum_packet_size_closes_with_0x95() {
    // [MQTT-3.2.2-15]
    let settings = Settings {
        max_packet_size: 1024,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, ack) = Client::connect(b.tcp, &Conn::v5("big")).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    p.publish_full(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "big/t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 2048]),
    })
    .await;
    assert_eq!(p.expect_closed().await, Some(ReasonCode::PacketTooLarge));
}

#[tokio::test]
async fn receive_maximum_limits_messages_in_flight() {
    // [MQTT-3.3.4-7] [MQTT-3.3.4-8]
    let b = start().await;
    let mut conn = Conn::v5("rm");
    conn.properties.receive_maximum = Some(2);
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    s.subscribe("rm/t", QoS::AtLeastOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("rm-pub")).await;
    for i in 0..5u8 {
        p.publish("rm/t", &[i], QoS::AtLeastOnce, false).await;
    }
    let one = s.recv_publish_no_ack().await;
    let two = s.recv_publish_no_ack().await;
    s.expect_silence(Duration::from_millis(300)).await;
    s.ack(&one).await;
    let three = s.recv_publish_no_ack().await;
    assert_eq!(three.payload[0], 2);
    s.expect_silence(Duration::from_millis(200)).await;
    s.ack(&two).await;
    s.ack(&three).await;
    assert_eq!(s.recv_publish().await.payload[0], 3);
    assert_eq!(s.recv_publish().await.payload[0], 4);
}

#[tokio::test]
async fn exceeding_the_servers_receive_maximum_closes_with_0x93() {
    // [MQTT-3.3.4-7], 3.2.2.3.3
    let settings = Settings {
        receive_maximum: 2,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, ack) = Client::connect(b.tcp, &Conn::v5("flood")).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for _ in 0..3 {
        let packet = p.publish_packet("flood/t", b"x", QoS::ExactlyOnce, false);
        p.send(&Packet::Publish(packet)).await;
    }
    let mut recs = 0;
    let reason = loop {
        match p.recv().await {
            Some(Packet::PubRec(_)) => recs += 1,
            Some(Packet::Disconnect(d)) => break d.reason,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((recs, reason), (2, ReasonCode::ReceiveMaximumExceeded));
}

#[tokio::test]
async fn a_client_that_keeps_sending_past_receive_maximum_still_reads_0x93() {
    // The broker half-closes and drains, so the reason is not lost to a
    // reset while the flood is still arriving.
    let settings = Settings {
        receive_maximum: 2,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("flooder")).await;
    let mut flood = bytes::BytesMut::new();
    for _ in 0..5_000 {
        let packet = p.publish_packet("flood/t", &[0u8; 64], QoS::ExactlyOnce, false);
        encode(&Packet::Publish(packet), ProtocolVersion::V5, &mut flood).expect("encode");
    }
    p.send_bytes(&flood).await;
    // Read only once the broker has ended the connection, as a client busy
    // writing would.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reason = loop {
        match p.recv().await {
            Some(Packet::PubRec(_)) => {}
            Some(Packet::Disconnect(d)) => break Some(d.reason),
            None => break None,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reason, Some(ReasonCode::ReceiveMaximumExceeded));
}

#[tokio::test]
async fn a_client_that_answers_its_pubrecs_after_exceeding_receive_maximum_reads_0x93() {
    // A client that goes on with its QoS 2 flow (PUBREL for each PUBREC)
    // while the broker is closing must get no write error before it has
    // read the reason: the broker half-closes and reads what still comes.
    let settings = Settings {
        receive_maximum: 2,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("answers-pubrecs")).await;
    let mut three = bytes::BytesMut::new();
    for _ in 0..3 {
        let packet = p.publish_packet("flood/t", b"x", QoS::ExactlyOnce, false);
        encode(&Packet::Publish(packet), ProtocolVersion::V5, &mut three).expect("encode");
    }
    p.stream
        .write_all(&three)
        .await
        .expect("write the publishes");
    let reason = loop {
        match p.recv().await {
            Some(Packet::PubRec(rec)) => {
                let mut rel = bytes::BytesMut::new();
                encode(
                    &Packet::PubRel(PubResponse::new(rec.packet_id)),
                    ProtocolVersion::V5,
                    &mut rel,
                )
                .expect("encode");
                // Slow, as a client doing other work may be: 1.4 s in all,
                // well past the moment the broker closed its side.
                tokio::time::sleep(Duration::from_millis(700)).await;
                p.stream
                    .write_all(&rel)
                    .await
                    .expect("PUBREL written before the DISCONNECT is read");
            }
            Some(Packet::Disconnect(d)) => break Some(d.reason),
            None => break None,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reason, Some(ReasonCode::ReceiveMaximumExceeded));
}

#[tokio::test]
async fn a_client_silent_after_its_disconnect_does_not_keep_the_brokers_socket() {
    // The drain that lets a client read its reason is no way to hold a
    // socket open: 2 s without a byte and the broker closes for good, so a
    // later write is answered with a reset.
    let settings = Settings {
        receive_maximum: 1,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("silent-after")).await;
    for _ in 0..2 {
        let packet = p.publish_packet("flood/t", b"x", QoS::ExactlyOnce, false);
        p.send(&Packet::Publish(packet)).await;
    }
    let reason = loop {
        match p.recv().await {
            Some(Packet::PubRec(_)) => {}
            Some(Packet::Disconnect(d)) => break d.reason,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reason, ReasonCode::ReceiveMaximumExceeded);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The first write after a full close draws the reset; the next fails.
    let mut refused = false;
    for _ in 0..10 {
        if p.stream.write_all(b"\xc0\x00").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "the broker still reads a client silent for 2.5 s after its DISCONNECT"
    );
}

#[tokio::test]
async fn a_3_1_1_client_is_not_held_to_a_receive_maximum_it_was_never_told() {
    let settings = Settings {
        receive_maximum: 2,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v311("many-in-flight")).await;
    for _ in 0..5 {
        let packet = p.publish_packet("flight/t", b"x", QoS::ExactlyOnce, false);
        p.send(&Packet::Publish(packet)).await;
    }
    for _ in 0..5 {
        match p.recv().await {
            Some(Packet::PubRec(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_oldest() {
    let settings = Settings {
        max_queued_messages: 3,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let conn = Conn::v5("bounded").persistent(60);
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    s.subscribe("q/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("q-pub")).await;
    for i in 0..10u8 {
        p.publish("q/t", &[i], QoS::AtLeastOnce, false).await;
    }
    let (mut s, _) = Client::connect(b.tcp, &conn).await;
    let got: Vec<u8> = [
        s.recv_publish().await,
        s.recv_publish().await,
        s.recv_publish().await,
    ]
    .iter()
    .map(|p| p.payload[0])
    .collect();
    assert_eq!(got, [7, 8, 9]);
    assert_eq!(b.broker.stats().messages_dropped, 7);
}

#[tokio::test]
async fn a_slow_subscriber_does_not_stall_the_others() {
    // The queues hold everything, so any loss would be a stall, not a drop.
    let settings = Settings {
        max_queued_messages: 1000,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    // Subscribes and then never reads.
    let (mut slow, _) = Client::connect(b.tcp, &Conn::v5("slow")).await;
    slow.subscribe("bulk/t", QoS::AtMostOnce).await;
    let (mut fast, _) = Client::connect(b.tcp, &Conn::v5("fast")).await;
    fast.subscribe("bulk/t", QoS::AtMostOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("bulk-pub")).await;
    let payload = vec![1u8; 64 * 1024];
    let reader = tokio::spawn(async move {
        for _ in 0..300 {
            fast.recv_publish().await;
        }
    });
    for _ in 0..300 {
        p.publish("bulk/t", &payload, QoS::AtMostOnce, false).await;
    }
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the fast subscriber got everything while the slow one slept")
        .expect("reader");
    drop(slow);
}

#[tokio::test]
async fn one_mebibyte_payloads_arrive_intact() {
    let b = start().await;
    let (mut s, _) = Client::connect(b.tcp, &Conn::v311("big-sub")).await;
    s.subscribe("big/#", QoS::ExactlyOnce).await;
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("big-pub")).await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    p.publish("big/one", &payload, QoS::ExactlyOnce, false)
        .await;
    let got = s.recv_publish().await;
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload[..] == payload[..]);
}

#[tokio::test]
async fn unsubscribe_reports_what_existed() {
    // [MQTT-3.10.4-4] [MQTT-3.10.4-5]
    let b = start().await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("unsub")).await;
    c.subscribe("u/a", QoS::AtMostOnce).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: vec!["u/a".into(), "u/b".into()],
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(ack)) => {
            assert_eq!(ack.packet_id, 9);
            assert_eq!(
                ack.reasons,
                [ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("{other:?}"),
    }
    c.publish("u/a", b"x", QoS::AtMostOnce, false).await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn connection_limit_refuses_the_extra_client() {
    let settings = Settings {
        max_connections: 2,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let _a = Client::connect(b.tcp, &Conn::v5("l1")).await;
    let _c = Client::connect(b.tcp, &Conn::v5("l2")).await;
    let (_d, ack) = Client::connect_with(b.tcp, &Conn::v5("l3")).await;
    assert_eq!(ack.reason, ReasonCode::ServerBusy);
}

#[tokio::test]
async fn server_keep_alive_caps_the_clients() {
    // [MQTT-3.2.2-21]
    let settings = Settings {
        max_keep_alive: 30,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let mut conn = Conn::v5("ka");
    conn.keep_alive = 600;
    let (_c, ack) = Client::connect(b.tcp, &conn).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[tokio::test]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24]: 1 s keep alive, closed 1.5 s after the last packet.
    let b = start_with(quick_settings(), Arc::new(AllowAll)).await;
    let mut conn = Conn::v5("silent");
    conn.keep_alive = 1;
    let (mut c, _) = Client::connect(b.tcp, &conn).await;
    // A packet before the deadline moves it on.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.send(&Packet::PingReq).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
    let pinged = std::time::Instant::now();
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("{other:?}"),
    }
    let silent = pinged.elapsed();
    assert!(
        silent >= Duration::from_millis(1400) && silent < Duration::from_secs(4),
        "closed after {silent:?} of silence"
    );
}

#[tokio::test]
async fn graceful_shutdown_sends_wills_and_0x8b() {
    let b = start().await;
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v5("sd-watch")).await;
    watcher.subscribe("sd/#", QoS::AtLeastOnce).await;
    let mut conn = Conn::v311("sd-dev");
    conn.will = Some(Will {
        topic: "sd/dev".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (mut dev, _) = Client::connect(b.tcp, &conn).await;
    let broker = b.broker.clone();
    let shutdown = tokio::spawn(async move { broker.shutdown().await });
    let will = watcher.recv_publish().await;
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(
        watcher.expect_closed().await,
        Some(ReasonCode::ServerShuttingDown)
    );
    assert_eq!(dev.recv().await, None);
    shutdown.await.expect("shutdown");
    assert!(
        tokio::net::TcpStream::connect(b.tcp).await.is_err() || {
            let (_c, ack) = Client::connect_with(b.tcp, &Conn::v5("late")).await;
            ack.reason.is_error()
        }
    );
}

#[tokio::test]
async fn sys_topics_and_prometheus_figures() {
    let settings = Settings {
        sys_interval_secs: 1,
        ..Settings::default()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut c, _) = Client::connect(b.tcp, &Conn::v5("sys")).await;
    c.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    let got = c.recv_publish().await;
    let connected: u64 = std::str::from_utf8(&got.payload)
        .expect("utf8")
        .parse()
        .expect("number");
    assert!(connected >= 1);
    let text = b.broker.stats().prometheus();
    assert!(
        text.contains("telemark_broker_clients_connected 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE telemark_broker_publish_received_total counter"));
}

#[tokio::test]
async fn messages_follow_the_session_to_the_connection_that_took_it_over() {
    // [MQTT-3.1.4-3] with a resumed session: nothing is left with the old connection.
    let b = start().await;
    let conn = Conn::v5("roaming").persistent(60);
    let (mut first, _) = Client::connect(b.tcp, &conn).await;
    first.subscribe("roam/t", QoS::AtLeastOnce).await;
    let (mut second, ack) = Client::connect(b.tcp, &conn).await;
    assert!(ack.session_present);
    assert_eq!(
        first.expect_closed().await,
        Some(ReasonCode::SessionTakenOver)
    );
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("roam-pub")).await;
    for i in 0..20u8 {
        p.publish("roam/t", &[i], QoS::AtLeastOnce, false).await;
    }
    for i in 0..20u8 {
        assert_eq!(second.recv_publish().await.payload[0], i);
    }
}

/// Gives the client `deep` a queue of its own, as the platform gives its ingest.
struct DeepQueueFor(&'static str);

impl broker::Authenticator for DeepQueueFor {
    fn authenticate<'a>(
        &'a self,
        request: &'a broker::ConnectRequest,
    ) -> broker::BoxFuture<'a, Result<broker::ClientIdentity, ReasonCode>> {
        Box::pin(async move {
            let mut identity = broker::ClientIdentity::from_request(request);
            if request.client_id.as_str() == self.0 {
                identity.max_queued_messages = Some(100);
            }
            Ok(identity)
        })
    }

    fn authorize(&self, _: &broker::ClientIdentity, _: broker::Action, _: &str) -> bool {
        true
    }
}

#[tokio::test]
async fn an_embedder_can_give_one_client_a_deeper_queue() {
    let settings = Settings {
        max_queued_messages: 3,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(DeepQueueFor("deep"))).await;
    let (deep, shallow) = (
        Conn::v5("deep").persistent(60),
        Conn::v5("shallow").persistent(60),
    );
    for conn in [&deep, &shallow] {
        let (mut c, _) = Client::connect(b.tcp, conn).await;
        c.subscribe("dq/t", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let (mut p, _) = Client::connect(b.tcp, &Conn::v5("dq-pub")).await;
    for i in 0..10u8 {
        p.publish("dq/t", &[i], QoS::AtLeastOnce, false).await;
    }
    let (mut c, _) = Client::connect(b.tcp, &deep).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(c.recv_publish().await.payload[0]);
    }
    assert_eq!(
        got,
        (0..10).collect::<Vec<u8>>(),
        "nothing dropped for the deep queue"
    );
    let (mut c, _) = Client::connect(b.tcp, &shallow).await;
    assert_eq!(
        c.recv_publish().await.payload[0],
        7,
        "the others keep the bound"
    );
    assert_eq!(b.broker.stats().messages_dropped, 7);
}

#[tokio::test]
async fn a_local_subscriber_gets_what_network_clients_publish() {
    let b = start().await;
    // A retained message there before the subscription arrives first, with
    // its retain flag [MQTT-3.3.1-8].
    let (mut early, _) = Client::connect(b.tcp, &Conn::v5("early")).await;
    early
        .publish("dev/a/status", b"online", QoS::AtLeastOnce, true)
        .await;
    early.disconnect().await;
    let mut local = b
        .broker
        .subscribe_local("platform", &[("dev/#", QoS::AtLeastOnce)], 100)
        .expect("subscribe");
    let mut got = std::collections::VecDeque::new();
    let n = tokio::time::timeout(Duration::from_secs(5), local.recv(&mut got))
        .await
        .expect("retained in time");
    assert_eq!(n, Some(1));
    let first = got.pop_front().expect("retained");
    assert_eq!(
        (&*first.message.topic, first.retain),
        ("dev/a/status", true)
    );

    // In publish order [MQTT-4.6.0-6], at the lower QoS [MQTT-3.8.4-8].
    let (mut device, _) = Client::connect(b.tcp, &Conn::v5("device")).await;
    for n in 0..50u8 {
        device
            .publish("dev/a/cpu", &[n], QoS::ExactlyOnce, false)
            .await;
    }
    device
        .publish("other/x", b"-", QoS::AtMostOnce, false)
        .await;
    let mut payloads = Vec::new();
    while payloads.len() < 50 {
        tokio::time::timeout(Duration::from_secs(5), local.recv(&mut got))
            .await
            .expect("messages in time");
        for d in got.drain(..) {
            assert_eq!(d.qos, QoS::AtLeastOnce);
            payloads.push(d.message.payload[0]);
        }
    }
    assert_eq!(payloads, (0..50).collect::<Vec<u8>>());

    // A bad filter is refused; dropping the subscriber ends its session.
    assert!(
        b.broker
            .subscribe_local("bad", &[("a/#/b", QoS::AtMostOnce)], 10)
            .is_err()
    );
    drop(local);
    assert_eq!(b.broker.stats().subscriptions, 0);
}

/// Waits for the keeping subscriber's next deliveries.
async fn kept_deliveries(
    local: &mut broker::LocalSubscriber,
) -> std::collections::VecDeque<broker::session::Delivery> {
    let mut got = std::collections::VecDeque::new();
    tokio::time::timeout(Duration::from_secs(5), local.recv(&mut got))
        .await
        .expect("delivered in time")
        .expect("the broker runs");
    got
}

#[tokio::test]
async fn a_publishers_acknowledgements_wait_until_a_keeping_subscriber_has_kept_the_message() {
    let b = start().await;
    let mut local = b
        .broker
        .subscribe_local_keeping("platform", &[("dev/#", QoS::AtLeastOnce)], 100)
        .expect("subscribe");
    let (mut device, _) = Client::connect(b.tcp, &Conn::v5("device")).await;
    let kept = device.publish_packet("dev/a/cpu", b"1", QoS::AtLeastOnce, false);
    // Not for the keeping subscriber, but after the held one: its PUBACK
    // waits too, since PUBACKs go in order [MQTT-4.6.0-2].
    let other = device.publish_packet("other/x", b"2", QoS::AtLeastOnce, false);
    let exactly = device.publish_packet("dev/a/mem", b"3", QoS::ExactlyOnce, false);
    for p in [&kept, &other, &exactly] {
        device.send(&Packet::Publish(p.clone())).await;
    }
    let mut got = kept_deliveries(&mut local).await;
    while got.len() < 2 {
        got.extend(kept_deliveries(&mut local).await);
    }
    device.expect_silence(Duration::from_millis(300)).await;
    // Resent while its PUBREC waits: answered once, delivered once
    // [MQTT-4.3.3-10].
    let mut again = exactly.clone();
    again.dup = true;
    device.send(&Packet::Publish(again)).await;
    device.expect_silence(Duration::from_millis(200)).await;

    let mut receipts: Vec<_> = got.iter_mut().map(|d| d.receipt.take()).collect();
    receipts[0].take().expect("a receipt for QoS 1").kept();
    for expected in [kept.packet_id, other.packet_id] {
        match device.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, expected),
            other => panic!("expected PUBACK {expected}, got {other:?}"),
        }
    }
    device.expect_silence(Duration::from_millis(200)).await;
    receipts[1].take().expect("a receipt for QoS 2").kept();
    match device.recv().await {
        Some(Packet::PubRec(rec)) => assert_eq!(rec.packet_id, exactly.packet_id),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    device
        .send(&Packet::PubRel(PubResponse::new(exactly.packet_id)))
        .await;
    assert!(matches!(device.recv().await, Some(Packet::PubComp(_))));
    let mut more = std::collections::VecDeque::new();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), local.recv(&mut more))
            .await
            .is_err(),
        "the resent QoS 2 message went on once: {more:?}"
    );
    // With nothing held, acknowledgements of other topics go at once.
    assert_eq!(
        device
            .publish("other/y", b"4", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn a_message_its_keeping_subscriber_loses_is_not_acknowledged_and_comes_again() {
    let b = start().await;
    // Room for one: a second message pushes the first out of the queue.
    let mut local = b
        .broker
        .subscribe_local_keeping("platform", &[("dev/#", QoS::AtLeastOnce)], 1)
        .expect("subscribe");
    let conn = Conn::v5("device").persistent(600);
    let (mut device, _) = Client::connect(b.tcp, &conn).await;
    let first = device.publish_packet("dev/a/cpu", b"1", QoS::AtLeastOnce, false);
    let second = device.publish_packet("dev/a/cpu", b"2", QoS::AtLeastOnce, false);
    device.send(&Packet::Publish(first.clone())).await;
    device.send(&Packet::Publish(second.clone())).await;
    // The first was dropped unkept: no PUBACK for it nor for what came after
    // it; the connection ends with 0x89 so the client sends them again.
    assert_eq!(device.expect_closed().await, Some(ReasonCode::ServerBusy));
    let got = kept_deliveries(&mut local).await;
    assert_eq!(&got[0].message.payload[..], b"2");
    drop(got);

    // [MQTT-4.4.0-1] the client resends its unacknowledged PUBLISHes on the
    // resumed session; kept this time, they are acknowledged.
    let (mut device, ack) = Client::connect(b.tcp, &conn.clone().resume()).await;
    assert!(ack.session_present);
    for p in [&first, &second] {
        let mut again = p.clone();
        again.dup = true;
        device.send(&Packet::Publish(again)).await;
        let mut got = kept_deliveries(&mut local).await;
        got[0].receipt.take().expect("receipt").kept();
        match device.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, p.packet_id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_cannot_grow_held_acknowledgements_past_the_receive_maximum() {
    let settings = Settings {
        receive_maximum: 4,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let _local = b
        .broker
        .subscribe_local_keeping("platform", &[("dev/#", QoS::AtLeastOnce)], 100)
        .expect("subscribe");
    // [MQTT-3.3.4-7] a fifth unacknowledged QoS 1 PUBLISH: 0x93.
    let (mut device, _) = Client::connect(b.tcp, &Conn::v5("device")).await;
    for n in 0..5u8 {
        let p = device.publish_packet("dev/a/cpu", &[n], QoS::AtLeastOnce, false);
        device.send(&Packet::Publish(p)).await;
    }
    assert_eq!(
        device.expect_closed().await,
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
    // A 3.1.1 client was told no maximum: it is read no further than it
    // while its acknowledgements wait, and stays connected.
    let (mut old, _) = Client::connect(b.tcp, &Conn::v311("old")).await;
    for n in 0..50u8 {
        let p = old.publish_packet("dev/b/cpu", &[n], QoS::AtLeastOnce, false);
        old.send(&Packet::Publish(p)).await;
    }
    old.expect_silence(Duration::from_millis(300)).await;
    old.send(&Packet::PingReq).await;
    old.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn offline_sessions_together_cannot_queue_past_the_total_bound() {
    const CAP: usize = 256 * 1024;
    let settings = Settings {
        max_queued_bytes_total: CAP,
        max_queued_messages: 100_000,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    for name in ["a", "b", "c"] {
        let (mut c, _) = Client::connect(b.tcp, &Conn::v5(name).persistent(600)).await;
        c.subscribe("q/#", QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    let (mut small, _) = Client::connect(b.tcp, &Conn::v5("small").persistent(600)).await;
    small.subscribe("r/#", QoS::AtLeastOnce).await;
    small.disconnect().await;

    // 3 × 400 KiB offered to offline sessions, against a bound of 256 KiB.
    let (mut publisher, _) = Client::connect(b.tcp, &Conn::v5("publisher")).await;
    let mut payload = vec![0u8; 1024];
    for n in 0..400u16 {
        payload[..2].copy_from_slice(&n.to_be_bytes());
        publisher
            .publish("q/big", &payload, QoS::AtLeastOnce, false)
            .await;
    }
    let stats = b.broker.stats();
    assert!(
        stats.queued_bytes as usize <= CAP + 3 * 64 * 1024,
        "queued {} bytes",
        stats.queued_bytes
    );
    assert!(stats.messages_dropped > 0);
    // A session holding less than a step is not held back by the others.
    for n in 0..10u8 {
        publisher
            .publish("r/x", &[n], QoS::AtLeastOnce, false)
            .await;
    }
    let (mut small, _) = Client::connect(b.tcp, &Conn::v5("small").persistent(600).resume()).await;
    for n in 0..10u8 {
        assert_eq!(small.recv_publish().await.payload[0], n);
    }
    // Drop-oldest: what a held-back session kept is the newest.
    let (mut a, _) = Client::connect(b.tcp, &Conn::v5("a").persistent(600).resume()).await;
    let mut last = 0;
    let mut received = 0;
    while let Ok(Some(Packet::Publish(p))) = a.recv_within(Duration::from_millis(300)).await {
        if let Some(id) = (p.qos != QoS::AtMostOnce).then_some(p.packet_id) {
            a.send(&Packet::PubAck(PubResponse::new(id))).await;
        }
        last = u16::from_be_bytes([p.payload[0], p.payload[1]]);
        received += 1;
    }
    assert!((60..400).contains(&received), "a got {received}");
    assert_eq!(last, 399);
    // Sessions gone, nothing stays charged.
    for name in ["b", "c"] {
        Client::connect(b.tcp, &Conn::v5(name))
            .await
            .0
            .disconnect()
            .await;
    }
    a.disconnect().await;
    assert!(
        (b.broker.stats().queued_bytes as usize) < 64 * 1024,
        "{}",
        b.broker.stats().queued_bytes
    );
}

#[tokio::test]
async fn a_local_subscriber_ends_when_the_broker_shuts_down() {
    let b = start().await;
    let mut local = b
        .broker
        .subscribe_local("platform", &[("#", QoS::AtMostOnce)], 10)
        .expect("subscribe");
    let broker = b.broker.clone();
    tokio::spawn(async move { broker.shutdown().await });
    let mut got = std::collections::VecDeque::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), local.recv(&mut got))
        .await
        .expect("ends in time");
    assert_eq!(ended, None);
}

#[tokio::test]
async fn one_client_cannot_fill_the_broker_with_retained_messages() {
    let settings = Settings {
        max_retained_per_client: 3,
        ..quick_settings()
    };
    let b = start_with(settings, Arc::new(AllowAll)).await;
    let (mut hoarder, _) = Client::connect(b.tcp, &Conn::v5("hoarder")).await;
    for n in 0..3 {
        assert_eq!(
            hoarder
                .publish(&format!("hoard/{n}"), b"x", QoS::AtLeastOnce, true)
                .await,
            ReasonCode::NoMatchingSubscribers
        );
    }
    // [MQTT-3.3.4] past its quota: PUBACK 0x97, neither kept nor routed.
    let (mut watcher, _) = Client::connect(b.tcp, &Conn::v5("watcher")).await;
    watcher.subscribe("hoard/+", QoS::AtLeastOnce).await;
    for _ in 0..3 {
        watcher.recv_publish().await;
    }
    assert_eq!(
        hoarder
            .publish("hoard/3", b"x", QoS::AtLeastOnce, true)
            .await,
        ReasonCode::QuotaExceeded
    );
    watcher
        .expect_silence(std::time::Duration::from_millis(100))
        .await;
    // Replacing or clearing its own is fine; so is another client's.
    assert_eq!(
        hoarder
            .publish("hoard/0", b"y", QoS::AtLeastOnce, true)
            .await,
        ReasonCode::Success
    );
    assert_eq!(watcher.recv_publish().await.payload[..], b"y"[..]);
    let (mut other, _) = Client::connect(b.tcp, &Conn::v5("other")).await;
    assert_eq!(
        other.publish("hoard/9", b"z", QoS::AtLeastOnce, true).await,
        ReasonCode::Success
    );
    assert_eq!(b.broker.stats().retained_refused, 1);
    assert_eq!(b.broker.stats().retained_messages, 4);
}
