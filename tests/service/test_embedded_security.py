"""The embedded SeaweedFS is the service's alone (issue #15, items 9 and 10).

A real `blockstore serve` on its embedded store (no S3 endpoint configured) holds a data disk
written through NBD with a marker pattern. Then, as the unprivileged user `nobody`:

- every TCP port the `weed` process listens on (found from /proc/net/tcp and its open sockets)
  gets GET/PUT/POST/DELETE on the master's, volume server's and filer's native paths (listing,
  assign, lookup, the disk's real file ids and filer paths, collection delete), over plain HTTP
  and over TLS without a client certificate, and a plaintext HTTP/2 (gRPC) request;
- every unix socket the process listens on is connected to;
- every file under the store's data directory is opened.

No answer may carry a byte of the disk, no write may be accepted, no socket or file may open;
afterwards the bucket still holds every segment and nothing new from `nobody`, and the disk
reads back whole. The S3 endpoint with the service's keys still serves the disk's segments
(whose bytes do carry the marker: the check is not vacuous), and without them answers 403.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.host.embedded import weed_binary
from blockstore.store.s3 import S3Config, S3Store
from tests.support.servehost import ServeHost, connect

MiB = 1 << 20
BUCKET = "blockstore"  # what `serve` creates on its embedded store
MARKER = b"\x8b\x1dBS-SECRET-DISK-BYTES\x07\xe3"

# Runs as `nobody` with Debian's python3 and the standard library only; prints one JSON list.
PROBE = r"""
import json, os, socket, ssl, subprocess, sys, http.client
spec = json.load(open(sys.argv[1]))
out = []
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # no client certificate: what any local user has
for port in spec["ports"]:
    for scheme in ("http", "https"):
        for method, path, body in spec["requests"]:
            rec = {"port": port, "scheme": scheme, "method": method, "path": path}
            try:
                if scheme == "https":
                    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
                else:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                headers = {"Accept": "application/json"}
                c.request(method, path, body=body.encode() if body else None, headers=headers)
                r = c.getresponse()
                rec["status"] = r.status
                rec["body"] = r.read(8 << 20).hex()
                c.close()
            except Exception as exc:
                rec["error"] = type(exc).__name__
            out.append(rec)
    h2 = subprocess.run(
        ["curl", "-s", "-m", "5", "--http2-prior-knowledge", "-X", "POST",
         "-H", "content-type: application/grpc", "-o", "/dev/null", "-w", "%{http_code}",
         f"http://127.0.0.1:{port}/filer_pb.SeaweedFiler/ListEntries"],
        capture_output=True, text=True)
    out.append({"port": port, "scheme": "h2c", "method": "POST", "path": "grpc",
                "status": int(h2.stdout or 0)})
for path in spec["unix"]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        out.append({"unix": path, "connected": True})
    except OSError as exc:
        out.append({"unix": path, "error": type(exc).__name__})
    finally:
        s.close()
for path in spec["files"]:
    try:
        with open(path, "rb") as f:
            out.append({"file": path, "read": f.read(64).hex()})
    except OSError as exc:
        out.append({"file": path, "error": type(exc).__name__})
try:
    out.append({"listdir": os.listdir(spec["data_dir"])})
except OSError as exc:
    out.append({"listdir_error": type(exc).__name__})
