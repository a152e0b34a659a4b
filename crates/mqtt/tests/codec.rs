//! Codec tests: byte vectors written from the specification, malformed
//! packets each with the statement they break, and property round trips.

use bytes::{Bytes, BytesMut};
use mqtt::*;
use proptest::prelude::*;

fn decode_as(version: ProtocolVersion, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let mut decoder = Decoder::with_version(version);
    let mut buf = BytesMut::from(bytes);
    decoder.decode(&mut buf)
}

fn encode_as(version: ProtocolVersion, packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("encodes");
    out.to_vec()
}

/// Decoding `bytes` on a fresh server-side decoder (CONNECT) or a decoder of
/// `version` gives an error with the expected reason code.
fn check_malformed(version: ProtocolVersion, bytes: &[u8], reason: ReasonCode) {
    let result = if bytes.first().map(|b| b >> 4) == Some(1) {
        Decoder::new().decode(&mut BytesMut::from(bytes))
    } else {
        decode_as(version, bytes)
    };
    match result {
        Err(e) => assert_eq!(e.reason_code(), reason, "{bytes:02X?}: {e}"),
        Ok(p) => panic!("{bytes:02X?} decoded as {p:?}"),
    }
}

#[test]
fn connect_v311_from_bytes() {
    // MQTT 3.1.1 CONNECT, clean session, keep alive 60, client id "abc",
    // user name "u", password "p".
    let bytes = [
        0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xC2, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
    ];
    let mut decoder = Decoder::new();
    let packet = decoder
        .decode(&mut BytesMut::from(&bytes[..]))
        .expect("valid")
        .expect("complete");
    let Packet::Connect(c) = &packet else {
        panic!("not CONNECT: {packet:?}")
    };
    assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "abc");
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    assert_eq!(decoder.version(), Some(ProtocolVersion::V3_1_1));
    assert_eq!(encode_as(ProtocolVersion::V3_1_1, &packet), bytes);
}

#[test]
fn connect_v31_uses_mqisdp() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A, 0x00,
        0x01, b'x',
    ];
    let packet = Decoder::new()
        .decode(&mut BytesMut::from(&bytes[..]))
        .expect("valid")
        .expect("complete");
    let Packet::Connect(c) = &packet else {
        panic!()
    };
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
    assert_eq!(encode_as(ProtocolVersion::V3_1, &packet), bytes);
}

#[test]
fn incomplete_packets_wait_for_more_bytes() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: 7,
        properties: Properties::default(),
        payload: Bytes::from(vec![0xAB; 300]),
    });
    let bytes = encode_as(ProtocolVersion::V5, &packet);
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let out = decoder.decode(&mut buf).expect("valid");
        if i + 1 < bytes.len() {
            assert!(out.is_none(), "decoded early at byte {i}");
        } else {
            assert_eq!(out, Some(packet.clone()));
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn two_packets_in_one_read_decode_one_by_one() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00][..]);
    let mut decoder = Decoder::with_version(ProtocolVersion::V3_1_1);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PingResp)));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn publish_v5_with_properties_from_bytes() {
    // PUBLISH QoS 1, topic "t", id 1, properties: payload format 1,
    // message expiry 10, topic alias 2; payload "hi".
    let bytes = [
        0x32, 0x12, 0x00, 0x01, b't', 0x00, 0x01, 0x0A, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x0A,
        0x23, 0x00, 0x02, b'h', b'i',
    ];
    let packet = decode_as(ProtocolVersion::V5, &bytes)
        .expect("valid")
        .expect("complete");
    let Packet::Publish(p) = &packet else {
        panic!()
    };
    assert_eq!(p.properties.payload_format_indicator, Some(1));
    assert_eq!(p.properties.message_expiry_interval, Some(10));
    assert_eq!(p.properties.topic_alias, Some(2));
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(encode_as(ProtocolVersion::V5, &packet), bytes);
}

#[test]
fn short_forms_of_v5_acks_and_disconnect() {
    // [MQTT-3.4.2.1] PUBACK with remaining length 2 means Success.
    let p = decode_as(ProtocolVersion::V5, &[0x40, 0x02, 0x00, 0x05]).expect("valid");
    assert_eq!(p, Some(Packet::PubAck(PubResponse::new(5))));
    // [MQTT-3.14.2.1] DISCONNECT with remaining length 0 is a normal disconnection.
    let p = decode_as(ProtocolVersion::V5, &[0xE0, 0x00]).expect("valid");
    assert_eq!(
        p,
        Some(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
    );
    let p = decode_as(ProtocolVersion::V5, &[0xE0, 0x01, 0x04]).expect("valid");
    assert_eq!(
        p,
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage
        )))
    );
}

