//! Authentication and authorization: the password and ACL files of the
//! standalone broker, enhanced authentication through the hook, and client
//! certificates over mutual TLS.

mod common;

use std::sync::Arc;
use std::sync::Mutex;

use broker::{
    Action, AuthConversation, AuthStep, Authenticator, BoxFuture, ClientIdentity, ConnectRequest,
    FileAuthenticator, ListenerKind,
};
use bytes::Bytes;
use common::*;
use mqtt::*;

fn file_auth(dir: &std::path::Path) -> Arc<dyn Authenticator> {
    let passwd = dir.join("passwd");
    let acl = dir.join("acl");
    std::fs::write(
        &passwd,
        format!(
            "alice:{}\nbob:{}\n",
            passwords::hash("alice-pw").expect("hash"),
            passwords::hash("bob-pw").expect("hash")
        ),
    )
    .expect("write passwd");
    std::fs::write(
        &acl,
        "pattern readwrite dwr/+/%c/#\nuser alice\ntopic readwrite fleet/#\nuser bob\ntopic read fleet/#\n",
    )
    .expect("write acl");
    Arc::new(FileAuthenticator::new(Some(&passwd), Some(&acl), false).expect("auth files"))
}

fn with_login(mut conn: Conn, user: &str, password: &str) -> Conn {
    conn.username = Some(user.into());
    conn.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    conn
}

#[tokio::test]
async fn password_file_decides_who_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_with(quick_settings(), file_auth(dir.path())).await;
    // [MQTT-3.2.2.2] bad password: 0x86 in 5.0, return code 4 in 3.1.1.
    let (_c, ack) = Client::connect_with(b.tcp, &with_login(Conn::v5("a"), "alice", "nope")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let (_c, ack) =
        Client::connect_with(b.tcp, &with_login(Conn::v311("a"), "alice", "nope")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let (_c, ack) = Client::connect_with(b.tcp, &with_login(Conn::v5("a"), "mallory", "x")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    // Anonymous is off once there is a password file.
    let (_c, ack) = Client::connect_with(b.tcp, &Conn::v5("anon")).await;
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    Client::connect(b.tcp, &with_login(Conn::v5("a"), "alice", "alice-pw")).await;
    assert!(b.broker.stats().auth_failures >= 4);
}

#[tokio::test]
async fn acl_file_decides_what_clients_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_with(quick_settings(), file_auth(dir.path())).await;
    let (mut bob, _) =
        Client::connect(b.tcp, &with_login(Conn::v5("bob-dev"), "bob", "bob-pw")).await;
    assert_eq!(
        bob.subscribe("fleet/#", QoS::AtLeastOnce).await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        bob.subscribe("secret/#", QoS::AtLeastOnce).await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        bob.publish("fleet/x", b"no", QoS::AtLeastOnce, false).await,
        ReasonCode::NotAuthorized
    );
    // The pattern rule: each client under its own id.
    assert_eq!(
        bob.publish("dwr/311/bob-dev/status", b"ok", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NoMatchingSubscribers
    );
    assert_eq!(
        bob.publish("dwr/311/other/status", b"no", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NotAuthorized
    );
    let (mut alice, _) = Client::connect(
        b.tcp,
        &with_login(Conn::v311("alice-app"), "alice", "alice-pw"),
    )
    .await;
    alice
        .publish("fleet/x", b"yes", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&bob.recv_publish().await.payload[..], b"yes");
    // 3.1.1 has no negative PUBACK: acknowledged, not delivered [MQTT-3.3.5-2].
    let (mut bob311, _) =
        Client::connect(b.tcp, &with_login(Conn::v311("bob-311"), "bob", "bob-pw")).await;
    assert_eq!(
        bob311.subscribe("secret/#", QoS::AtLeastOnce).await,
        ReasonCode::UnspecifiedError
    );
    assert_eq!(
        bob311
            .publish("fleet/y", b"dropped", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::Success
    );
    bob.expect_silence(std::time::Duration::from_millis(200))
        .await;
}

/// A two-step challenge: the client sends "hello", the server answers with a
/// nonce, the client returns the nonce reversed.
struct Challenge;

impl Authenticator for Challenge {
    fn authenticate<'a>(
        &'a self,
        _request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async { Err(ReasonCode::NotAuthorized) })
    }

    fn authorize(&self, _client: &ClientIdentity, _action: Action, _topic: &str) -> bool {
        true
    }

    fn enhanced_auth<'a>(
        &'a self,
        request: &'a ConnectRequest,
        method: &'a str,
        data: Option<Bytes>,
        conversation: &'a mut AuthConversation,
    ) -> BoxFuture<'a, AuthStep> {
        Box::pin(async move {
            if method != "REVERSE" {
                return AuthStep::Failure(ReasonCode::BadAuthenticationMethod);
            }
            match (conversation.step, data.as_deref()) {
                (0, Some(b"hello")) => AuthStep::Continue(Some(Bytes::from_static(b"nonce"))),
                (1, Some(b"ecnon")) => AuthStep::Success(
                    ClientIdentity::from_request(request),
                    Some(Bytes::from_static(b"welcome")),
                ),
                _ => AuthStep::Failure(ReasonCode::NotAuthorized),
            }
        })
    }
}

