"""Starts the `telemark broker` binary on loopback ports for the paho tests."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Broker:
    def __init__(self, tcp: int, ws: int):
        self.host = "127.0.0.1"
        self.tcp = tcp
        self.ws = ws


@pytest.fixture(scope="session")
def broker():
    binary = os.environ.get("TELEMARK_BIN", str(ROOT / "target" / "debug" / "telemark"))
    tcp, ws = free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "broker", "--tcp", f"127.0.0.1:{tcp}", "--ws", f"127.0.0.1:{ws}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        wait_for(tcp)
        wait_for(ws)
        yield Broker(tcp, ws)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
