"""`blockstore serve` end to end: embedded SeaweedFS, auth, clean stop, data kept on restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from blockstore.host.embedded import free_ports
from blockstore.store.s3 import S3Config, S3Store

BIN = str(Path(sys.executable).parent / "blockstore")
REPO = Path(__file__).resolve().parent.parent


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start(home: Path, port: int) -> subprocess.Popen[bytes]:
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
            if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("blockstore serve did not become healthy in 60 s")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not its parent any more is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> list[int]:
    kids = _children(proc.pid)
    proc.send_signal(sig)
    proc.wait(30)
    deadline = time.monotonic() + 20
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [k for k in kids if _alive(k)]


def test_serve_embedded_store_auth_stop_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_ports(1)[0]
    proc = _start(home, port)
    try:
        token = (home / "api-token").read_text().strip()
        assert oct((home / "api-token").stat().st_mode & 0o777) == "0o600"
        status, body = _get(f"http://127.0.0.1:{port}/healthz", token)
        assert status == 200
        health = body["store"]
        assert isinstance(health, dict)
        assert health == {**health, "reachable": True, "embedded": True}
        assert health["age_s"] is not None  # from the background probe
        record = json.loads((home / "service.json").read_text())
        assert record["url"] == f"http://127.0.0.1:{port}" and record["pid"] == proc.pid
        assert _get(f"http://127.0.0.1:{port}/v1/info")[0] == 401
        status, info = _get(f"http://127.0.0.1:{port}/v1/info", token)
        assert status == 200
        store_info = info["store"]
        assert isinstance(store_info, dict)
        # Secrets are in 0600 files and the environment, never on a command line.
        access, secret = (home / "s3-credentials").read_text().split()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert secret not in ps and token not in ps
        store = S3Store(S3Config(str(store_info["endpoint"]), "blockstore", access, secret))
        store.put("kept/across-restart", b"still here")
        store.close()
    finally:
        leftover = _stop(proc)
    assert leftover == [], f"processes left behind: {leftover}"
    assert not (home / "service.json").exists()  # removed at a clean stop

    proc = _start(home, port)
    try:
        _, info = _get(f"http://127.0.0.1:{port}/v1/info", token)
        store_info = info["store"]
        assert isinstance(store_info, dict)
        store = S3Store(S3Config(str(store_info["endpoint"]), "blockstore", access, secret))
        assert store.get("kept/across-restart") == b"still here"
        store.close()
    finally:
        leftover = _stop(proc, signal.SIGINT)
    assert leftover == []


def test_serve_kill_9_leaves_no_orphan_store(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    proc = _start(tmp_path / "home", port)
    leftover = _stop(proc, signal.SIGKILL)
    assert leftover == [], "the embedded SeaweedFS outlived a kill -9 of its parent"
