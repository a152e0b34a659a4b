#!/usr/bin/env python3
"""Remote access, measured with the real agent on loopback, side by side with
OpenSSH (Debian's sshd and ssh) as the peer:

- keystroke round trip: one character typed into the console's terminal
  (WebSocket → serve → MQTT → agent → PTY echo → back), against the same
  character typed into `ssh -tt` to a local sshd;
- port forward: 64 MiB read from a server on the "device" through
  `telemark tunnel`, against a direct loopback read and `ssh -L`; the peak
  memory of serve and the agent meanwhile.

    python3 bench/remote.py [--binary target/release/telemark] [--keys 500]

Needs `pip install websockets` (installed here if missing) and openssh-server.
"""
import argparse
import getpass
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from platform_run import Platform, free_port  # noqa: E402

try:
    from websockets.sync.client import connect
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "websockets"], check=True)
    from websockets.sync.client import connect

DATA, ACK, END = 1, 2, 6
SIZE = 64 * 1024 * 1024


def frame(kind, channel, value, body=b""):
    return struct.pack(">BIQ", kind, channel, value) + body


def percentiles(samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "p99.9": pick(0.999), "max": s[-1]}


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.stop = pids, {p: 0 for p in pids}, False

    def run(self):
        while not self.stop:
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_kib(p))
            time.sleep(0.05)


