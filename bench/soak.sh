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
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo +changes)"
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

python3 bench/soak_report.py "$work" "$SOAK_SECONDS" "$DEVICES" "$RATE" "$FSYNC" "$COMMIT" >bench/soak.md
python3 bench/splice_section.py bench/soak.md
echo "wrote bench/soak.md and its section of docs/benchmarks.md" >&2
