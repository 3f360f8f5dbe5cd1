"""`blockstore serve` end to end: embedded SeaweedFS, auth, clean stop, data kept on restart."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from blockstore.host.embedded import free_ports
from blockstore.store.s3 import S3Config, S3Store
from tests.support.serveproc import get_json, start_serve, stop_serve


def test_serve_embedded_store_auth_stop_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_ports(1)[0]
    proc = start_serve(home, port)
    try:
        token = (home / "api-token").read_text().strip()
        assert oct((home / "api-token").stat().st_mode & 0o777) == "0o600"
        status, body = get_json(f"http://127.0.0.1:{port}/healthz", token)
        assert status == 200
        health = body["store"]
        assert isinstance(health, dict)
        assert health == {**health, "reachable": True, "embedded": True}
        assert health["age_s"] is not None  # from the background probe
        record = json.loads((home / "service.json").read_text())
        assert record["url"] == f"http://127.0.0.1:{port}" and record["pid"] == proc.pid
        assert get_json(f"http://127.0.0.1:{port}/v1/info")[0] == 401
        status, info = get_json(f"http://127.0.0.1:{port}/v1/info", token)
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
        leftover = stop_serve(proc)
    assert leftover == [], f"processes left behind: {leftover}"
    assert not (home / "service.json").exists()  # removed at a clean stop

    proc = start_serve(home, port)
    try:
        _, info = get_json(f"http://127.0.0.1:{port}/v1/info", token)
        store_info = info["store"]
        assert isinstance(store_info, dict)
        store = S3Store(S3Config(str(store_info["endpoint"]), "blockstore", access, secret))
        assert store.get("kept/across-restart") == b"still here"
        store.close()
    finally:
        leftover = stop_serve(proc, signal.SIGINT)
    assert leftover == []


def test_serve_kill_9_leaves_no_orphan_store(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    proc = start_serve(tmp_path / "home", port)
    leftover = stop_serve(proc, signal.SIGKILL)
    assert leftover == [], "the embedded SeaweedFS outlived a kill -9 of its parent"
