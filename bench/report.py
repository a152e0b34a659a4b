"""Turns the JSON results of bench/compare.sh into docs/benchmarks.md."""

import glob
import os
import platform
import sys
from datetime import date

from results import load, version

work, mosquitto = sys.argv[1], sys.argv[2]


results = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    name = os.path.basename(path)[:-5]
    if "." not in name:
        continue
    broker, scenario = name.split(".", 1)
    results.setdefault(scenario, {})[broker] = load(path)

brokers = ["telemark", "mosquitto", "rumqttd"]
present = [b for b in brokers if any(b in r for r in results.values())]


def mem():
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
    return f"{kib / 1024 / 1024:.0f} GiB"


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def figure(r, key):
    if "error" in r:
        return None
    if key == "latency_p99":
        return r.get("latency", {}).get("p99_us")
    return r.get(key)


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        v = round(v)
    return f"{v:,}{unit}"


def ratio(t, m, higher_is_better=True):
    if t is None or m is None or not m or not t:
        return "—"
    r = t / m if higher_is_better else m / t
    return f"{r:.2f}×"


print("# Benchmarks\n")
print(f"Run on {date.today().isoformat()} by `bench/compare.sh`, one broker at a time on 127.0.0.1,")
print(f"with the load generator (`telemark bench`) on the same machine: {os.cpu_count()} cores ({cpu()}), {mem()}.")
print()
print(f"- Telemark: `{version([os.path.join('target', 'release', 'telemark'), '--version'])}` (release build)")
print(f"- Mosquitto: `{version([mosquitto, '-h'])}` (Debian package), persistence off, defaults otherwise")
print("- Every broker with persistence off; Telemark with its defaults.\n")
print("Ratios are Telemark / peer for rates and peer / Telemark for latency and memory,")
print("so above 1× means Telemark is ahead.\n")

def scenario_name(key):
    return key.replace("_", " ")


def flows(suffix):
    return [s for s in results if s.endswith(suffix)]


def us_per_message(r):
    return None if "error" in r else r.get("broker_cpu_us_per_message")


def pct(v):
    return "—" if v is None else f"{v:.0f}%"


def percentiles(r):
    lat = r.get("latency", {}) if "error" not in r else {}
    return " / ".join(fmt(lat.get(k)) for k in ("p50_us", "p99_us", "p999_us"))


windows = [("window_1", "one message in flight per publisher"), ("deep_window", "the deep window")]
print("## Throughput (messages delivered per second)\n")
print("Each scenario at two loads: **window 1**, one message in flight per publisher")
print("(light load: nothing is queued, so nothing can be batched; what a keystroke or a")
print("request and its answer see), and its **deep window** (below). Broker CPU is")
print("CPU-seconds per million delivered messages (µs per message); the generator's CPU is")
print("that of `telemark bench` itself, out of the 200 % these 2 cores offer: where")
print("broker and generator together use them all, the machine, not the broker, was the limit.\n")
head = ("| scenario | window | " + " | ".join(f"{b} recv/s" for b in present)
        + " | Telemark/Mosquitto | loss (T/M) | broker CPU s per M msgs (T/M) | CPU Mosquitto/Telemark | generator CPU (T/M) |")
print(head)
print("|" + "---|" * (head.count("|") - 1))
base = sorted({s.rsplit("_window", 1)[0].rsplit("_deep", 1)[0] for s in flows("window_1") + flows("deep_window")})


def flow_rows():
    """Each flow at window 1, then at its deep window: (flow, window, row, telemark, mosquitto)."""
    for flow in base:
        for suffix, _ in windows:
            row = results.get(f"{flow}_{suffix}")
            if row is None:
                continue
            t, m = row.get("telemark", {"error": 1}), row.get("mosquitto", {"error": 1})
            window = "1" if suffix == "window_1" else fmt(t.get("window") or m.get("window"))
            yield flow, window, row, t, m


for flow, window, row, t, m in flow_rows():
    cells = [fmt(figure(row.get(b, {"error": 1}), "received_per_sec")) for b in present]
    loss = f"{fmt(figure(t, 'lost'))} / {fmt(figure(m, 'lost'))}"
    tu, mu = us_per_message(t), us_per_message(m)
    cpu_ = f"{'—' if tu is None else f'{tu:.1f}'} / {'—' if mu is None else f'{mu:.1f}'}"
    gen = f"{pct(None if 'error' in t else t.get('generator_cpu_percent'))} / {pct(None if 'error' in m else m.get('generator_cpu_percent'))}"
    print(f"| {scenario_name(flow)} | {window} | " + " | ".join(cells)
          + f" | {ratio(figure(t, 'received_per_sec'), figure(m, 'received_per_sec'))} | {loss} | {cpu_} | {ratio(tu, mu, False)} | {gen} |")

print("\nLoss counts QoS 1 messages the broker acknowledged and never delivered. At the deep")
print("window each publisher may have as many messages on their way as Mosquitto delivers")
print("with its defaults: for fan-in 1,000 in all at QoS 1 (its default queue) and 4 per publisher")
print("at QoS 0 (checked with its `$SYS` counters: every message delivered at 4 and at 16 each, 1 KiB")
print("messages dropped at 64), 64 per subscriber otherwise. A window moves with the highest sequence")
print("its subscribers have seen, so a QoS 0 message a broker drops (as MQTT allows) does not hold")
print("its publisher back; a publisher whose window stops moving for 2 s stops, so a broker that loses")
print("QoS 1 messages also shows a lower rate.")