def wait_port(port, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def serve_each(port, handle):
    """Listens on 127.0.0.1:`port`; each connection to `handle` in a thread."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def source_server(port):
    """Sends 64 MiB to each connection, then closes it."""
    chunk = os.urandom(1 << 20)

    def send(conn):
        with conn:
            try:
                for _ in range(SIZE // len(chunk)):
                    conn.sendall(chunk)
            except OSError:
                pass  # the reader went away (a port probe)

    serve_each(port, send)


def read_all(port):
    start = time.perf_counter()
    got = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            got += len(b)
    took = time.perf_counter() - start
    assert got == SIZE, f"read {got} bytes of {SIZE}"
    return took


def echo_server(port):
    """Echoes every byte back (the device's side of a request/response)."""

    def echo(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    serve_each(port, echo)


def echo_round_trips(port, count):
    """One byte there and back, `count` times, in milliseconds."""
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(b"x")
            s.recv(1)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def parallel_reads(port, connections):
    """`connections` readers of 64 MiB each at once; seconds for all."""
    start = time.perf_counter()
    threads = [threading.Thread(target=read_all, args=(port,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def sshd(work):
    os.makedirs("/run/sshd", exist_ok=True)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{work}/{name}"], check=True)
    port = free_port()
    with open(f"{work}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host\nPidFile {work}/sshd.pid\n"
                f"AuthorizedKeysFile {work}/user.pub\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{work}/sshd_config"],
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    ssh = ["ssh", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-i", f"{work}/user", "-p", str(port)]
    return proc, ssh


def telemark_keystrokes(platform, device, keys):
    session = platform.call("POST", f"/devices/{device}/sessions", {"kind": "terminal", "cols": 80, "rows": 24})
    with connect(f"ws://127.0.0.1:{platform.http}{session['stream']}",
                 additional_headers={"Authorization": f"Bearer {platform.token}"}, max_size=None) as ws:
        return keystrokes_over(ws, keys)


def keystrokes_over(ws, keys):
    received = sent = 0

    def next_output(deadline):
        nonlocal received
        while True:
            m = ws.recv(timeout=max(0.001, deadline - time.time()))
            if isinstance(m, str):
                event = json.loads(m)
                if event["event"] == "ended":
                    raise SystemExit(f"the session ended: {event['reason']}")
                continue
            kind, _, _value = struct.unpack(">BIQ", m[:13])
            if kind == DATA:
                body = m[13:]
                received += len(body)
                ws.send(frame(ACK, 0, received))
                return body

    # Wait for the shell's prompt.
    deadline = time.time() + 20
    screen = b""
    while b"$ " not in screen and b"# " not in screen:
        screen += next_output(deadline)
    samples = []
    for n in range(keys):
        ch = b"x" if n % 2 == 0 else b"\x7f"
        start = time.perf_counter()
        ws.send(frame(DATA, 0, sent, ch))
        sent += 1
        next_output(time.time() + 5)
        samples.append((time.perf_counter() - start) * 1000)
    ws.send(frame(END, 0, 0, b"benchmark done"))
    return samples


def ssh_keystrokes(ssh, keys):
    proc = subprocess.Popen(ssh + ["-tt", f"{getpass.getuser()}@127.0.0.1", "/bin/sh"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0)
    fd = proc.stdout.fileno()
    time.sleep(1.0)
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    samples = []
    for n in range(keys):
        ch = b"x" if n % 2 == 0 else b"\x7f"
        start = time.perf_counter()
        proc.stdin.write(ch)
        os.read(fd, 65536)
        samples.append((time.perf_counter() - start) * 1000)
    proc.kill()
    return samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/telemark")
    ap.add_argument("--keys", type=int, default=500)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="telemark-remote-bench-")
    source_port, echo_port = free_port(), free_port()
    source_server(source_port)
    echo_server(echo_port)

    platform = Platform(binary, prefix="telemark-remote-bench-")
    fleet = platform.register_fleet(1, "02:77:00")
    device_id, model, secret = open(fleet).read().splitlines()[1].split(",")
    device = platform.call("GET", "/devices?limit=1")["devices"][0]["id"]
    config = f"{work}/agent.toml"
    with open(config, "w") as f:
        f.write(f'broker = "mqtt://127.0.0.1:{platform.mqtt}"\ndevice_id = "{device_id}"\nmodel = "{model}"\n'
                f'secret = "{secret}"\nbuffer_dir = "{work}/buffer"\n'
                f'[remote]\nterminal_command = ["/bin/sh"]\nallowed_ports = [{source_port}, {echo_port}]\n')
    agent = subprocess.Popen([binary, "agent", "--config", config], env=platform.env, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if platform.call("GET", f"/devices/{device}")["online"]:
            break
        time.sleep(0.1)
    sshd_proc, ssh = sshd(work)
    try:
        ours = percentiles(telemark_keystrokes(platform, device, args.keys))
        theirs = percentiles(ssh_keystrokes(ssh, args.keys))
        print(f"keystroke round trip, ms ({args.keys} keys)")
        print(f"  {'':10} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8}")
        for name, p in (("telemark", ours), ("ssh -tt", theirs)):
            print(f"  {name:10} " + " ".join(f"{p[k]:8.2f}" for k in ("p50", "p99", "p99.9", "max")))

        direct = read_all(source_port)
        token = platform.call("POST", "/tokens", {"name": "bench"})["token"]
        local = free_port()
        tunnel = subprocess.Popen([binary, "tunnel", device_id, "--remote-port", str(source_port),
                                   "--local-port", str(local), "--url", platform.base],
                                  env=dict(platform.env, TELEMARK_TOKEN=token), stdout=subprocess.PIPE, text=True)
        # It listens once the device has opened its end.
        assert "Forwarding" in tunnel.stdout.readline()
        peak = PeakMemory([platform.process.pid, agent.pid, tunnel.pid])
        before = {p: rss_kib(p) for p in peak.pids}
        peak.start()
        through = read_all(local)
        through4 = parallel_reads(local, 4)
        peak.stop = True
        tunnel.terminate()
        echo_local = free_port()
        echo_tunnel = subprocess.Popen([binary, "tunnel", device_id, "--remote-port", str(echo_port),
                                        "--local-port", str(echo_local), "--url", platform.base],
                                       env=dict(platform.env, TELEMARK_TOKEN=token), stdout=subprocess.PIPE, text=True)
        assert "Forwarding" in echo_tunnel.stdout.readline()
        tunnel_rtt = percentiles(echo_round_trips(echo_local, args.keys))
        echo_tunnel.terminate()
        ssh_local, ssh_echo = free_port(), free_port()
        forward = subprocess.Popen(ssh + ["-N", "-L", f"{ssh_local}:127.0.0.1:{source_port}",
                                          "-L", f"{ssh_echo}:127.0.0.1:{echo_port}", f"{getpass.getuser()}@127.0.0.1"])
        wait_port(ssh_local, 10)
        via_ssh = read_all(ssh_local)
        via_ssh4 = parallel_reads(ssh_local, 4)
        ssh_rtt = percentiles(echo_round_trips(ssh_echo, args.keys))
        forward.terminate()
        mib = SIZE / (1 << 20)
        print(f"\n64 MiB read through a port forward")
        print(f"  direct loopback      {direct:7.2f} s  {mib / direct:8.1f} MiB/s")
        print(f"  ssh -L               {via_ssh:7.2f} s  {mib / via_ssh:8.1f} MiB/s")
        print(f"  telemark tunnel      {through:7.2f} s  {mib / through:8.1f} MiB/s"
              f"  ({through / via_ssh:.2f}x the time of ssh -L)")
        print(f"  4 connections at once, 4 x 64 MiB")
        print(f"    ssh -L             {via_ssh4:7.2f} s  {4 * mib / via_ssh4:8.1f} MiB/s")
        print(f"    telemark tunnel    {through4:7.2f} s  {4 * mib / through4:8.1f} MiB/s")
        print(f"\none byte echoed through a port forward, ms ({args.keys} round trips)")
        print(f"  {'':16} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8}")
        for name, p in (("telemark tunnel", tunnel_rtt), ("ssh -L", ssh_rtt)):
            print(f"  {name:16} " + " ".join(f"{p[k]:8.2f}" for k in ("p50", "p99", "p99.9", "max")))
        names = {platform.process.pid: "serve", agent.pid: "agent", tunnel.pid: "telemark tunnel"}
        for pid, name in names.items():
            print(f"  peak RSS {name:16} {before[pid] / 1024:6.1f} → {peak.peak[pid] / 1024:6.1f} MiB")
    finally:
        agent.terminate()
        sshd_proc.terminate()
        platform.process.terminate()


if __name__ == "__main__":
    main()
