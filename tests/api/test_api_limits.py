"""The API's limits, against a real `blockstore serve` on the real SeaweedFS (behind a fault proxy):
the token before the body, capped bodies, a /healthz that never waits for the store, names
matched whole, strict request bodies."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blockstore.errors import InvalidArgument
from blockstore.format import keys
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import TOKEN, ServeHost, wait_for

MiB = 1 << 20


@pytest.fixture(scope="module")
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed.endpoint)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def host(
    seaweed: SeaweedServer, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeHost]:
    h = ServeHost(
        tmp_path_factory.mktemp("limits") / "home",
        endpoint=proxy.endpoint,
        bucket=seaweed.bucket,
        prefix=f"limits-{uuid.uuid4().hex[:8]}/",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        retry_seconds=5,
    ).start()
    try:
        yield h
    finally:
        proxy.clear()
        h.stop()


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _stream(
    port: int, path: str, total: int, *, token: str | None, chunked: bool
) -> tuple[int, dict[str, Any], float, int]:
    """POST a `total`-byte body in 1 MiB pieces, as fast as the server takes it, and stop
    sending once the answer comes. Returns (status, JSON body, seconds to the answer, bytes
    sent by then)."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    if token:
        head.append(f"Authorization: Bearer {token}")
    piece = b"x" * MiB
    if chunked:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        sent, pending, answer = 0, b"", b""
        while time.monotonic() - started < 60:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1)
            if readable:
                chunk = sock.recv(65536)
                answer += chunk
                if b"\r\n\r\n" in answer or not chunk:
                    break
                continue
            if writable:
                if not pending:
                    pending = piece
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
                if not pending:
                    sent += MiB
        took = time.monotonic() - started
        sock.setblocking(True)
        sock.settimeout(10)
        head_text, _, body = answer.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head_text.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        status = int(head_text.split(b" ", 2)[1])
        return status, json.loads(body[:length]), took, sent
    finally:
        sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_unauthenticated_huge_body_is_refused_before_it_is_read(
    host: ServeHost, chunked: bool
) -> None:
    assert host.proc is not None
    before = _memory(host.proc.pid)
    status, body, took, sent = _stream(
        host.port, "/v1/disks", 400 * MiB, token=None, chunked=chunked
    )
    after = _memory(host.proc.pid)
    assert status == 401, body
    assert body["error"] == "Unauthorized"
    assert took < 3, f"401 after {took:.1f} s and {sent // MiB} MiB sent"
    assert sent < 400 * MiB
    grew = after["VmRSS"] - before["VmRSS"]
    peak = after["VmHWM"] - before["VmHWM"]
    assert grew < 8 * MiB and peak < 8 * MiB, f"RSS +{grew / MiB:.1f} MiB, peak +{peak / MiB:.1f}"
    assert host.call("GET", "/v1/info")[0] == 200  # and the server is fine


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_authenticated_body_over_the_cap_is_413(host: ServeHost, chunked: bool) -> None:
    assert host.proc is not None
    before = _memory(host.proc.pid)
    status, body, took, sent = _stream(
        host.port, "/v1/disks", 64 * MiB, token=TOKEN, chunked=chunked
    )
    after = _memory(host.proc.pid)
    assert status == 413, body
    assert body["error"] == "PayloadTooLarge" and "1048576 bytes" in body["detail"]
    assert took < 3 and sent <= 8 * MiB, f"413 after {took:.1f} s, {sent // MiB} MiB sent"
    assert after["VmHWM"] - before["VmHWM"] < 8 * MiB
    # A body under the cap still works.
    status, out = host.call("POST", "/v1/disks", {"name": "x", "kind": "data", "size_gib": 0})
    assert status == 422 and "size_gib" in out["detail"]


def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, Any], float]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), time.monotonic() - started


def test_healthz_answers_from_a_probe_and_never_holds_a_worker(
    host: ServeHost, proxy: FaultProxy
) -> None:
    status, body, _ = _get(host.port, "/healthz")
    assert status == 200 and body["store"]["reachable"] is True
    assert 0 <= body["store"]["age_s"] < 15
    proxy.arm("stall")  # the store takes requests and never answers
    try:
        stop = threading.Event()
        slowest = [0.0]

        def hammer() -> None:
            while not stop.is_set():
                slowest[0] = max(slowest[0], _get(host.port, "/healthz")[2])
                time.sleep(0.05)  # 60 callers, not 60 busy loops on a shared machine

        with ThreadPoolExecutor(60) as pool:
            for _ in range(60):
                pool.submit(hammer)
            time.sleep(1)
            infos = []
            for _ in range(5):
                status, _, took = _get(host.port, "/v1/info", TOKEN)
                assert status == 200
                infos.append(took)
                time.sleep(0.2)
            # The probe in flight since the stall counts as "not reachable" after its timeout.
            degraded = wait_for(
                lambda: (lambda r: r if r[0] == 503 else None)(_get(host.port, "/healthz")),
                15,
                "/healthz to report the stalled store",
            )
            stop.set()
        # Before: 10-20 s each (every worker held by a /healthz waiting for the store).
        assert max(infos) < 2.0, f"/v1/info took {max(infos):.2f} s under 60 /healthz callers"
        assert slowest[0] < 2.0, f"a /healthz took {slowest[0]:.2f} s"
        assert degraded[1]["store"]["reachable"] is False
        assert "has not answered" in degraded[1]["store"]["error"]
    finally:
        proxy.clear()
    wait_for(lambda: _get(host.port, "/healthz")[0] == 200, 30, "/healthz to recover")


