"""`blockstore serve` against a misconfigured store or configuration: one clear line, a non-zero
exit in bounded time, never a traceback; a missing bucket is created when the credentials may.

Every case runs the real `blockstore serve` as a subprocess against the real SeaweedFS (the
`seaweed` fixture; a second `weed mini` with a limited identity for the refused bucket).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.host.embedded import PORT_FLAGS, free_ports, weed_binary
from blockstore.store.s3 import S3Config, S3Store
from tests.support.paths import BIN, REPO
from tests.support.seaweed import SeaweedServer


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKSTORE_")}
    env.update(values, PYTHONPATH=str(REPO))
    return env


def _serve_fails(home: Path, env: dict[str, str], within: float) -> str:
    """Run `blockstore serve`; it must exit non-zero within `within` s with one error line
    and no traceback. Returns that line."""
    started = time.monotonic()
    proc = subprocess.run(
        [BIN, "serve", "--home", str(home), "--port", str(free_ports(1)[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=within + 30,
    )
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert took < within, f"took {took:.1f} s: {out}"
    assert "Traceback" not in out and "╭" not in out, out
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, out
    assert errors[0].startswith("blockstore serve: error: "), out
    return errors[0]


def _store_env(seaweed: SeaweedServer, **over: str) -> dict[str, str]:
    values = {
        "BLOCKSTORE_S3_ENDPOINT": seaweed.endpoint,
        "BLOCKSTORE_S3_BUCKET": seaweed.bucket,
        "BLOCKSTORE_S3_ACCESS_KEY": seaweed.access_key,
        "BLOCKSTORE_S3_SECRET_KEY": seaweed.secret_key,
        "BLOCKSTORE_S3_PREFIX": f"startup-{uuid.uuid4().hex[:8]}/",
        "BLOCKSTORE_RETRY_SECONDS": "3",
    }
    values.update(over)
    return _env(**values)


def test_missing_bucket_is_created_and_served(seaweed: SeaweedServer, tmp_path: Path) -> None:
    bucket = f"created-{uuid.uuid4().hex[:8]}"
    port = free_ports(1)[0]
    env = _store_env(seaweed, BLOCKSTORE_S3_BUCKET=bucket, BLOCKSTORE_API_TOKEN="t0k")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [BIN, "serve", "--home", str(tmp_path / "home"), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/disks")
            req.add_header("Authorization", "Bearer t0k")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert json.loads(r.read()) == {"disks": []}
                    break
            except OSError:
                time.sleep(0.2)
        assert f"created bucket {bucket!r}" in log.read_text()
        raw = S3Store(S3Config(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key))
        assert list(raw.list("")) is not None  # the bucket exists now
        raw.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_wrong_credentials_are_one_line(seaweed: SeaweedServer, tmp_path: Path) -> None:
    line = _serve_fails(
        tmp_path / "home", _store_env(seaweed, BLOCKSTORE_S3_SECRET_KEY="not-the-secret"), 20
    )
    assert "refused these credentials" in line
    assert "SignatureDoesNotMatch" in line
    assert "BLOCKSTORE_S3_SECRET_KEY" in line
    line = _serve_fails(
        tmp_path / "home", _store_env(seaweed, BLOCKSTORE_S3_ACCESS_KEY="nobody-we-know"), 20
    )
    assert "refused these credentials" in line


def test_endpoint_with_nothing_listening(tmp_path: Path) -> None:
    env = _env(
        BLOCKSTORE_S3_ENDPOINT=f"http://127.0.0.1:{free_ports(1)[0]}",
        BLOCKSTORE_S3_ACCESS_KEY="a",
        BLOCKSTORE_S3_SECRET_KEY="b",
        BLOCKSTORE_RETRY_SECONDS="2",
    )
    line = _serve_fails(tmp_path / "home", env, 15)
    assert "did not answer" in line and "Connection refused" in line
    assert "BLOCKSTORE_S3_ENDPOINT" in line


def test_endpoint_that_never_answers(tmp_path: Path) -> None:
    """A listener that accepts connections and never says a word (a hung store): bounded by
    the retry deadline plus one attempt's timeout (5 s)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = _env(
            BLOCKSTORE_S3_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}",
            BLOCKSTORE_S3_ACCESS_KEY="a",
            BLOCKSTORE_S3_SECRET_KEY="b",
            BLOCKSTORE_RETRY_SECONDS="2",
        )
        line = _serve_fails(tmp_path / "home", env, 20)
    assert "did not answer" in line and "timed out" in line


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("BLOCKSTORE_RETRY_SECONDS", "thirty", "BLOCKSTORE_RETRY_SECONDS must be a number"),
        ("BLOCKSTORE_PORT", "84x0", "BLOCKSTORE_PORT must be a number"),
        ("BLOCKSTORE_RPO_SECONDS", "-5", "BLOCKSTORE_RPO_SECONDS must be at least"),
        (
            "BLOCKSTORE_UPLOAD_AFTER_SECONDS",
            "-1",
            "BLOCKSTORE_UPLOAD_AFTER_SECONDS must be at least",
        ),
        ("BLOCKSTORE_S3_ENDPOINT", "127.0.0.1:8333", "must look like http(s)://host:port"),
    ],
)
def test_malformed_environment(tmp_path: Path, variable: str, value: str, says: str) -> None:
    env = _env(BLOCKSTORE_S3_ACCESS_KEY="a", BLOCKSTORE_S3_SECRET_KEY="b", **{variable: value})
    if variable == "BLOCKSTORE_PORT":  # --port would win over it
        proc = subprocess.run(
            [BIN, "serve", "--home", str(tmp_path / "home")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in out, out
        assert out.strip() == f"blockstore serve: error: {says}, not {value!r}", out
        return
    line = _serve_fails(tmp_path / "home", env, 15)
    assert says in line


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[s3\nendpoint = 1\n", "config.toml: "),
        ('s3 = "http://127.0.0.1:8333"\n', "[s3] must be a table"),
        ("retry_seconds = true\n", "retry_seconds in "),
        ('[s3]\nendpoint = "http://127.0.0.1:8333"\n', "BLOCKSTORE_S3_ACCESS_KEY"),
        ('[backups.Vault]\nendpoint = "http://127.0.0.1:1"\n', "[backups.Vault] must be a table"),
        ('[backups.vault]\nendpoint = "http://127.0.0.1:1"\n', "needs endpoint, access_key"),
        ("[backups]\nvault = 3\n", "[backups.vault] must be a table"),
    ],
)
def test_malformed_config_toml(tmp_path: Path, text: str, says: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(text)
    line = _serve_fails(home, _env(), 15)
    assert says in line


def test_port_in_use_is_one_line(seaweed: SeaweedServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [BIN, "serve", "--home", str(tmp_path / "home"), "--port", str(port)],
            env=_store_env(seaweed),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        f"blockstore serve: error: cannot listen on 127.0.0.1:{port} (Address already in "
        "use): choose another port with --port or BLOCKSTORE_PORT"
    )


# -- a store whose credentials may not create buckets -------------------------------------------

LIMITED = ("limited-key", "limited-secret-not-a-real-one")


@pytest.fixture(scope="module")
def limited_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real `weed mini` whose S3 gateway knows one identity that may read, write and
    list but not administer (create buckets)."""
    tmp = tmp_path_factory.mktemp("limited-weed")
    (tmp / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "limited",
                        "credentials": [{"accessKey": LIMITED[0], "secretKey": LIMITED[1]}],
                        "actions": ["Read", "Write", "List"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    args = [weed_binary(), "mini", f"-dir={tmp / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    args += ["-admin.ui=false", "-webdav=false", "-master.telemetry=false"]
    args += [f"-s3.config={tmp / 's3.json'}"] + [f"-{f}={p}" for f, p in ports.items()]
    (tmp / "data").mkdir()
    with open(tmp / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "weed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "limited weed mini did not start"
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.3)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_bucket_the_store_refuses_to_create(limited_store: str, tmp_path: Path) -> None:
    env = _env(
        BLOCKSTORE_S3_ENDPOINT=limited_store,
        BLOCKSTORE_S3_BUCKET="not-there",
        BLOCKSTORE_S3_ACCESS_KEY=LIMITED[0],
        BLOCKSTORE_S3_SECRET_KEY=LIMITED[1],
        BLOCKSTORE_RETRY_SECONDS="20",  # the S3 gateway may still be loading its identities
    )
    line = _serve_fails(tmp_path / "home", env, 40)
    assert "bucket 'not-there' does not exist" in line
    assert "refused to create it (AccessDenied)" in line
    assert "BLOCKSTORE_S3_BUCKET" in line
