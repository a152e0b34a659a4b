#!/usr/bin/env bash
# Soak with persistence on: 10,000 persistent QoS 1 device sessions
# publishing 1,000 messages a second in all to one persistent subscriber,
# for 30 minutes, against `telemark broker --data`. Every 30 s it reads the
# broker's resident memory, open descriptors, threads and journal size, so
# a leak shows as a slope. Writes bench/soak.md and its section of
# docs/benchmarks.md.
#
#   bench/soak.sh                               30 minutes
#   SOAK_SECONDS=120 DEVICES=1000 bench/soak.sh   a short look
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS="${SOAK_SECONDS:-1800}"
DEVICES="${DEVICES:-10000}"
RATE="${RATE:-1000}"
FSYNC="${FSYNC:-batch}"
PORT="${PORT:-18850}"
cargo build --release -p telemark --locked
BIN="$PWD/target/release/telemark"
ulimit -n 65536 2>/dev/null || true

work="$PWD/target/soak"
rm -rf "$work"; mkdir -p "$work/data"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

RUST_LOG=warn "$BIN" broker --tcp "127.0.0.1:$PORT" --data "$work/data" --fsync "$FSYNC" \
  >"$work/broker.log" 2>&1 &
BROKER=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

# Four readings per device per round: DEVICES * 4 / interval = RATE.
interval=$(python3 -c "print($DEVICES * 4 / $RATE)")
"$BIN" bench fleet -n "$DEVICES" --qos 1 --persistent --fleet-interval "$interval" \
  --duration "$SOAK_SECONDS" --broker "127.0.0.1:$PORT" --broker-pid "$BROKER" \
  --sources $(( (DEVICES + 19999) / 20000 )) --prefix soak --json >"$work/report.json" 2>"$work/bench.log" &
GEN=$!

sample() { # seconds
  local rss fds threads journal
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$BROKER/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$BROKER/status")
  fds=$(find "/proc/$BROKER/fd" -mindepth 1 -maxdepth 1 | wc -l)
  journal=$(du -sk "$work/data" | cut -f1)
  echo "$1 $rss $fds $threads $journal" >>"$work/samples"
}
start=$(date +%s)
while kill -0 "$GEN" 2>/dev/null; do
  sample $(( $(date +%s) - start ))
  for _ in $(seq 30); do kill -0 "$GEN" 2>/dev/null || break; sleep 1; done
done
wait "$GEN" || true
sample $(( $(date +%s) - start ))
kill "$BROKER"; wait "$BROKER" 2>/dev/null || true

python3 - "$work" "$SOAK_SECONDS" "$DEVICES" "$RATE" "$FSYNC" >bench/soak.md <<'PY'
import json, sys
from datetime import date
work, seconds, devices, rate, fsync = sys.argv[1:6]
rows = [list(map(int, l.split())) for l in open(f"{work}/samples") if l.strip()]
try:
    r = json.load(open(f"{work}/report.json"))
except ValueError:
    r = {}
print("## Soak: 30 minutes with persistence on\n")
print(f"Run on {date.today().isoformat()} by `bench/soak.sh`: `telemark broker --data DIR --fsync {fsync}`,")
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
if len(rows) >= 4:
    # After the connections are open (the first quarter), memory should not climb.
    settled = rows[len(rows) // 4:]
    grow = (settled[-1][1] - settled[0][1]) / 1024
    print(f"\nFrom minute {settled[0][0] / 60:.1f} to the end the RSS moved {grow:+.1f} MiB, the descriptors "
          f"{settled[-1][2] - settled[0][2]:+,} and the data directory "
          f"{(settled[-1][4] - settled[0][4]) / 1024:+.1f} MiB.")
PY
python3 bench/splice_section.py bench/soak.md
echo "wrote bench/soak.md and its section of docs/benchmarks.md" >&2
