#!/usr/bin/env python3
"""Benchmark: readings stored per second through a 3-node rmqtt cluster with
two `telemark serve --broker` instances, against one `telemark serve` with
its embedded broker, on the same PostgreSQL and the same machine, and the
readings lost when one instance is killed with `kill -9` mid-run.

    bench/cluster_ingest.py DEVICES INTERVAL_S SECONDS --database postgres://… \\
        [--node tests/rmqtt-cluster/target/release/rmqtt-cluster-node] \\
        [--bin target/release/telemark] [--kill-at S] [--only cluster|embedded]

Each run gets a fresh database on the server `--database` names. The fleet
is `telemark sim` (one lean connection per device, QoS 1 readings every
INTERVAL_S); in the cluster run its devices spread over the three nodes.
At the end of the sending time, while the fleet still sends, a ping job
over every device: executions answered per second, from the job's creation
to its last answer (the simulator answers a one-packet ping after 0.3 s).
Every 5 s it prints the rows in `readings`; at the end, what the simulator
sent, what the broker acknowledged to it (PUBACK), and what was stored once
the ingest drained. "Lost" is acknowledged minus stored: above 0, the
broker or the platform dropped readings it had acknowledged (a lower bound:
a reading delivered whose PUBACK never came back is stored too). "Never
acknowledged" is what the broker refused or did not answer before the
device's connection ended; a real device would send it again. Everything on 127.0.0.1.
"""
import argparse
import os
import signal
import subprocess
import tempfile
import time
import urllib.parse

from platform_run import Platform, free_port, stop_sim_and_drain

HOOK_SECRET = "bench-hook-secret"


