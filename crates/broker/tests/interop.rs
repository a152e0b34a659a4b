//! Interoperability with real client libraries: rumqttc for 3.1.1 and 5.0,
//! and a WebSocket client speaking MQTT in binary frames.

mod common;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use mqtt::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn rumqttc_v311_publish_and_subscribe() {
    let b = start().await;
    let options = rumqttc::MqttOptions::new("rumqttc-311", "127.0.0.1", b.tcp.port());
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe("interop/311/#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    for (i, qos) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        client
            .publish(format!("interop/311/{i}"), qos, false, format!("m{i}"))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 3 {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.expect("poll")
            {
                got.push((p.topic.clone(), p.qos));
            }
        }
    })
    .await
    .expect("three messages");
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("interop/311/0".to_owned(), rumqttc::QoS::AtMostOnce),
            ("interop/311/1".to_owned(), rumqttc::QoS::AtLeastOnce),
            ("interop/311/2".to_owned(), rumqttc::QoS::ExactlyOnce),
        ]
    );
}

#[tokio::test]
async fn rumqttc_v5_properties_round_trip() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    let b = start().await;
    let options = rumqttc::v5::MqttOptions::new("rumqttc-5", "127.0.0.1", b.tcp.port());
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 10);
    client
        .subscribe("interop/5/t", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    let properties = PublishProperties {
        response_topic: Some("interop/5/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("device".into(), "00-11-22-33-44-55".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    client
        .publish_with_properties("interop/5/t", Q5::AtLeastOnce, false, "{}", properties)
        .await
        .expect("publish");
    let publish = tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::Publish(p)) = events.poll().await.expect("poll")
            {
                return p;
            }
        }
    })
    .await
    .expect("message");
    let props = publish.properties.expect("properties");
    assert_eq!(props.response_topic.as_deref(), Some("interop/5/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        props.user_properties,
        vec![("device".to_owned(), "00-11-22-33-44-55".to_owned())]
    );
}

#[tokio::test]
async fn mqtt_over_websocket_with_the_mqtt_subprotocol() {
    // [MQTT-6.0.0-1] binary frames; [MQTT-6.0.0-3] the "mqtt" subprotocol.
    let b = start().await;
    let mut request = format!("ws://{}/mqtt", b.ws)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let stream = tokio::net::TcpStream::connect(b.ws).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    let mut decoder = Decoder::with_version(ProtocolVersion::V5);
    let mut out = BytesMut::new();
    encode(
        &Conn::v5("ws-client").packet(),
        ProtocolVersion::V5,
        &mut out,
    )
    .expect("encode");
    // A CONNECT split over two frames still decodes [MQTT-6.0.0-2].
    let half = out.len() / 2;
    ws.send(WsMessage::Binary(out.split_to(half).freeze()))
        .await
        .expect("send");
    ws.send(WsMessage::Binary(out.split().freeze()))
        .await
        .expect("send");
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("ws/t".into(), SubscriptionOptions::default())],
    });
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "ws/t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"over ws"),
    });
    for p in [subscribe, publish] {
        encode(&p, ProtocolVersion::V5, &mut out).expect("encode");
        ws.send(WsMessage::Binary(out.split().freeze()))
            .await
            .expect("send");
    }
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while seen.len() < 3 {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    buf.extend_from_slice(&data);
                    while let Some(p) = decoder.decode(&mut buf).expect("valid") {
                        seen.push(p);
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("three packets");
    assert!(matches!(&seen[0], Packet::ConnAck(a) if a.reason == ReasonCode::Success));
    assert!(matches!(&seen[1], Packet::SubAck(_)));
    assert!(matches!(&seen[2], Packet::Publish(p) if &p.payload[..] == b"over ws"));
}

#[tokio::test]
async fn websocket_on_another_path_is_refused() {
    let b = start().await;
    let request = format!("ws://{}/other", b.ws)
        .into_client_request()
        .expect("request");
    let stream = tokio::net::TcpStream::connect(b.ws).await.expect("connect");
    assert!(
        tokio_tungstenite::client_async(request, stream)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mqtt_over_secure_websocket() {
    use std::sync::Arc;
    let ca = TestCa::new();
    let tls = ca.server_files(false);
    let broker = broker::Broker::new(quick_settings(), Arc::new(broker::AllowAll));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    broker.serve(
        listener,
        broker::ListenerKind::SecureWebSocket(tls.acceptor().expect("acceptor")),
    );

    let config = rustls::ClientConfig::builder()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server_name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls_stream = connector
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let mut request = "wss://localhost/mqtt"
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls_stream)
        .await
        .expect("upgrade");
    let mut out = BytesMut::new();
    encode(
        &Conn::v311("wss-client").packet(),
        ProtocolVersion::V3_1_1,
        &mut out,
    )
    .expect("encode");
    ws.send(WsMessage::Binary(out.split().freeze()))
        .await
        .expect("send");
    let mut decoder = Decoder::with_version(ProtocolVersion::V3_1_1);
    let mut buf = BytesMut::new();
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(WsMessage::Binary(data))) = ws.next().await {
                buf.extend_from_slice(&data);
                if let Some(p) = decoder.decode(&mut buf).expect("valid") {
                    return p;
                }
            }
        }
    })
    .await
    .expect("CONNACK over wss");
    assert!(matches!(ack, Packet::ConnAck(a) if a.reason == ReasonCode::Success));
}
