"""A device on paho-mqtt speaking MQTT 5 takes a task from `telemark serve`:
the request carries a response topic, correlation data and a message
expiry, and the device's answer to that response topic settles the
execution."""

import json
import os
import queue
import subprocess
import tempfile
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import ROOT, free_port, wait_for

TIMEOUT = 10


def test_an_mqtt5_device_answers_to_the_response_topic():
    binary = os.environ.get("TELEMARK_BIN", str(ROOT / "target" / "debug" / "telemark"))
    http, port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="telemark-paho-tasks-")
    serve = subprocess.Popen(
        [binary, "serve", "--data", data, "--http", f"127.0.0.1:{http}", "--mqtt", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn", "TELEMARK_ADMIN_PASSWORD": "paho-admin-password"},
    )
    try:
        wait_for(http)
        wait_for(port)
        token = None

        def call(method, path, body=None, ctype="application/json"):
            raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            req = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1{path}", data=raw, method=method)
            if raw is not None:
                req.add_header("content-type", ctype)
            if token:
                req.add_header("authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return json.loads(text) if text else None

        token = call("POST", "/session", {"username": "admin", "password": "paho-admin-password"})["token"]
        call("POST", "/device-models", {"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"})
        call("POST", "/devices/import", b"serial,mac,model\nPAHO5,02:00:00:aa:00:05,311-a1\n", "text/csv")
        device = call("GET", "/devices?search=PAHO5")["devices"][0]
        secret = call("POST", f"/devices/{device['id']}/credentials")["password"]
        mac = "02-00-00-aa-00-05"

        messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mac, protocol=mqtt.MQTTv5)
        client.username_pw_set(mac, secret)
        client.on_message = lambda c, u, m: messages.put(m)
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        client.subscribe(f"dwr/311-a1/{mac}/tasks/+", options=SubscribeOptions(qos=1))
        deadline = time.monotonic() + TIMEOUT
        while not call("GET", f"/devices/{device['id']}")["online"]:
            assert time.monotonic() < deadline, "the device is not online"
            time.sleep(0.1)

        execution = call("POST", f"/devices/{device['id']}/tasks", {"type": "dns_lookup", "params": {"name": "localhost"}})
        request = messages.get(timeout=TIMEOUT)
        body = json.loads(request.payload)
        assert body["id"] == execution["id"] and body["type"] == "dns_lookup"
        props = request.properties
        assert props.ResponseTopic == f"dwr/311-a1/{mac}/tasks/{execution['id']}/result"
        assert props.CorrelationData == f"{execution['id']}/1".encode()
        assert 0 < props.MessageExpiryInterval <= 120

        answer = Properties(PacketTypes.PUBLISH)
        answer.CorrelationData = props.CorrelationData
        info = client.publish(
            props.ResponseTopic,
            json.dumps({"v": 2, "ts": int(time.time() * 1000), "id": body["id"], "attempt": body["attempt"],
                        "state": "succeeded", "result": {"name": "localhost", "answers": ["127.0.0.1"], "time_ms": 0.4}}),
            qos=1,
            properties=answer,
        )
        info.wait_for_publish(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while (e := call("GET", f"/executions/{execution['id']}"))["state"] != "succeeded":
            assert time.monotonic() < deadline, e
            time.sleep(0.1)
        assert e["result"]["answers"] == ["127.0.0.1"]
        client.disconnect()
        client.loop_stop()
    finally:
        serve.terminate()
        serve.wait(timeout=20)