fn auth_packet(reason: ReasonCode, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Properties {
            authentication_method: Some("REVERSE".into()),
            authentication_data: Some(Bytes::from_static(data)),
            ..Properties::default()
        },
    })
}

#[tokio::test]
async fn enhanced_authentication_runs_through_the_hook() {
    // [MQTT-4.12.0-1] .. [MQTT-4.12.0-7], re-authentication [MQTT-4.12.1-1].
    let b = start_with(quick_settings(), Arc::new(Challenge)).await;
    let mut conn = Conn::v5("enhanced");
    conn.properties.authentication_method = Some("REVERSE".into());
    conn.properties.authentication_data = Some(Bytes::from_static(b"hello"));
    let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
    c.send(&conn.packet()).await;
    match c.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason, ReasonCode::ContinueAuthentication);
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"nonce"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    c.send(&auth_packet(ReasonCode::ContinueAuthentication, b"ecnon"))
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert_eq!(
                ack.properties.authentication_method.as_deref(),
                Some("REVERSE")
            );
            assert_eq!(
                ack.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    // Re-authentication on the open connection.
    c.send(&auth_packet(ReasonCode::ReAuthenticate, b"hello"))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::Auth(a)) if a.reason == ReasonCode::ContinueAuthentication)
    );
    c.send(&auth_packet(ReasonCode::ContinueAuthentication, b"ecnon"))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::Auth(a)) if a.reason == ReasonCode::Success));

    // A wrong answer is refused in CONNACK.
    let mut c = Client::open(b.tcp, ProtocolVersion::V5).await;
    c.send(&conn.packet()).await;
    c.recv().await;
    c.send(&auth_packet(ReasonCode::ContinueAuthentication, b"wrong"))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason == ReasonCode::NotAuthorized)
    );
    // An unknown method: 0x8C.
    conn.properties.authentication_method = Some("OTHER".into());
    let (_c, ack) = Client::connect_with(b.tcp, &conn).await;
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
}

/// Accepts only the client certificate it was told, by fingerprint.
struct CertificateAuth {
    expected: String,
    seen: Mutex<Vec<Option<String>>>,
}

impl Authenticator for CertificateAuth {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("lock")
                .push(request.certificate_fingerprint.clone());
            if request.certificate_fingerprint.as_deref() == Some(self.expected.as_str()) {
                Ok(ClientIdentity::from_request(request))
            } else {
                Err(ReasonCode::NotAuthorized)
            }
        })
    }

    fn authorize(&self, _client: &ClientIdentity, _action: Action, _topic: &str) -> bool {
        true
    }
}