print(json.dumps(out))
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _weed_pid(serve_pid: int) -> int:
    for child in _children(serve_pid):
        if Path(f"/proc/{child}/exe").resolve().name == "weed":
            return child
    raise AssertionError("no weed child of blockstore serve")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_tcp_ports(pid: int) -> list[int]:
    """TCP ports in LISTEN (state 0A) whose socket `pid` holds, from /proc/net/tcp{,6}."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def listening_unix_sockets(pid: int) -> list[str]:
    inodes = _socket_inodes(pid)
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[6] in inodes and f[7].startswith("/"):
            paths.append(f[7])
    return sorted(set(paths))


def _weed_flag(pid: int, name: str) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for a in args:
        if a.startswith(f"-{name}=".encode()):
            return a.split(b"=", 1)[1].decode()
    raise AssertionError(f"weed has no -{name}")


def _file_ids(data_dir: Path, weed_pid: int, paths: list[str]) -> list[str]:
    """The volume-server file ids of `paths` (filer paths), asked as the service would:
    `weed shell` run in the data directory, so it reads the store's security.toml."""
    master = f"127.0.0.1:{_weed_flag(weed_pid, 'master.port')}"
    master += f".{_weed_flag(weed_pid, 'master.port.grpc')}"
    filer = f"127.0.0.1:{_weed_flag(weed_pid, 'filer.port')}"
    filer += f".{_weed_flag(weed_pid, 'filer.port.grpc')}"
    script = "".join(f"fs.meta.cat {p}\n" for p in paths)
    out = subprocess.run(
        [weed_binary(), "shell", f"-master={master}", f"-filer={filer}"],
        input=script, capture_output=True, text=True, cwd=data_dir, timeout=60,
    ).stdout  # fmt: skip
    return sorted(set(re.findall(r'"fileId":\s*"([0-9]+,[0-9a-f]+)"', out)))


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory `nobody` can enter (pytest's tmp_path is under a 0700 directory, which
    would hide everything from `nobody` and make this test vacuous)."""
    d = Path(tempfile.mkdtemp(prefix="bs-sec-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_nobody_reaches_no_byte_of_a_disk_through_the_embedded_store(world_dir: Path) -> None:
    home = world_dir / "home"
    host = ServeHost(home, endpoint="", bucket="", prefix="", access_key="", secret_key="")
    host.env = {k: v for k, v in host.env.items() if not k.startswith("BLOCKSTORE_S3_")}
    host.start()
    try:
        home.chmod(0o755)  # the store's own directory must be private whatever the home is
        host.ok("POST", "/v1/disks", {"name": "secret1", "size_bytes": 64 * MiB, "kind": "data"})
        att = host.ok("POST", "/v1/disks/secret1/attach", {"vm": "vm1"})
        h = connect(att["socket"])
        block = (MARKER * (65536 // len(MARKER) + 1))[:65536]
        for i in range(16):
            h.pwrite(block, i * MiB)
        h.flush()

        assert host.proc is not None
        weed = _weed_pid(host.proc.pid)
        data_dir = home / "seaweedfs"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        access, secret = (home / "s3-credentials").read_text().split()[:2]
        s3_port = int(_weed_flag(weed, "s3.port"))
        store = S3Store(S3Config(f"http://127.0.0.1:{s3_port}", BUCKET, access, secret))
        before = sorted(o.key for o in store.list(""))
        segments = [k for k in before if "/seg/" in k]
        assert segments, before
        # The right keys read the disk's bytes over S3.
        assert any(MARKER in store.get(k) for k in segments)

        fids = _file_ids(data_dir, weed, [f"/buckets/{BUCKET}/{k}" for k in segments])
        assert fids, "weed shell found no file ids"
        seg = f"/buckets/{BUCKET}/{segments[0]}"
        requests: list[tuple[str, str, str]] = [
            ("GET", "/", ""),
            ("GET", "/status", ""),
            ("GET", "/dir/status", ""),
            ("GET", "/dir/assign", ""),
            ("GET", "/cluster/status", ""),
            ("GET", "/vol/status", ""),
            ("GET", "/buckets/", ""),
            ("GET", f"/buckets/{BUCKET}/", ""),
            ("GET", f"/buckets/{BUCKET}/?limit=1000", ""),
            ("GET", f"/{BUCKET}", ""),  # S3 ListObjects, anonymous
            ("GET", f"/{BUCKET}/{segments[0]}", ""),  # S3 GetObject, anonymous
            ("GET", seg, ""),
            ("PUT", seg, "overwritten"),
            ("POST", seg, "overwritten"),
            ("DELETE", seg, ""),
            ("PUT", f"/buckets/{BUCKET}/nobody-was-here", "x"),
            ("PUT", f"/{BUCKET}/nobody-was-here", "x"),
            ("POST", "/submit", "x"),
        ]
        for fid in fids[:3]:
            requests += [
                ("GET", f"/dir/lookup?fileId={fid}", ""),
                ("GET", f"/{fid}", ""),
                ("PUT", f"/{fid}", "overwritten"),
                ("POST", f"/{fid}", "overwritten"),
                ("DELETE", f"/{fid}", ""),
            ]
        # Last, the most destructive: dropping the bucket's whole collection on the master.
        requests.append(("GET", f"/col/delete?collection={BUCKET}", ""))
        files = [str(p) for p in data_dir.rglob("*") if p.is_file()]
        assert any(f.endswith(".dat") for f in files)
        ports = listening_tcp_ports(weed)
        unix = listening_unix_sockets(weed)
        assert s3_port in ports and len(ports) >= 8, ports

        spec = world_dir / "spec.json"
        spec.write_text(
            json.dumps(
                {"ports": ports, "requests": requests, "unix": unix, "files": files,
                 "data_dir": str(data_dir)}
            )
        )  # fmt: skip
        probe = world_dir / "probe.py"
        probe.write_text(PROBE)
        for p in (spec, probe):
            p.chmod(0o644)
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(probe), str(spec)],
            capture_output=True, text=True, timeout=600, cwd="/",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)

        marker_hex = MARKER.hex()
        data_paths = ("/buckets", "/col/", "/dir/", "/vol/", "/cluster", "/submit", f"/{BUCKET}",
                      *(f"/{fid}" for fid in fids))  # fmt: skip
        for r in results:
            if "port" in r:
                assert marker_hex not in r.get("body", ""), f"disk bytes leaked: {r['port']} {r}"
                status = r.get("status", 0)
                if r["method"] != "GET" or r["scheme"] == "h2c":
                    assert not 200 <= status < 300, f"write accepted: {r}"
                elif r["path"].startswith(data_paths):
                    assert not 200 <= status < 300, f"data path answered: {r}"
                # else a status or index page (the volume server's /status names its
                # volumes and their sizes): allowed, as long as it holds no disk byte
            elif "unix" in r:
                assert r.get("error") == "PermissionError", f"unix socket open to nobody: {r}"
            elif "file" in r:
                assert r.get("error") == "PermissionError", f"file readable by nobody: {r}"
            else:
                assert r.get("listdir_error") == "PermissionError", r
        assert len([r for r in results if "port" in r]) >= len(ports) * len(requests) * 2

        # Nothing changed: the same objects, the disk reads back whole, S3 with keys works.
        after = sorted(o.key for o in store.list(""))
        assert set(segments) <= set(after), "segments gone"
        assert not [k for k in after if "nobody" in k]
        assert any(MARKER in store.get(k) for k in segments)
        h2 = connect(att["socket"])
        for i in range(16):
            assert h2.pread(len(block), i * MiB) == block
        h.shutdown()
        h2.shutdown()
        store.close()
    finally:
        host.stop()
