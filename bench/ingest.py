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
import signal
import time
import urllib.request

from platform_run import Platform, stop_sim_and_drain


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
    platform = Platform(a.bin, a.database, prefix="telemark-ingest-")
    base, token = platform.base, platform.token
    fleet = platform.register_fleet(a.devices, "02:20:00")
    serve = platform.process

    def stored():
        req = urllib.request.Request(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("telemark_ingest_readings_stored_total "):
                return int(float(line.split()[1]))
        return 0

    sim = platform.sim(fleet, "--interval", str(a.interval))
    start, last, last_t = time.time(), 0, time.time()
    first_rss = None
    while time.time() - start < a.seconds:
        time.sleep(5)
        now, n = time.time(), stored()
        rss = (rss_mib(serve.pid), rss_mib(sim.pid))
        first_rss = first_rss or rss
        print(f"{now - start:5.0f} s  stored {n:>10}  {(n - last) / (now - last_t):>8.0f} readings/s  rss serve {rss[0]} MiB, sim {rss[1]} MiB", flush=True)
        last, last_t = n, now
    sending = time.time() - start
    out, sent, during, last, _ = stop_sim_and_drain(sim, stored)
    print(out)
    total = time.time() - start
    print(f"sent {sent} readings in {sending:.0f} s ({sent / sending:.0f}/s offered); "
          f"stored {during} while sending ({during / sending:.0f}/s), {last} in all after {total - sending:.0f} s "
          f"of drain ({last / total:.0f}/s overall); lost {sent - last}; "
          f"rss serve {first_rss[0]} -> {rss_mib(serve.pid)} MiB")
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=300)


if __name__ == "__main__":
    main()
