"""Turns bench/persistence.sh's results into bench/durability.md."""

import glob
import os
import sys
from datetime import date

from results import load, version

work, mosquitto = sys.argv[1], sys.argv[2]

ENGINES = [
    ("telemark-always", 'Telemark `--fsync always` (default)'),
    ("telemark-batch", 'Telemark `--fsync batch`'),
    ("mosquitto", "Mosquitto `persistence true`"),
    ("telemark-memory", "Telemark, no `--data` (reference)"),
]


results = {}
order = []
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    engine, scenario = os.path.basename(path)[:-5].split(".", 1)
    if scenario not in order:
        order.append(scenario)
    results.setdefault(scenario, {})[engine] = load(path)


def fmt(v):
    if v is None:
        return "—"
    return f"{round(v):,}"


def rate(r):
    return None if "error" in r else r.get("received_per_sec")


def lat(r, key):
    return None if "error" in r else r.get("latency", {}).get(key)


print("## Persistence: the journal against Mosquitto's `persistence true`\n")
print(f"Run on {date.today().isoformat()} by `bench/persistence.sh` on this machine (2 cores, ext4 on a")
print(f"virtual disk), release build `{version([os.path.join('target', 'release', 'telemark'), '--version'])}`,")
print(f"`{version([mosquitto, '-h'])}` from Debian.\n")

print("### Acknowledged and then lost across `kill -9`\n")
print("The crash runs of `crates/telemark/tests/broker_journal.rs` against each broker: a")
print("publisher streams QoS 1 and 2 messages to a persistent QoS 2 subscription that is")
print("offline; the broker is killed with `kill -9` at a different moment in each of 50 runs")
print("and started again, then once more while the subscriber drains. A message counts as")
print("acknowledged when its PUBACK or PUBREC reached the publisher.\n")
try:
    with open(os.path.join(work, "crash.md")) as f:
        print(f.read().rstrip())
except OSError:
    print("(the crash runs did not report)")
print()
print("Mosquitto writes its state only at `autosave_interval` (30 minutes by default) and")
print("on a clean shutdown: after a `kill -9` the subscription itself is gone, and every")
print("message with it. Saving on every change (`autosave_on_changes`) writes the whole")
print("database each time, which slows the publisher several-fold (the sent column) and still loses what was")
print("acknowledged between two saves and delivers QoS 2 messages twice (the incoming QoS 2")
print("state is not in the last save). `fsync = never` loses nothing to `kill -9` either:")
print("the kernel keeps the written pages; only a power cut tells the policies apart")
print("(docs/durability.md).\n")

print("### Throughput and latency with persistent sessions\n")
print("`telemark bench SCENARIO --persistent --payload 64`: every session persistent (3.1.1,")
print("Clean Session 0), so a message for a subscriber is what a broker with persistence on")
print("must keep. Each broker starts fresh with an empty data directory for each row;")
print(f"{os.environ.get('DURATION', '10')} s of load. Latency is end to end, publisher to subscriber, p50 / p99 / p99.9 in µs.\n")
head = "| scenario | " + " | ".join(name for _, name in ENGINES) + " |"
print(head)
print("|---|" + "---:|" * len(ENGINES))
for scenario in order:
    row = results[scenario]
    cells = []
    for engine, _ in ENGINES:
        r = row.get(engine, {"error": "missing"})
        if "error" in r:
            cells.append("failed")
            continue
        cells.append(f"{fmt(rate(r))}/s<br>{fmt(lat(r, 'p50_us'))} / {fmt(lat(r, 'p99_us'))} / "
                     f"{fmt(lat(r, 'p999_us'))} µs<br>CPU {fmt(r.get('broker_cpu_us_per_message'))} µs/msg")
    print(f"| {scenario.replace('_', ' ')} | " + " | ".join(cells) + " |")
print()
print("Ratios against Mosquitto (messages/s, higher is better for Telemark; p99, lower):\n")
print("| scenario | always / Mosquitto | batch / Mosquitto | p99 Mosquitto / always | p99 Mosquitto / batch |")
print("|---|---:|---:|---:|---:|")


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}×"


for scenario in order:
    row = results[scenario]
    m = row.get("mosquitto", {"error": "missing"})
    a = row.get("telemark-always", {"error": "missing"})
    b = row.get("telemark-batch", {"error": "missing"})
    print(f"| {scenario.replace('_', ' ')} | {ratio(rate(a), rate(m))} | {ratio(rate(b), rate(m))} | "
          f"{ratio(lat(m, 'p99_us'), lat(a, 'p99_us'))} | {ratio(lat(m, 'p99_us'), lat(b, 'p99_us'))} |")
print()
print("Mosquitto's `persistence true` writes nothing per message (its save is periodic), so")
print("its figures are those of a broker in memory; Telemark's `always` and `batch` hold each")
print("PUBACK/PUBREC until the message is in the journal (and, with `always`, on the disk).")