def psql(url, query):
    out = subprocess.run(["psql", url, "-tAc", query], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def fresh_database(server, name):
    psql(server, f"DROP DATABASE IF EXISTS {name}")
    psql(server, f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(server)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def start_cluster(node, mqtt, hook_http, work):
    """Three rmqtt nodes on the `mqtt` ports, as
    crates/telemark/tests/cluster.rs starts them."""
    grpc = [free_port() for _ in range(3)]
    peers = ", ".join(f'"{i + 1}@127.0.0.1:{p}"' for i, p in enumerate(grpc))
    hook = f"http://127.0.0.1:{hook_http}/api/v1/mqtt/rmqtt"
    nodes = []
    for i in range(3):
        plugins = os.path.join(work, f"node{i + 1}")
        os.makedirs(plugins)
        files = {
            "rmqtt-cluster-broadcast.toml": f"node_grpc_addrs = [{peers}]\n",
            "rmqtt-auth-http.toml": (
                f'http_timeout = "5s"\nhttp_headers.Authorization = "Bearer {HOOK_SECRET}"\n'
                "deny_if_error = true\ndisconnect_if_pub_rejected = true\n"
                f'http_auth_req.url = "{hook}/auth"\nhttp_auth_req.method = "post"\n'
                'http_auth_req.headers = { content-type = "application/x-www-form-urlencoded" }\n'
                'http_auth_req.params = { clientid = "%c", username = "%u", password = "%P", ipaddr = "%a" }\n'
                f'http_acl_req.url = "{hook}/acl"\nhttp_acl_req.method = "post"\n'
                'http_acl_req.params = { access = "%A", username = "%u", clientid = "%c", ipaddr = "%a", topic = "%t" }\n'
            ),
            "rmqtt-shared-subscription.toml": 'strategy = "hash_clientid"\n',
            "rmqtt-sys-topic.toml": "publish_qos = 1\n",
        }
        for name, text in files.items():
            with open(os.path.join(plugins, name), "w") as f:
                f.write(text)
        log = open(os.path.join(work, f"node{i + 1}.log"), "w")
        nodes.append(subprocess.Popen(
            [node, str(i + 1), f"127.0.0.1:{mqtt[i]}", f"127.0.0.1:{grpc[i]}", plugins],
            env=dict(os.environ, RMQTT_LOG="warn"), stdout=subprocess.DEVNULL, stderr=log))
    return nodes


def job_rate(platform):
    """A ping job over every device of `platform`'s fleet; returns what it
    shows: answered, timed out, and answered per second."""
    job = platform.call("POST", "/jobs", {"type": "ping", "params": {"host": "127.0.0.1", "count": 1},
                                          "device_ids": platform.device_ids})
    begun = time.time()
    while time.time() - begun < 300:
        job = platform.call("GET", f"/jobs/{job['id']}")
        if job["state"] == "finished":
            break
        time.sleep(0.5)
    c = job["counts"]
    answered = (c.get("succeeded") or 0) + (c.get("failed") or 0)
    if job.get("finished_at") is None:
        return f"{answered} of {len(platform.device_ids)} answered after 300 s"
    took = (job["finished_at"] - job["created_at"]) / 1000
    return (f"{answered} of {len(platform.device_ids)} answered, {c.get('timed_out') or 0} timed out, "
            f"in {took:.1f} s: {answered / took:.0f} executions/s")


def run(label, a, database, instances, fleet_from, kill=None):
    """Runs the fleet against `fleet_from`'s broker for a.seconds, killing
    and restarting `kill` at a.kill_at; prints and returns the figures."""
    fleet = fleet_from.register_fleet(a.devices, "02:30:00")
    count = lambda: int(psql(database, "SELECT count(*) FROM readings") or 0)
    sim = fleet_from.sim(fleet, "--interval", str(a.interval))
    start, last, last_t, killed = time.time(), 0, time.time(), False
    while time.time() - start < a.seconds:
        time.sleep(5)
        if kill and not killed and time.time() - start >= a.kill_at:
            kill.process.send_signal(signal.SIGKILL)
            kill.process.wait()
            killed = True
            print(f"{time.time() - start:5.0f} s  kill -9 one instance; it starts again", flush=True)
            kill.start()
        now, n = time.time(), count()
        print(f"{now - start:5.0f} s  {label}: stored {n:>10}  {(n - last) / (now - last_t):>8.0f} readings/s", flush=True)
        last, last_t = n, now
    tasks = job_rate(fleet_from)
    for n, p in enumerate(instances, 1):
        task_counters = {k.removeprefix("telemark_").removesuffix("_total"): v
                         for k, v in p.counters("telemark_task").items()}
        print(f"{label}: instance {n} {task_counters}", flush=True)
    sending = time.time() - start
    _, sent, during, last, acked = stop_sim_and_drain(sim, count)
    total = time.time() - start
    for n, p in enumerate(instances, 1):
        ingest = {k.removeprefix("telemark_ingest_").removesuffix("_total"): v
                  for k, v in p.counters("telemark_ingest").items()}
        print(f"{label}: instance {n} ingest (since its last start) {ingest}", flush=True)
    lost = max(acked - last, 0)
    print(f"{label}: sent {sent} readings in {sending:.0f} s ({sent / sending:.0f}/s offered), "
          f"{acked} acknowledged by the broker ({sent - acked} never acknowledged); "
          f"stored {during} while sending ({during / sending:.0f}/s), {last} in all after "
          f"{total - sending:.0f} s of drain ({last / total:.0f}/s overall); "
          f"lost (acknowledged minus stored) {lost}; ping job: {tasks}", flush=True)
    for p in instances:
        p.process.send_signal(signal.SIGTERM)
        p.process.wait(timeout=120)
    return sent, during / sending, last, lost


def main():
    p = argparse.ArgumentParser()
    p.add_argument("devices", type=int)
    p.add_argument("interval", type=int)
    p.add_argument("seconds", type=int)
    p.add_argument("--database", required=True, help="a PostgreSQL server URL; each run gets its own database")
    p.add_argument("--bin", default="target/release/telemark")
    p.add_argument("--node", default="tests/rmqtt-cluster/target/release/rmqtt-cluster-node")
    p.add_argument("--kill-at", type=int, default=None, help="seconds into the cluster run (default: a third)")
    p.add_argument("--only", choices=["cluster", "embedded"])
    a = p.parse_args()
    a.kill_at = a.kill_at if a.kill_at is not None else a.seconds // 3
    results = {}
    if a.only != "cluster":
        db = fresh_database(a.database, "bench_embedded")
        one = Platform(a.bin, db, prefix="telemark-embedded-")
        results["embedded"] = run("embedded", a, db, [one], one)
    if a.only != "embedded":
        db = fresh_database(a.database, "bench_cluster")
        work = tempfile.mkdtemp(prefix="telemark-cluster-")
        shared = {"TELEMARK_SECRET_KEY": "ab" * 32, "TELEMARK_BROKER_HOOK_SECRET": HOOK_SECRET}
        # The nodes' ports first: both instances are told the whole list,
        # and the nodes ask instance two about logins (one is killed).
        mqtt = [free_port() for _ in range(3)]
        urls = ",".join(f"mqtt://127.0.0.1:{p}" for p in mqtt)
        two = Platform(a.bin, db, prefix="telemark-cluster-2-", broker=urls,
                       env=dict(shared, TELEMARK_INSTANCE_ID="instance-2"))
        nodes = start_cluster(a.node, mqtt, two.http, work)
        one = Platform(a.bin, db, prefix="telemark-cluster-1-", broker=urls,
                       env=dict(shared, TELEMARK_INSTANCE_ID="instance-1"))
        results["cluster"] = run("cluster", a, db, [one, two], two, kill=one)
        for n in nodes:
            n.kill()
    if len(results) == 2:
        (_, e_rate, _, _), (_, c_rate, _, c_lost) = results["embedded"], results["cluster"]
        print(f"cluster/embedded stored while sending: {c_rate / e_rate:.2f}x; lost across the kill: {c_lost}")


if __name__ == "__main__":
    main()
