"""Interoperability with Eclipse paho-mqtt 2.x: MQTT 3.1.1 and 5.0, over TCP
and WebSocket, against the real `telemark broker` on 127.0.0.1."""

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 5

PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5.0": mqtt.MQTTv5}
TRANSPORTS = ["tcp", "websockets"]


class Client:
    """A paho client with its network loop in a thread and its messages in a queue."""

    def __init__(self, broker, protocol, transport, client_id=None, **connect_kwargs):
        self.protocol = protocol
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"paho-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
            transport=transport,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        port = broker.ws if transport == "websockets" else broker.tcp
        self.client.connect(broker.host, port, keepalive=30, **connect_kwargs)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connected.set()

    def subscribe(self, topic, qos=1, **kwargs):
        self.subscribed.clear()
        if self.protocol == mqtt.MQTTv5:
            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, **kwargs))
        else:
            self.client.subscribe(topic, qos)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def next(self):
        return self.messages.get(timeout=TIMEOUT)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("version", list(PROTOCOLS))
def test_publish_subscribe_every_qos(broker, version, transport):
    sub = Client(broker, PROTOCOLS[version], transport)
    pub = Client(broker, PROTOCOLS[version], transport)
    base = f"paho/{version}/{transport}/{uuid.uuid4().hex[:6]}"
    sub.subscribe(f"{base}/#", qos=2)
    for qos in (0, 1, 2):
        pub.publish(f"{base}/q{qos}", f"qos {qos}".encode(), qos=qos)
    got = sorted((m.topic, m.payload, m.qos) for m in (sub.next(), sub.next(), sub.next()))
    assert got == [(f"{base}/q{q}", f"qos {q}".encode(), q) for q in (0, 1, 2)]
    sub.close()
    pub.close()


@pytest.mark.parametrize("version", list(PROTOCOLS))
def test_retained_message_for_late_subscriber(broker, version):
    topic = f"paho/retained/{version}/{uuid.uuid4().hex[:6]}"
    pub = Client(broker, PROTOCOLS[version], "tcp")
    pub.publish(topic, b"online", qos=1, retain=True)
    sub = Client(broker, PROTOCOLS[version], "websockets")
    sub.subscribe(topic)
    message = sub.next()
    assert (message.payload, message.retain) == (b"online", True)
    pub.close()
    sub.close()


def test_v5_request_response_properties(broker):
    responder = Client(broker, mqtt.MQTTv5, "tcp")
    requester = Client(broker, mqtt.MQTTv5, "websockets")
    responder.subscribe("paho/req/+")
    requester.subscribe("paho/resp/me")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "paho/resp/me"
    props.CorrelationData = b"\x00\x2a"
    props.UserProperty = [("task", "reboot")]
    props.ContentType = "application/json"
    requester.publish("paho/req/device1", b'{"task":"reboot"}', properties=props)
    request = responder.next()
    assert request.properties.ResponseTopic == "paho/resp/me"
    assert request.properties.CorrelationData == b"\x00\x2a"
    assert request.properties.UserProperty == [("task", "reboot")]
    assert request.properties.ContentType == "application/json"
    answer = Properties(PacketTypes.PUBLISH)
    answer.CorrelationData = request.properties.CorrelationData
    responder.publish(request.properties.ResponseTopic, b'{"ok":true}', properties=answer)
    response = requester.next()
    assert response.properties.CorrelationData == b"\x00\x2a"
    responder.close()
    requester.close()


def test_v5_no_local_and_subscription_identifier(broker):
    client = Client(broker, mqtt.MQTTv5, "tcp")
    client.subscribe("paho/nolocal", noLocal=True)
    client.publish("paho/nolocal", b"mine")
    other = Client(broker, mqtt.MQTTv5, "tcp")
    other.publish("paho/nolocal", b"theirs")
    assert client.next().payload == b"theirs"
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    client.subscribed.clear()
    client.client.subscribe("paho/subid", options=SubscribeOptions(qos=1), properties=props)
    assert client.subscribed.wait(TIMEOUT)
    other.publish("paho/subid", b"x")
    assert client.next().properties.SubscriptionIdentifier == [42]
    client.close()
    other.close()


def test_v311_persistent_session_receives_offline_messages(broker):
    client_id = f"paho-persistent-{uuid.uuid4().hex[:6]}"
    got: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
    connected = threading.Event()
    subscribed = threading.Event()
    sub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
    )
    sub.on_connect = lambda c, u, flags, rc, p: connected.set()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.put(m)
    sub.connect(broker.host, broker.tcp)
    sub.loop_start()
    assert connected.wait(TIMEOUT)
    sub.subscribe("paho/offline", 1)
    assert subscribed.wait(TIMEOUT)
    sub.disconnect()
    sub.loop_stop()

    pub = Client(broker, mqtt.MQTTv311, "tcp")
    pub.publish("paho/offline", b"while away", qos=1)
    pub.close()

    connected.clear()
    sub.reconnect()
    sub.loop_start()
    assert connected.wait(TIMEOUT)
    assert got.get(timeout=TIMEOUT).payload == b"while away"
    sub.disconnect()
    sub.loop_stop()
