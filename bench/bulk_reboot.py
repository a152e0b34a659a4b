#!/usr/bin/env python3
"""Benchmark: a bulk reboot of a simulated fleet, as an operator runs one.

    bench/bulk_reboot.py DEVICES [--reboot-ms 3000] [--bin target/release/telemark] [--database postgres://…]

Starts `telemark serve` (SQLite in a temporary directory, or --database),
registers DEVICES devices through the API with their own MQTT secrets, runs
`telemark sim` (readings every 60 s, a simulated reboot keeping a device
away --reboot-ms ±50 %), waits until every device is online, then creates
one reboot job over the whole fleet and polls it. Every execution succeeds
only when its device is back online with a new boot id. Prints the counts
per state every second and, at the end, the seconds until every execution
was final. Everything on 127.0.0.1.
"""
import argparse
import json
import signal
import time

from platform_run import Platform


def main():
    p = argparse.ArgumentParser()
    p.add_argument("devices", type=int)
    p.add_argument("--reboot-ms", type=int, default=3000)
    p.add_argument("--bin", default="target/release/telemark")
    p.add_argument("--database")
    p.add_argument("--offline-secs", type=int, default=0,
                   help="then stop the fleet, queue a ping for every device, wait this long, "
                        "restart the fleet and time each task from the reconnect")
    a = p.parse_args()
    platform = Platform(a.bin, a.database, prefix="telemark-reboot-")
    call = platform.call
    fleet = platform.register_fleet(a.devices, "02:30:00")
    sim = platform.sim(fleet, "--interval", "60", "--reboot-ms", str(a.reboot_ms))
    deadline = time.time() + 300
    while time.time() < deadline:
        online = call("GET", "/statistics")["online_devices"]["value"]
        if online >= a.devices:
            break
        time.sleep(1)
    print(f"{online} of {a.devices} devices online", flush=True)
    start = time.time()
    job = call("POST", "/jobs", {"type": "reboot", "filter": {}, "description": "benchmark"})
    created = time.time() - start
    while True:
        time.sleep(1)
        j = call("GET", f"/jobs/{job['id']}")
        elapsed = time.time() - start
        print(f"{elapsed:5.1f} s  {json.dumps(j['counts'], sort_keys=True)}", flush=True)
        if j["finished_at"] or elapsed > 600:
            break
    final = (j["finished_at"] - j["created_at"]) / 1000 if j["finished_at"] else None
    print(f"job of {j['total']} reboots created in {created:.2f} s; every execution final after "
          f"{final} s (job created → last final); counts {json.dumps(j['counts'], sort_keys=True)}")
    sim.send_signal(signal.SIGTERM)
    sim.wait(timeout=120)
    if a.offline_secs:
        while call("GET", "/statistics")["online_devices"]["value"] > 0:
            time.sleep(1)
        job = call("POST", "/jobs", {"type": "ping", "params": {"host": "127.0.0.1", "count": 1}, "filter": {}})
        print(f"fleet offline; a ping queued for each of {job['total']} devices; waiting {a.offline_secs} s", flush=True)
        time.sleep(a.offline_secs)
        back = time.time()
        sim = platform.sim(fleet, "--interval", "1")
        while not call("GET", f"/jobs/{job['id']}")["finished_at"] and time.time() - back < 600:
            time.sleep(0.5)
        sent, done = [], []
        before = None
        while True:
            page = call("GET", f"/jobs/{job['id']}/executions?limit=1000" + (f"&before_id={before}" if before else ""))
            for e in page:
                sent.append(e["sent_at"] / 1000 - back)
                done.append(e["finished_at"] / 1000 - back)
            if len(page) < 1000:
                break
            before = page[-1]["id"]
        sent.sort()
        done.sort()
        q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]
        print(f"after {a.offline_secs} s offline: from the fleet's restart, sent p50 {q(sent, .5):.2f} s, "
              f"p99 {q(sent, .99):.2f} s, max {sent[-1]:.2f} s; final p50 {q(done, .5):.2f} s, p99 {q(done, .99):.2f} s, "
              f"max {done[-1]:.2f} s ({len(done)} executions; the simulator spreads its reconnects over its first second)")
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=120)
    platform.process.send_signal(signal.SIGTERM)
    platform.process.wait(timeout=300)


if __name__ == "__main__":
    main()
