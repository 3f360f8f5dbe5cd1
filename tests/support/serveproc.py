"""`blockstore serve` as a child process: start it on a port, wait for health, stop it.

For the tests of the service's own life cycle (start, stop, restart, kill -9); tests that need
a host with exports and a store use `servehost.ServeHost`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.paths import BIN, REPO
from tests.support.servehost import pid_alive


def get_json(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKSTORE_")}
    env["PYTHONPATH"] = str(REPO)  # the tree under test, not wherever the venv installed it
    proc = subprocess.Popen(
        [BIN, "serve", "--home", str(home), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("blockstore serve did not become healthy in 60 s")


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stop_serve(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> list[int]:
    kids = children(proc.pid)
    proc.send_signal(sig)
    proc.wait(30)
    deadline = time.monotonic() + 20
    while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [k for k in kids if pid_alive(k)]
