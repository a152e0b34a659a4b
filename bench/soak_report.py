"""Turns bench/soak.sh's readings into bench/soak.md."""

import json
import sys
from datetime import date

work, seconds, devices, rate, fsync, commit = sys.argv[1:7]
rows = [list(map(int, l.split())) for l in open(f"{work}/samples") if l.strip()]
try:
    r = json.load(open(f"{work}/report.json"))
except ValueError:
    r = {}
print("## Soak: 30 minutes with persistence on\n")
print(f"Run on {date.today().isoformat()} by `bench/soak.sh` (build {commit}): `telemark broker --data DIR --fsync {fsync}`,")
print(f"{int(devices):,} persistent QoS 1 sessions (`telemark bench fleet --persistent`) publishing")
print(f"{int(rate):,} messages a second in all to one persistent subscriber on `+/+/#`, for {int(seconds) // 60} minutes,")
print("on this 2-core machine. Every message a persistent subscriber is owed is journaled before its")
print("PUBACK, and the journal compacts as deliveries complete.\n")
print(f"Sent {r.get('sent', 0):,}, acknowledged {r.get('acked', 0):,}, delivered {r.get('received', 0):,};")
print(f"lost {r.get('lost', 0):,}, duplicates {r.get('duplicates', 0):,}; latency p50 / p99 / p99.9 "
      f"{r.get('latency', {}).get('p50_us', 0):,} / {r.get('latency', {}).get('p99_us', 0):,} / "
      f"{r.get('latency', {}).get('p999_us', 0):,} µs; broker CPU {r.get('broker_cpu_percent') or 0:.0f} % of one core.\n")
print("| minute | broker RSS (MiB) | open descriptors | threads | data directory (MiB) |")
print("|---:|---:|---:|---:|---:|")
step = max(1, len(rows) // 12)
shown = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
for t, rss, fds, threads, journal in shown:
    print(f"| {t / 60:.1f} | {rss / 1024:.1f} | {fds:,} | {threads} | {journal / 1024:.1f} |")
# The last reading is taken after the generator has gone.
during = rows[:-1]
if len(during) >= 4:
    # After the connections are open (the first quarter), nothing should climb.
    settled = during[len(during) // 4:]
    grow = (settled[-1][1] - settled[0][1]) / 1024
    print(f"\nFrom minute {settled[0][0] / 60:.1f} to the end of the load the RSS moved {grow:+.1f} MiB and the "
          f"descriptors {settled[-1][2] - settled[0][2]:+,}; the data directory stayed between "
          f"{min(r[4] for r in settled) / 1024:.1f} and {max(r[4] for r in settled) / 1024:.1f} MiB "
          f"(compaction). Once the generator disconnected the broker held {rows[-1][2]:,} descriptors.")