#[test]
fn malformed_packets_are_refused_with_their_reason() {
    use ProtocolVersion::*;
    use ReasonCode::*;
    let cases: &[(ProtocolVersion, &[u8], ReasonCode)] = &[
        // [MQTT-2.1.3-1] PUBREL must have flags 0010.
        (V3_1_1, &[0x60, 0x02, 0x00, 0x01], MalformedPacket),
        // [MQTT-2.1.3-1] SUBSCRIBE flags 0000.
        (
            V3_1_1,
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            MalformedPacket,
        ),
        // PINGREQ with flags.
        (V3_1_1, &[0xC1, 0x00], MalformedPacket),
        // [MQTT-1.5.5-1] five bytes of remaining length.
        (
            V3_1_1,
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            MalformedPacket,
        ),
        // [MQTT-3.3.1-4] QoS 3.
        (
            V3_1_1,
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            MalformedPacket,
        ),
        // [MQTT-3.3.1-2] DUP on QoS 0.
        (V3_1_1, &[0x38, 0x03, 0x00, 0x01, b'a'], MalformedPacket),
        // [MQTT-3.3.2-2] wildcard in a topic name.
        (V3_1_1, &[0x30, 0x03, 0x00, 0x01, b'#'], TopicNameInvalid),
        (
            V5,
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
            TopicNameInvalid,
        ),
        // [MQTT-4.7.3-1] empty topic in 3.1.1.
        (V3_1_1, &[0x30, 0x02, 0x00, 0x00], TopicNameInvalid),
        // [MQTT-1.5.4-1] invalid UTF-8.
        (
            V3_1_1,
            &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
            MalformedPacket,
        ),
        // [MQTT-1.5.4-2] U+0000 in a string.
        (
            V3_1_1,
            &[0x30, 0x04, 0x00, 0x02, b'a', 0x00],
            MalformedPacket,
        ),
        // [MQTT-2.2.1-3] packet identifier 0 on QoS 1.
        (
            V3_1_1,
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            ProtocolError,
        ),
        (
            V3_1_1,
            &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            ProtocolError,
        ),
        // [MQTT-3.8.3-3] SUBSCRIBE with no filter.
        (V3_1_1, &[0x82, 0x02, 0x00, 0x01], ProtocolError),
        (V5, &[0x82, 0x03, 0x00, 0x01, 0x00], ProtocolError),
        // [MQTT-3.10.3-2] UNSUBSCRIBE with no filter.
        (V3_1_1, &[0xA2, 0x02, 0x00, 0x01], ProtocolError),
        // [MQTT-3-8.3-4] reserved option bits in 3.1.1.
        (
            V3_1_1,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            MalformedPacket,
        ),
        // [MQTT-3.8.3-5] reserved option bits in 5.0.
        (
            V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
            MalformedPacket,
        ),
        // QoS 3 in subscription options.
        (
            V3_1_1,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
            MalformedPacket,
        ),
        // Retain handling 3.
        (
            V5,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            ProtocolError,
        ),
        // [MQTT-4.7.1-2] '#' not last.
        (
            V3_1_1,
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a', 0x00],
            MalformedPacket,
        ),
        // [MQTT-4.7.1-3] '+' sharing a level.
        (
            V3_1_1,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'+', 0x00],
            MalformedPacket,
        ),
        // [MQTT-3.8.3-4] no local on a shared subscription.
        (
            V5,
            &[
                0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/',
                b'g', b'/', b'a', 0x04,
            ],
            ProtocolError,
        ),
        // [MQTT-2.2.2] duplicate property (two message expiry intervals).
        (
            V5,
            &[
                0x30, 0x0E, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
            ],
            ProtocolError,
        ),
        // Property not allowed in PUBLISH (session expiry interval).
        (
            V5,
            &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1],
            MalformedPacket,
        ),
        // Unknown property id.
        (
            V5,
            &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x7F, 0x00],
            MalformedPacket,
        ),
        // Subscription identifier 0.
        (
            V5,
            &[
                0x82, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00,
            ],
            ProtocolError,
        ),
        // Property length past the end.
        (
            V5,
            &[0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x01],
            MalformedPacket,
        ),
        // Reason code not valid for PUBACK.
        (V5, &[0x40, 0x03, 0x00, 0x01, 0x8E], MalformedPacket),
        // PINGREQ with a body.
        (V3_1_1, &[0xC0, 0x01, 0x00], MalformedPacket),
        // DISCONNECT with a body in 3.1.1.
        (V3_1_1, &[0xE0, 0x01, 0x00], MalformedPacket),
        // AUTH in 3.1.1.
        (V3_1_1, &[0xF0, 0x00], ProtocolError),
        // Reserved packet type 0.
        (V3_1_1, &[0x00, 0x00], MalformedPacket),
        // Trailing bytes after PUBACK in 3.1.1.
        (V3_1_1, &[0x40, 0x03, 0x00, 0x01, 0x00], MalformedPacket),
        // [MQTT-3.1.2-3] CONNECT reserved flag.
        (
            V3_1_1,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x01,
                b'a',
            ],
            MalformedPacket,
        ),
        // [MQTT-3.1.2-11] will QoS without will flag.
        (
            V3_1_1,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x0A, 0x00, 0x3C, 0x00, 0x01,
                b'a',
            ],
            MalformedPacket,
        ),
        // [MQTT-3.1.2-14] will QoS 3.
        (
            V3_1_1,
            &[
                0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1E, 0x00, 0x3C, 0x00, 0x01,
                b'a', 0x00, 0x01, b't', 0x00, 0x00,
            ],
            MalformedPacket,
        ),
        // [MQTT-3.1.2-22] password without user name in 3.1.1.
        (
            V3_1_1,
            &[
                0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x01,
                b'a', 0x00, 0x01, b'p',
            ],
            MalformedPacket,
        ),
        // [MQTT-3.1.2-2] protocol level 6.
        (
            V3_1_1,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01,
                b'a',
            ],
            UnsupportedProtocolVersion,
        ),
        // [MQTT-3.1.2-1] wrong protocol name.
        (
            V3_1_1,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01,
                b'a',
            ],
            UnsupportedProtocolVersion,
        ),
        // Receive maximum 0 in CONNECT.
        (
            V5,
            &[
                0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21,
                0x00, 0x00, 0x00, 0x01, b'a',
            ],
            ProtocolError,
        ),
    ];
    for (version, bytes, reason) in cases {
        check_malformed(*version, bytes, *reason);
    }
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let err = Decoder::new()
        .decode(&mut BytesMut::from(&[0xC0, 0x00][..]))
        .expect_err("refused");
    assert_eq!(err, DecodeError::FirstPacketNotConnect);
}

