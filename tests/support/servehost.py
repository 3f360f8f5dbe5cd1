"""A real `blockstore serve` process as a test host: the front door, for multi-host tests.

Each `ServeHost` runs the installed `blockstore serve` with its own home over a shared bucket
prefix of the test SeaweedFS (or a fault proxy in front of it), on a free port of 127.0.0.1, and
talks to it over HTTP with the bearer token, as a user would. `kill9()` and `stop()` end it the
way an operator or a crash would; `start()` brings it back with the same home. NBD clients are
libnbd handles on the socket the attach call returned.
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
from typing import Any

import nbd

from blockstore.host.embedded import free_ports
from tests.support.paths import BIN, REPO

TOKEN = "servehost-test-token"


class ServeHost:
    """One host: `blockstore serve --home HOME` over `endpoint`/`bucket`/`prefix`."""

    def __init__(
        self,
        home: Path,
        *,
        endpoint: str,
        bucket: str,
        prefix: str,
        access_key: str,
        secret_key: str,
        retry_seconds: float = 5.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.port = free_ports(1)[0]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKSTORE_")}
        self.env.update(
            BLOCKSTORE_S3_ENDPOINT=endpoint,
            BLOCKSTORE_S3_BUCKET=bucket,
            BLOCKSTORE_S3_PREFIX=prefix,
            BLOCKSTORE_S3_ACCESS_KEY=access_key,
            BLOCKSTORE_S3_SECRET_KEY=secret_key,
            BLOCKSTORE_API_TOKEN=TOKEN,
            BLOCKSTORE_RETRY_SECONDS=f"{retry_seconds:g}",
            PYTHONPATH=str(REPO),
        )
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home.parent / f"{home.name}-serve.log"

    def start(self, timeout: float = 60.0) -> ServeHost:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--home", str(self.home), "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"blockstore serve exited: {self.log_tail()}")
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.kill9()
        raise AssertionError(f"blockstore serve did not become healthy: {self.log_tail()}")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {out}"
        return out

    def stop(self) -> None:
        """SIGTERM, as an operator stops the service (exports stop gracefully first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL: the service dies; its nbdkit children follow (--exit-with-parent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"


def connect(socket: str) -> nbd.NBD:
    h = nbd.NBD()
    h.connect_unix(socket)
    return h


def nbd_errno(call: Any) -> str | None:
    """Run `call()`; the errno name of the NBD error it raised ("EPERM"; "?" when libnbd gave
    none, e.g. the connection is gone), None if it succeeded."""
    try:
        call()
    except nbd.Error as exc:
        return str(exc.errno or "?")
    return None


def wait_for(check: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
