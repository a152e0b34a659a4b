#!/usr/bin/env python3
"""Benchmark: the black box's ingest end to end with the simulated fleet in
its own process, as an operator would run it.

    bench/ingest.py DEVICES INTERVAL_S SECONDS [--bin target/release/telemark]

Starts `telemark serve` (SQLite in a temporary directory, or --database
postgres://...), registers DEVICES devices through the API with their own MQTT
secrets, runs `telemark sim` against the embedded broker for SECONDS, then
waits for the ingest to drain. Prints, every 5 s, the readings the ingest
has stored (from /metrics) and the RSS of both processes; at the end, the
readings the simulator sent against those stored. Everything on 127.0.0.1.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("devices", type=int)
    p.add_argument("interval", type=int)
    p.add_argument("seconds", type=int)
    p.add_argument("--bin", default="target/release/telemark")
    p.add_argument("--database")
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="telemark-ingest-")
    http, mqtt = free_port(), free_port()
    base = f"http://127.0.0.1:{http}"
    env = dict(os.environ, TELEMARK_ADMIN_PASSWORD="bench-admin-password", RUST_LOG="warn")
    args = [a.bin, "serve", "--data", f"{work}/data", "--http", f"127.0.0.1:{http}", "--mqtt", f"127.0.0.1:{mqtt}"]
    if a.database:
        args += ["--database", a.database]
    serve = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{base}/api/openapi.json", timeout=1)
            break
        except OSError:
            time.sleep(0.1)

    token = None

    def call(method, path, body=None, ctype="application/json"):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"{base}/api/v1{path}", data=data, method=method)
        if data is not None:
            req.add_header("content-type", ctype)
        if token:
            req.add_header("authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
            return json.loads(text) if text else None

    token = call("POST", "/session", {"username": "admin", "password": "bench-admin-password"})["token"]
    call("POST", "/device-models", {"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"})
    csv = "name,serial,mac,model\n" + "".join(
        f"r{n:06d},S{n:08d},02:20:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x},311-a1\n" for n in range(a.devices)
    )
    call("POST", "/devices/import", csv.encode(), "text/csv")
    fleet = ["device_id,model,secret"]
    after = None
    while True:
        page = call("GET", "/devices?limit=1000" + (f"&after={after}" if after else ""))
        for d in page["devices"]:
            c = call("POST", f"/devices/{d['id']}/credentials")
            fleet.append(f"{c['username']},311-a1,{c['password']}")
        after = page.get("next_cursor")
        if not after:
            break
    with open(f"{work}/fleet.csv", "w") as f:
        f.write("\n".join(fleet) + "\n")

    def stored():
        req = urllib.request.Request(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("telemark_ingest_readings_stored_total "):
                return int(float(line.split()[1]))
        return 0

    sim = subprocess.Popen(
        [a.bin, "sim", "--fleet", f"{work}/fleet.csv", "--broker", f"mqtt://127.0.0.1:{mqtt}", "--interval", str(a.interval)],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    start, last, last_t = time.time(), 0, time.time()
    first_rss = None
    while time.time() - start < a.seconds:
        time.sleep(5)
        now, n = time.time(), stored()
        rss = (rss_mib(serve.pid), rss_mib(sim.pid))
        first_rss = first_rss or rss
        print(f"{now - start:5.0f} s  stored {n:>10}  {(n - last) / (now - last_t):>8.0f} readings/s  rss serve {rss[0]} MiB, sim {rss[1]} MiB", flush=True)
        last, last_t = n, now
    sim.send_signal(signal.SIGTERM)
    sending = time.time() - start
    during = stored()
    out, _ = sim.communicate(timeout=120)
    print(out.strip())
    words = out.replace(",", " ").split()
    sent = int(words[words.index("readings") - 1]) if "readings" in words else None
    # Drain: until everything sent is stored, or nothing moved for 30 s
    # (a PostgreSQL transaction of 500,000 readings can take seconds).
    last, still = stored(), 0
    while last < (sent or 0) and still < 30:
        time.sleep(1)
        n = stored()
        still = still + 1 if n == last else 0
        last = n
    total = time.time() - start
    print(f"sent {sent} readings in {sending:.0f} s ({(sent or 0) / sending:.0f}/s offered); "
          f"stored {during} while sending ({during / sending:.0f}/s), {last} in all after {total - sending:.0f} s "
          f"of drain ({last / total:.0f}/s overall); lost {(sent or 0) - last}; "
          f"rss serve {first_rss[0]} -> {rss_mib(serve.pid)} MiB")
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=300)


if __name__ == "__main__":
    main()