#[test]
fn oversized_packets_are_refused_before_they_are_buffered() {
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    decoder.set_max_packet_size(100);
    // Only the header has arrived: a 1000-byte PUBLISH.
    let err = decoder
        .decode(&mut BytesMut::from(&[0x30, 0xE8, 0x07][..]))
        .expect_err("too large");
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn v3_return_codes_map_to_reason_codes() {
    let ack = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
    });
    assert_eq!(
        encode_as(ProtocolVersion::V3_1_1, &ack),
        [0x90, 0x04, 0x00, 0x01, 0x01, 0x80]
    );
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: Properties::default(),
    });
    assert_eq!(
        encode_as(ProtocolVersion::V3_1_1, &connack),
        [0x20, 0x02, 0x00, 0x04]
    );
}

// ---- property-based round trips -------------------------------------------

fn topic_level() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ é-]{0,8}"
}

fn topic_name() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![topic_level(), Just("+".to_string())], 1..5)
        .prop_flat_map(|levels| {
            (Just(levels), any::<bool>()).prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                levels.join("/")
            })
        })
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 /é中]{0,12}"
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..3)
}

fn publish_properties() -> impl Strategy<Value = Properties> {
    (
        prop::option::of(0u8..=1),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(topic_name()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::collection::vec(1u32..=MAX_SUBSCRIPTION_IDENTIFIER, 0..3),
        prop::option::of(1u16..),
        user_properties(),
    )
        .prop_map(|(pfi, expiry, ct, rt, cd, ids, alias, user)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval: expiry,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            subscription_identifiers: ids,
            topic_alias: alias,
            user_properties: user,
            ..Properties::default()
        })
}

