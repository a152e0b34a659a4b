#!/usr/bin/env bash
# Persistence side by side: Telemark's journal (fsync always and batch)
# against Mosquitto with `persistence true`, in one run on 127.0.0.1.
#
#   1. The crash runs of crates/telemark/tests/broker_journal.rs against
#      each broker: 50 kill -9 while publishing, 1 while delivering; counts
#      acknowledged messages lost and QoS 2 messages delivered twice.
#   2. Throughput and latency with persistent sessions (what a broker with
#      persistence on must keep), QoS 1 and 2, at window 1 and deep.
#
# Writes bench/durability.md and its section of docs/benchmarks.md.
#
#   bench/persistence.sh              about 10 minutes
#   DURATION=3 bench/persistence.sh   shorter load runs
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
PAIRS="${PAIRS:-100}"
FANIN="${FANIN:-1000}"
FANOUT="${FANOUT:-1000}"
PORT="${PORT:-18840}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

[ -x /usr/sbin/mosquitto ] || {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
}
MOSQUITTO=/usr/sbin/mosquitto
cargo build --release -p telemark --locked
BIN="$PWD/target/release/telemark"
ulimit -n 65536 2>/dev/null || true

# Under target/ (the disk the project lives on), not a RAM-backed /tmp:
# an fsync must reach the same kind of disk a deployment has.
work="$PWD/target/persistence-bench"
rm -rf "$work"; mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

echo "== crash runs (kill -9), each broker in turn" >&2
cargo test --release -p telemark --locked --test broker_journal -- \
  --ignored --nocapture side_by_side_with_mosquitto 2>/dev/null | grep '^|' >"$work/crash.md"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_broker() { # engine
  for _ in $(seq 50); do port_open || break; sleep 0.2; done
  if port_open; then echo "127.0.0.1:$PORT is already in use; set PORT" >&2; exit 1; fi
  local data="$work/data"
  rm -rf "$data"; mkdir -p "$data"
  case "$1" in
    telemark-memory)
      RUST_LOG=warn "$BIN" broker --tcp "127.0.0.1:$PORT" >"$work/broker.log" 2>&1 & ;;
    telemark-batch|telemark-always)
      RUST_LOG=warn "$BIN" broker --tcp "127.0.0.1:$PORT" --data "$data" --fsync "${1#telemark-}" \
        >"$work/broker.log" 2>&1 & ;;
    mosquitto)
      cat >"$work/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
user root
persistence true
persistence_location $data/
max_connections -1
log_type error
CONF
      "$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/broker.log" 2>&1 & ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 100); do
    if port_open; then kill -0 "$BROKER_PID" 2>/dev/null && return 0; break; fi
    sleep 0.1
  done
  echo "$1 did not start:" >&2; cat "$work/broker.log" >&2; exit 1
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
}

ENGINES=(telemark-always telemark-batch mosquitto telemark-memory)
# name | telemark bench arguments (every session persistent)
SCENARIOS=(
  "pairs q1 64B window 1|pairs -n $PAIRS --qos 1 --window 1"
  "pairs q1 64B deep window|pairs -n $PAIRS --qos 1"
  "pairs q2 64B deep window|pairs -n $PAIRS --qos 2"
  "fan-in q1 64B deep window|fan-in -n $FANIN --qos 1"
  "fan-out q1 64B deep window|fan-out -n $FANOUT --qos 1"
)
for entry in "${SCENARIOS[@]}"; do
  name="${entry%%|*}"
  for engine in "${ENGINES[@]}"; do
    start_broker "$engine"
    echo "== $engine: $name" >&2
    file="$work/$engine.$(echo "$name" | tr ' ' '_').json"
    # shellcheck disable=SC2086
    if ! "$BIN" bench ${entry#*|} --payload 64 --persistent --broker "127.0.0.1:$PORT" \
        --broker-pid "$BROKER_PID" --duration "$DURATION" --prefix "p$RANDOM" --json >"$file"; then
      echo '{"error":"run failed"}' >"$file"
    fi
    stop_broker
  done
done

python3 bench/persistence_report.py "$work" "$MOSQUITTO" >bench/durability.md
python3 bench/splice_section.py bench/durability.md
echo "wrote bench/durability.md and its section of docs/benchmarks.md" >&2