#[tokio::test]
async fn mutual_tls_passes_the_client_certificate_to_the_authenticator() {
    use sha2::Digest;
    let ca = TestCa::new();
    let tls = ca.server_files(true);
    let (client, client_key) = ca.issue("device-1");
    let fingerprint: String = sha2::Sha256::digest(client.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let auth = Arc::new(CertificateAuth {
        expected: fingerprint.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let broker = broker::Broker::new(quick_settings(), auth.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    broker.serve(
        listener,
        ListenerKind::Tls(tls.acceptor().expect("acceptor")),
    );

    // rumqttc over TLS with the client certificate.
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(
            vec![client.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der())
                .expect("key der"),
        )
        .expect("client config");
    let mut options = rumqttc::MqttOptions::new("device-1", "localhost", addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(client_config)),
    ));
    // "localhost" must resolve to the loopback listener.
    let (client_handle, mut events) = rumqttc::AsyncClient::new(options, 10);
    client_handle
        .subscribe("tls/t", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client_handle
        .publish("tls/t", rumqttc::QoS::AtLeastOnce, false, "over tls")
        .await
        .expect("publish");
    let received = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("TLS client failed: {e}"),
            }
        }
    })
    .await
    .expect("message over TLS");
    assert_eq!(&received.payload[..], b"over tls");
    assert_eq!(
        auth.seen.lock().expect("lock").first().cloned().flatten(),
        Some(fingerprint)
    );

    // Without a client certificate the handshake is refused.
    let anonymous = rustls::ClientConfig::builder()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let mut options = rumqttc::MqttOptions::new("intruder", "localhost", addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(anonymous)),
    ));
    let (_h, mut events) = rumqttc::AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("an answer");
    assert!(!outcome, "a client without a certificate must not connect");
}

// --- identity attacks ---------------------------------------------------

#[tokio::test]
async fn a_client_id_holding_wildcards_reads_nothing_through_a_pattern() {
    // The CVE-2017-7650 class: `pattern readwrite dwr/+/%c/#` with client id
    // `#` must not become `dwr/+/#/#`.
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_with(quick_settings(), file_auth(dir.path())).await;
    let (mut victim, _) =
        Client::connect(b.tcp, &with_login(Conn::v5("victim"), "bob", "bob-pw")).await;
    for sneaky in ["#", "+", "a/victim"] {
        let (mut thief, ack) =
            Client::connect(b.tcp, &with_login(Conn::v5(sneaky), "bob", "bob-pw")).await;
        assert_eq!(ack.reason, ReasonCode::Success);
        for filter in ["dwr/+/victim/#", "dwr/#", "#"] {
            assert_eq!(
                thief.subscribe(filter, QoS::AtLeastOnce).await,
                ReasonCode::NotAuthorized,
                "client id {sneaky:?} subscribing {filter:?}"
            );
        }
        assert_eq!(
            thief
                .publish("dwr/311/victim/status", b"forged", QoS::AtLeastOnce, false)
                .await,
            ReasonCode::NotAuthorized
        );
        victim
            .publish("dwr/311/victim/status", b"private", QoS::AtLeastOnce, false)
            .await;
        thief
            .expect_silence(std::time::Duration::from_millis(100))
            .await;
    }
}