print("\n## Latency at the maximum rate (end to end, µs)\n")
print("The same runs: time from a publisher's write to its subscriber's read. In a closed loop")
print("latency is the window over the rate (Little's law) plus how evenly the broker serves its")
print("clients; p99 and p99.9 show the second.\n")
print("| scenario | window | " + " | ".join(f"{b} p50 / p99 / p99.9" for b in present) + " | p99 Mosquitto/Telemark |")
print("|---|---|" + "---|" * len(present) + "---|")
for flow, window, row, t, m in flow_rows():
    cells = [percentiles(row.get(b, {"error": 1})) for b in present]
    print(f"| {scenario_name(flow)} | {window} | " + " | ".join(cells)
          + f" | {ratio(figure(t, 'latency_p99'), figure(m, 'latency_p99'), False)} |")

print("""
Fan-in at QoS 1 has a deep window of 1 per publisher as well (1,000 in flight in all,
Mosquitto's default queue), so both its rows are at window 1. Mosquitto's latency there is
of the messages it delivered: it dropped the rest past its queue (the loss column), and each
publisher whose message was lost stopped, so few were left in flight; its figures are not a
like-for-like comparison.
""".rstrip())
print("\n## Latency at a fixed rate (half of Mosquitto's maximum)\n")
print("| scenario | " + " | ".join(f"{b} p50 / p99 / p99.9 / max (µs)" for b in present) + " | p99 Mosquitto/Telemark |")
print("|---|" + "---|" * len(present) + "---|")
for s in [s for s in results if s.startswith("latency")]:
    row = results[s]
    cells = []
    for b in present:
        lat = row.get(b, {}).get("latency", {})
        cells.append(" / ".join(fmt(lat.get(k)) for k in ("p50_us", "p99_us", "p999_us", "max_us")))
    print(f"| {s.replace('_', ' ')} | " + " | ".join(cells)
          + f" | {ratio(figure(row.get('telemark', {}), 'latency_p99'), figure(row.get('mosquitto', {}), 'latency_p99'), False)} |")

print("\n## Connections\n")
print("| scenario | " + " | ".join(present) + " | Telemark vs Mosquitto |")
print("|---|" + "---|" * len(present) + "---|")
labels = {"connect": "connect rate, 50 at a time (each closed)", "connect_one_by_one": "connect rate, one after another (each closed)"}
for s in [s for s in results if s.startswith("connect")]:
    row = results[s]
    cells = [fmt(figure(row.get(b, {"error": 1}), "connects_per_sec"), " /s") for b in present]
    print(f"| {labels.get(s, scenario_name(s))} | " + " | ".join(cells) + f" | {ratio(figure(row.get('telemark', {}), 'connects_per_sec'), figure(row.get('mosquitto', {}), 'connects_per_sec'))} |")
for s in [s for s in results if s.startswith("idle")]:
    row = results[s]
    cells = [fmt(figure(row.get(b, {"error": 1}), "connects_per_sec"), " /s") for b in present]
    print(f"| idle: connections opened and held, 512 at a time | " + " | ".join(cells) + f" | {ratio(figure(row.get('telemark', {}), 'connects_per_sec'), figure(row.get('mosquitto', {}), 'connects_per_sec'))} |")
for s in [s for s in results if s.startswith("idle")]:
    row = results[s]
    cells = [f"{fmt(figure(row.get(b, {'error': 1}), 'broker_bytes_per_connection'), ' B')} ({fmt(figure(row.get(b, {'error': 1}), 'held'))} held)" for b in present]
    print(f"| idle: memory per connection | " + " | ".join(cells) + f" | {ratio(figure(row.get('telemark', {}), 'broker_bytes_per_connection'), figure(row.get('mosquitto', {}), 'broker_bytes_per_connection'), False)} |")

held = [r.get("telemark", {}).get("held", 0) for k, r in results.items() if k.startswith("idle")]
if held and held[0] < 100000:
    print(f"\nThe idle run held {held[0]:,} connections, not 100,000: this machine's hard limit on open files")
    print("is `ulimit -Hn` per process (20,000 here), and both the broker and the generator need one per connection.")

gen = [load(os.path.join(work, f)) for f in ("gen1.json", "gen2.json")]
one = results.get("generator_check:_one_generator", {}).get("telemark", {})
if all("error" not in g for g in gen) and one:
    both = sum(g.get("received_per_sec", 0) for g in gen)
    print("\n## Is the generator the bottleneck?\n")
    print(f"Pairs q0 64B against Telemark: one generator {fmt(one.get('received_per_sec'))}/s; "
          f"two generator processes together {fmt(both)}/s. Where two deliver no more than one, "
          "the broker (or the shared 2 cores) is the limit, not the generator.")

print("\n## Command\n")
print("```sh\n" + (sys.argv[3] if len(sys.argv) > 3 else "bench/compare.sh") + "\n```")
print("\nEvery row is one `telemark bench` run; the raw JSON reports carry sent, acknowledged,")
print("received, loss, duplicates, order, latency percentiles and the broker's CPU and peak RSS.")

here = os.path.dirname(os.path.abspath(__file__))
for extra in ("optimisations.md", "durability.md", "soak.md", "platform.md"):
    path = os.path.join(here, extra)
    if os.path.exists(path):
        print()
        with open(path) as f:
            print(f.read().rstrip())
