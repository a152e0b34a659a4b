"""What the platform benchmarks share: `telemark serve` on loopback ports in
a temporary directory, an API client logged in as its admin, and a fleet of
devices registered through the API with their own MQTT secrets."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ADMIN_PASSWORD = "bench-admin-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    """`telemark serve` (SQLite in a temporary directory, or `database`),
    with its embedded broker or, given `broker` (`mqtt://…` list), behind
    that one; `env` adds to its environment (instance id, secrets)."""

    def __init__(self, binary, database=None, prefix="telemark-bench-", broker=None, env=None):
        self.binary = binary
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.http, self.mqtt = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http}"
        self.env = dict(os.environ, TELEMARK_ADMIN_PASSWORD=ADMIN_PASSWORD, RUST_LOG="warn", **(env or {}))
        self.args = [binary, "serve", "--data", f"{self.work}/data", "--http", f"127.0.0.1:{self.http}"]
        self.args += ["--broker", broker] if broker else ["--mqtt", f"127.0.0.1:{self.mqtt}"]
        self.broker = broker or f"mqtt://127.0.0.1:{self.mqtt}"
        if database:
            self.args += ["--database", database]
        self.start()

    def start(self):
        """Starts (or starts again) `serve` and logs in."""
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.base}/api/openapi.json", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        self.token = None
        self.token = self.call("POST", "/session", {"username": "admin", "password": ADMIN_PASSWORD})["token"]

    def call(self, method, path, body=None, ctype="application/json"):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"{self.base}/api/v1{path}", data=data, method=method)
        if data is not None:
            req.add_header("content-type", ctype)
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
            return json.loads(text) if text else None

    def counters(self, prefix):
        """The `/metrics` counters whose names start with `prefix`."""
        req = urllib.request.Request(f"{self.base}/metrics")
        req.add_header("authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            lines = r.read().decode().splitlines()
        return {name: int(float(value)) for name, value in
                (l.rsplit(" ", 1) for l in lines if l.startswith(prefix) and " " in l)}

    def register_fleet(self, devices, mac_prefix):
        """`devices` DWM-311-A1 routers with MACs `{mac_prefix}:XX:XX:XX`;
        returns the path of the fleet file `telemark sim` reads."""
        self.call("POST", "/device-models",
                  {"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"})
        csv = "name,serial,mac,model\n" + "".join(
            f"r{n:06d},S{n:08d},{mac_prefix}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x},311-a1\n"
            for n in range(devices)
        )
        self.call("POST", "/devices/import", csv.encode(), "text/csv")
        fleet = ["device_id,model,secret"]
        self.device_ids = []
        after = None
        while True:
            page = self.call("GET", "/devices?limit=1000" + (f"&after={after}" if after else ""))
            for d in page["devices"]:
                self.device_ids.append(d["id"])
                c = self.call("POST", f"/devices/{d['id']}/credentials")
                fleet.append(f"{c['username']},311-a1,{c['password']}")
            after = page.get("next_cursor")
            if not after:
                break
        path = f"{self.work}/fleet.csv"
        with open(path, "w") as f:
            f.write("\n".join(fleet) + "\n")
        return path

    def sim(self, fleet, *args):
        return subprocess.Popen(
            [self.binary, "sim", "--fleet", fleet, "--broker", self.broker, *args],
            env=self.env, stdout=subprocess.PIPE, text=True,
        )


def stop_sim_and_drain(sim, stored):
    """Stops `telemark sim`, then waits until `stored()` reaches the readings
    it says it sent, or nothing moved for 30 s (a PostgreSQL transaction of
    500,000 readings can take seconds). Returns (its summary, sent, stored
    when it stopped, stored at the end, acknowledged by the broker)."""
    sim.send_signal(signal.SIGTERM)
    during = stored()
    out, _ = sim.communicate(timeout=120)
    words = out.replace(",", " ").split()
    sent = int(words[words.index("readings") - 1]) if "readings" in words else 0
    acked = int(words[words.index("acknowledged") - 3]) if "acknowledged" in words else sent
    last, still = stored(), 0
    while last < sent and still < 30:
        time.sleep(1)
        n = stored()
        still = still + 1 if n == last else 0
        last = n
    return out.strip(), sent, during, last, acked