#[tokio::test]
async fn an_in_process_session_cannot_be_named_from_a_listener() {
    let b = start_with(quick_settings(), Arc::new(broker::AllowAll)).await;
    let mut ingest = b
        .broker
        .subscribe_local("platform-ingest", &[("dwr/#", QoS::AtLeastOnce)], 100)
        .expect("local subscriber");
    // Resume, take over, or start clean: every form is refused.
    for conn in [
        Conn::v5("platform-ingest").persistent(3600),
        Conn::v5("platform-ingest"),
        Conn::v311("platform-ingest").resume(),
    ] {
        let (_c, ack) = Client::connect_with(b.tcp, &conn).await;
        // 3.1.1 return code 2, identifier rejected [MQTT-3.1.3-9].
        assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    }
    assert_eq!(b.broker.stats().client_id_refusals, 3);
    // The platform's session still gets every device message.
    let (mut device, _) = Client::connect(b.tcp, &Conn::v5("device")).await;
    device
        .publish("dwr/311/device/status", b"online", QoS::AtLeastOnce, false)
        .await;
    let mut got = std::collections::VecDeque::new();
    tokio::time::timeout(WAIT, ingest.recv(&mut got))
        .await
        .expect("in time")
        .expect("still subscribed");
    assert_eq!(&got[0].message.payload[..], b"online");
    // Once it is gone, the id is free again.
    drop(ingest);
    Client::connect(b.tcp, &Conn::v5("platform-ingest")).await;
}

#[tokio::test]
async fn a_login_bound_to_its_user_name_cannot_take_anothers_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = broker::Settings {
        client_id_must_match_username: true,
        ..quick_settings()
    };
    let b = start_with(settings, file_auth(dir.path())).await;
    let (mut alice, _) =
        Client::connect(b.tcp, &with_login(Conn::v5("alice"), "alice", "alice-pw")).await;
    alice.subscribe("fleet/#", QoS::AtLeastOnce).await;
    // bob names alice's session: refused, and alice stays connected.
    for conn in [Conn::v5("alice"), Conn::v311("alice").resume()] {
        let (_c, ack) = Client::connect_with(b.tcp, &with_login(conn, "bob", "bob-pw")).await;
        assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    }
    let (mut bob, _) = Client::connect(b.tcp, &with_login(Conn::v5("bob"), "bob", "bob-pw")).await;
    bob.subscribe("fleet/#", QoS::AtLeastOnce).await;
    alice
        .publish("fleet/x", b"still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"still here");
    assert_eq!(&bob.recv_publish().await.payload[..], b"still here");
    // An empty client id is given the user name [MQTT-3.2.2-16].
    let (_c, ack) = Client::connect(b.tcp, &with_login(Conn::v5(""), "bob", "bob-pw")).await;
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("bob")
    );
}

/// Allows subscriptions below the prefixes in its list, which a test changes.
struct Revocable(Mutex<Vec<&'static str>>);

impl Authenticator for Revocable {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async move { Ok(ClientIdentity::from_request(request)) })
    }

    fn authorize(&self, _client: &ClientIdentity, action: Action, topic: &str) -> bool {
        action == Action::Publish
            || self
                .0
                .lock()
                .expect("lock")
                .iter()
                .any(|p| topic.starts_with(p))
    }
}

#[tokio::test]
async fn a_resumed_session_keeps_only_what_the_acl_allows_now() {
    let auth = Arc::new(Revocable(Mutex::new(vec!["old-model/", "common/"])));
    let b = start_with(quick_settings(), auth.clone()).await;
    let (mut device, _) = Client::connect(b.tcp, &Conn::v5("dev").persistent(3600)).await;
    device.subscribe("old-model/dev/#", QoS::AtLeastOnce).await;
    device.subscribe("common/#", QoS::AtLeastOnce).await;
    device.disconnect().await;
    let (mut platform, _) = Client::connect(b.tcp, &Conn::v5("platform")).await;
    platform
        .publish("old-model/dev/task", b"queued-old", QoS::AtLeastOnce, false)
        .await;
    platform
        .publish("common/news", b"queued-common", QoS::AtLeastOnce, false)
        .await;
    // The device moves to another model while offline.
    auth.0.lock().expect("lock").retain(|p| *p != "old-model/");
    let (mut device, ack) =
        Client::connect(b.tcp, &Conn::v5("dev").persistent(3600).resume()).await;
    assert!(ack.session_present);
    assert_eq!(&device.recv_publish().await.payload[..], b"queued-common");
    platform
        .publish("old-model/dev/task", b"new-old", QoS::AtLeastOnce, false)
        .await;
    device
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
}