fn reason_props() -> impl Strategy<Value = Properties> {
    (prop::option::of(text()), user_properties()).prop_map(|(reason, user)| Properties {
        reason_string: reason,
        user_properties: user,
        ..Properties::default()
    })
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn packet_for(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let props = move |p: Properties| if v5 { p } else { Properties::default() };
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1u16..,
        publish_properties(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(dup, qos, retain, topic, id, p, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                properties: props(p),
                payload: Bytes::from(payload),
            })
        });
    let connect = (
        any::<bool>(),
        any::<u16>(),
        "[a-zA-Z0-9]{0,23}",
        prop::option::of((
            topic_name(),
            prop::collection::vec(any::<u8>(), 0..16),
            qos(),
            any::<bool>(),
            prop::option::of(any::<u32>()),
        )),
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::option::of(any::<u32>()),
        prop::option::of(1u16..),
    )
        .prop_map(
            move |(clean, keep_alive, client_id, will, username, password, expiry, receive_max)| {
                let password = if !v5 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start: clean,
                    keep_alive,
                    properties: props(Properties {
                        session_expiry_interval: expiry,
                        receive_maximum: receive_max,
                        ..Properties::default()
                    }),
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, delay)| Will {
                        topic,
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                        properties: props(Properties {
                            will_delay_interval: delay,
                            ..Properties::default()
                        }),
                    }),
                    username,
                    password: password.map(Bytes::from),
                }))
            },
        );
    let ack_reasons: Vec<ReasonCode> = if v5 {
        vec![
            ReasonCode::Success,
            ReasonCode::NoMatchingSubscribers,
            ReasonCode::QuotaExceeded,
        ]
    } else {
        vec![ReasonCode::Success]
    };
    let pub_response = (
        1u16..,
        prop::sample::select(ack_reasons),
        reason_props(),
        0..4u8,
    )
        .prop_map(move |(id, reason, p, kind)| {
            let r = PubResponse {
                packet_id: id,
                reason: if kind >= 2 {
                    ReasonCode::Success
                } else {
                    reason
                },
                properties: props(p),
            };
            match kind {
                0 => Packet::PubAck(r),
                1 => Packet::PubRec(r),
                2 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        });
    let subscribe = (
        1u16..,
        prop::option::of(1u32..=MAX_SUBSCRIPTION_IDENTIFIER),
        prop::collection::vec(
            (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3),
            1..4,
        ),
    )
        .prop_map(move |(id, sub_id, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: props(Properties {
                    subscription_identifiers: sub_id.into_iter().collect(),
                    ..Properties::default()
                }),
                filters: filters
                    .into_iter()
                    .map(|(f, qos, nl, rap, rh)| {
                        let options = if v5 {
                            SubscriptionOptions {
                                qos,
                                no_local: nl,
                                retain_as_published: rap,
                                retain_handling: match rh {
                                    0 => RetainHandling::SendAtSubscribe,
                                    1 => RetainHandling::SendAtSubscribeIfNew,
                                    _ => RetainHandling::DoNotSend,
                                },
                            }
                        } else {
                            SubscriptionOptions {
                                qos,
                                ..Default::default()
                            }
                        };
                        (f, options)
                    })
                    .collect(),
            })
        });
    let suback_reasons = prop::sample::select(vec![
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
        ReasonCode::UnspecifiedError,
    ]);
    let suback = (
        1u16..,
        prop::collection::vec(suback_reasons, 1..4),
        reason_props(),
    )
        .prop_map(move |(id, reasons, p)| {
            Packet::SubAck(SubAck {
                packet_id: id,
                properties: props(p),
                reasons,
            })
        });
    let unsubscribe =
        (1u16.., prop::collection::vec(topic_filter(), 1..4)).prop_map(|(id, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters,
            })
        });
    let unsuback = (
        1u16..,
        prop::collection::vec(Just(ReasonCode::NoSubscriptionExisted), 1..3),
        reason_props(),
    )
        .prop_map(move |(id, reasons, p)| {
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties: props(p),
                reasons: if v5 { reasons } else { vec![] },
            })
        });
    let connack = (
        any::<bool>(),
        prop::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::NotAuthorized,
            ReasonCode::BadUserNameOrPassword,
        ]),
        prop::option::of(text()),
    )
        .prop_map(move |(present, reason, assigned)| {
            Packet::ConnAck(ConnAck {
                session_present: present && version != ProtocolVersion::V3_1,
                reason,
                properties: props(Properties {
                    assigned_client_identifier: assigned,
                    topic_alias_maximum: Some(10),
                    ..Properties::default()
                }),
            })
        });
    let disconnect = (
        prop::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::SessionTakenOver,
            ReasonCode::ServerShuttingDown,
        ]),
        reason_props(),
    )
        .prop_map(move |(reason, p)| {
            Packet::Disconnect(Disconnect {
                reason: if v5 { reason } else { ReasonCode::Success },
                properties: props(p),
            })
        });
    let mut options = vec![
        publish.boxed(),
        connect.boxed(),
        pub_response.boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        connack.boxed(),
        disconnect.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        options.push(
            (
                prop::sample::select(vec![
                    ReasonCode::Success,
                    ReasonCode::ContinueAuthentication,
                ]),
                prop::option::of(text()),
            )
                .prop_map(|(reason, method)| {
                    Packet::Auth(Auth {
                        reason,
                        properties: Properties {
                            authentication_method: method,
                            ..Properties::default()
                        },
                    })
                })
                .boxed(),
        );
    }
    prop::strategy::Union::new(options).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips((version, packet) in version().prop_flat_map(|v| (Just(v), packet_for(v)))) {
        let bytes = encode_as(version, &packet);
        let mut decoder = match &packet {
            Packet::Connect(_) => Decoder::new(),
            _ => Decoder::with_version(version),
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = decoder.decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(version in version(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut decoder = Decoder::with_version(version);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }
}