def test_names_with_a_trailing_newline_are_refused(host: ServeHost) -> None:
    for bad in ("abc\n", "abc\r\n"):
        status, out = host.call("POST", "/v1/disks", {"name": bad, "kind": "data", "size_gib": 1})
        assert status == 422 and "name" in out["detail"], out
        status, out = host.call("POST", "/v1/disks/abc/attach", {"vm": bad})
        assert status == 422 and "vm" in out["detail"], out
        status, out = host.call("POST", "/v1/disks/abc/snapshots", {"name": bad})
        assert status == 422 and "name" in out["detail"], out
    status, out = host.call("GET", "/v1/disks/abc%0A")
    assert status == 422 and "path.name" in out["detail"], out
    status, out = host.call("DELETE", "/v1/disks/abc/snapshots/s%0A")
    assert status == 422 and "path.snapshot" in out["detail"], out
    status, out = host.call("GET", "/v1/disks/abc/snapshots/s/changes?since=s%0A")
    assert status == 422 and "query.since" in out["detail"], out


def test_the_core_validators_match_whole_names() -> None:
    for bad in ("abc\n", "abc\r\n", "\nabc", "a" * 64):
        with pytest.raises(InvalidArgument):
            keys.validate_disk_id(bad)
        with pytest.raises(InvalidArgument):
            keys.validate_snapshot_name(bad)
    assert keys.validate_disk_id("a" * 63) == "a" * 63
    assert keys.DISK_ID_RE.match("op-1\n") is None  # even a caller's .match() is exact
    assert keys.parse_segment_key("disks/a/seg/0000000000000001\n") is None
    assert keys.parse_segment_key("disks/a/seg/0000000000000001") == ("a", 1)
    assert keys.parse_checkpoint_key("disks/a/ckpt/0000000000000001\n") is None
    assert keys.parse_epoch_key("disks/a/epoch/00000001\n") is None
    assert keys.parse_snapshot_key("disks/a/snap/s.json\n") is None
    assert keys.parse_clone_ref_key("disks/a/snap/s.clones/b\n") is None


DISK = {"name": "s1", "kind": "data"}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/disks", {**DISK, "size_bytes": "1048576"}, "size_bytes"),
        ("POST", "/v1/disks", {**DISK, "size_bytes": 1048576.0}, "size_bytes"),
        ("POST", "/v1/disks", {**DISK, "size_bytes": True}, "size_bytes"),
        ("POST", "/v1/disks", {**DISK, "size_gib": "1"}, "size_gib"),
        ("POST", "/v1/disks", {"name": 5, "kind": "data", "size_gib": 1}, "name"),
        ("POST", "/v1/disks", {"name": "s1", "kind": 1, "size_gib": 1}, "kind"),
        ("POST", "/v1/disks/s1/attach", {"vm": "vm1", "force": "true"}, "force"),
        ("POST", "/v1/disks/s1/attach", {"vm": "vm1", "force": 1}, "force"),
        ("POST", "/v1/disks/s1/attach", {"vm": "vm1", "force": "yes"}, "force"),
        ("POST", "/v1/disks/s1/detach", {"force": "yes"}, "force"),
        ("POST", "/v1/disks/s1/detach", {"force": 0}, "force"),
        ("PATCH", "/v1/disks/s1", {"size_bytes": "2097152"}, "size_bytes"),
        ("PATCH", "/v1/disks/s1", {"size_bytes": 2097152, "allow_shrink": "true"}, "allow_shrink"),
    ],
)
def test_request_bodies_are_strict(
    host: ServeHost, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    status, out = host.call(method, path, body)
    assert status == 422, out
    assert out["error"] == "InvalidArgument"
    assert out["detail"].startswith(f"{field}: Input should be"), out
    assert repr(body[field])[:20] in out["detail"]  # says what was sent


def test_strict_bodies_still_take_their_json_types(host: ServeHost) -> None:
    name = f"strict-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "kind": "data", "size_bytes": MiB, "caching": "readonly"}
    status, out = host.call("POST", "/v1/disks", body)
    assert status == 201, out
    assert out["caching"] == "readonly" and out["size_bytes"] == MiB
    status, out = host.call("PATCH", f"/v1/disks/{name}", {"size_bytes": 2 * MiB})
    assert status == 200 and out["size_bytes"] == 2 * MiB, out
    assert host.call("DELETE", f"/v1/disks/{name}")[0] == 202


def test_a_chunked_body_under_the_cap_reaches_the_route(host: ServeHost) -> None:
    """The guard reads a chunked body itself (to count it) and hands it on whole."""
    name = f"chunked-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"name": name, "kind": "data", "size_bytes": MiB}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/disks",
            body=iter([body[:10], body[10:]]),  # an iterable: http.client sends it chunked
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        out = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 201, out
    assert out["name"] == name
    assert host.call("DELETE", f"/v1/disks/{name}")[0] == 202
