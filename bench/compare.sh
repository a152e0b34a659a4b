#!/usr/bin/env bash
# Side by side: every scenario of `telemark bench` against Telemark's broker
# and Mosquitto (and rumqttd when RUMQTTD=1 and it builds), one broker at a
# time on 127.0.0.1, same flags, one run. Writes docs/benchmarks.md.
#
#   bench/compare.sh                 full run (about 20 minutes)
#   QUICK=1 bench/compare.sh         short runs, smaller counts (a smoke test)
#
# Persistence is off for every broker; each runs with its documented defaults
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK="${QUICK:-0}"
DURATION="${DURATION:-10}"
IDLE="${IDLE:-100000}"
FANIN="${FANIN:-1000}"
FANOUT="${FANOUT:-1000}"
PAIRS="${PAIRS:-100}"
FLEET="${FLEET:-10000}"
if [ "$QUICK" = 1 ]; then
  DURATION=3; IDLE=10000; FANIN=100; FANOUT=100; PAIRS=20; FLEET=1000
fi
PORT="${PORT:-18830}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
}
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
# Debian starts a mosquitto service on 1883; ours use their own port.
cargo build --release -p telemark --locked
BIN="$PWD/target/release/telemark"
BROKERS=(telemark mosquitto)
if [ "${RUMQTTD:-0}" = 1 ]; then
  if command -v rumqttd >/dev/null || cargo install rumqttd --locked >/dev/null 2>&1; then
    BROKERS+=(rumqttd)
  else
    echo "rumqttd does not build here; left out" >&2
  fi
fi

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Each held connection is an open file in the broker and in the generator.
max_idle=$(( $(ulimit -n) - 1000 ))
if [ "$IDLE" -gt "$max_idle" ]; then
  echo "idle: $IDLE connections need more open files than allowed here ($(ulimit -n)); holding $max_idle" >&2
  IDLE=$max_idle
fi
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_broker() {
  # A stale process on the port would be measured instead of this broker.
  for _ in $(seq 50); do port_open || break; sleep 0.2; done
  if port_open; then echo "127.0.0.1:$PORT is already in use; set PORT" >&2; exit 1; fi
  case "$1" in
    telemark)
      RUST_LOG=warn "$BIN" broker --tcp "127.0.0.1:$PORT" >"$work/broker.log" 2>&1 &
      ;;
    mosquitto)
      cat >"$work/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
log_type error
CONF
      "$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/broker.log" 2>&1 &
      ;;
    rumqttd)
      sed "s/1883/$PORT/" bench/rumqttd.toml >"$work/rumqttd.toml"
      rumqttd --config "$work/rumqttd.toml" >"$work/broker.log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 100); do
    if port_open; then
      kill -0 "$BROKER_PID" 2>/dev/null && return 0
      break
    fi
    sleep 0.1
  done
  echo "$1 did not start:" >&2; cat "$work/broker.log" >&2; exit 1
}

stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  sleep 1
}

# name | telemark bench arguments
# Each throughput scenario runs twice: with one message in flight per
# publisher (window 1: light load, nothing queued to batch, what a
# keystroke or a request and its answer see) and with its deep window (as
# many as Mosquitto delivers with its defaults; see docs/benchmarks.md).
FLOWS=(
  "fan-in q0 64B|fan-in -n $FANIN --qos 0 --payload 64"
  "fan-in q1 64B|fan-in -n $FANIN --qos 1 --payload 64"
  "fan-in q0 1KiB|fan-in -n $FANIN --qos 0 --payload 1024"
  "fan-in q1 1KiB|fan-in -n $FANIN --qos 1 --payload 1024"
  "fan-out q0 64B|fan-out -n $FANOUT --qos 0 --payload 64"
  "fan-out q1 64B|fan-out -n $FANOUT --qos 1 --payload 64"
  "fan-out q0 1KiB|fan-out -n $FANOUT --qos 0 --payload 1024"
  "fan-out q1 1KiB|fan-out -n $FANOUT --qos 1 --payload 1024"
  "pairs q0 64B|pairs -n $PAIRS --qos 0 --payload 64"
  "pairs q1 64B|pairs -n $PAIRS --qos 1 --payload 64"
  "pairs q0 1KiB|pairs -n $PAIRS --qos 0 --payload 1024"
  "pairs q1 1KiB|pairs -n $PAIRS --qos 1 --payload 1024"
)
SCENARIOS=()
for flow in "${FLOWS[@]}"; do
  SCENARIOS+=("${flow%%|*} window 1|${flow#*|} --window 1" "${flow%%|*} deep window|${flow#*|}")
done
SCENARIOS+=(
  "connect|connect -n 50"
  "connect one by one|connect -n 1"
  "fleet q1|fleet -n $FLEET --qos 1 --fleet-interval 5"
  "idle|idle -n $IDLE --sources $(( (IDLE + 19999) / 20000 ))"
)

run_one() { # broker name args...
  local broker="$1" name="$2"; shift 2
  local file="$work/$broker.$(echo "$name" | tr ' /' '__').json"
  echo "== $broker: $name" >&2
  if ! "$BIN" bench "$@" --broker "127.0.0.1:$PORT" --broker-pid "$BROKER_PID" \
      --duration "$DURATION" --prefix "b$RANDOM" --json >"$file"; then
    echo '{"error":"run failed"}' >"$file"
  fi
}

for broker in "${BROKERS[@]}"; do
  for entry in "${SCENARIOS[@]}"; do
    start_broker "$broker"
    run_one "$broker" "${entry%%|*}" ${entry#*|}
    stop_broker
  done
done

# Latency at a fixed rate: half of Mosquitto's maximum in pairs q1 64B.
mosq_rate=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1])).get('received_per_sec',0)/2))" \
  "$work/mosquitto.pairs_q1_64B_deep_window.json" 2>/dev/null || echo 10000)
[ "$mosq_rate" -gt 0 ] || mosq_rate=10000
for broker in "${BROKERS[@]}"; do
  start_broker "$broker"
  run_one "$broker" "latency pairs q1 64B at $mosq_rate per s" pairs -n "$PAIRS" --qos 1 --payload 64 --rate "$mosq_rate"
  stop_broker
done

# The generator is not the bottleneck: two generators against Telemark.
start_broker telemark
run_one telemark "generator check: one generator" pairs -n "$PAIRS" --qos 0 --payload 64
"$BIN" bench pairs -n "$PAIRS" --qos 0 --payload 64 --broker "127.0.0.1:$PORT" --duration "$DURATION" \
  --prefix g1 --json >"$work/gen1.json" &
"$BIN" bench pairs -n "$PAIRS" --qos 0 --payload 64 --broker "127.0.0.1:$PORT" --duration "$DURATION" \
  --prefix g2 --json >"$work/gen2.json"
wait %2 2>/dev/null || wait
stop_broker

overrides=""
for v in QUICK DURATION IDLE FANIN FANOUT PAIRS FLEET RUMQTTD; do
  [ -n "${!v+x}" ] && overrides+="$v=${!v} "
done
python3 bench/report.py "$work" "$MOSQUITTO" "${CMD_OVERRIDES:-$overrides}bench/compare.sh" > docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2
