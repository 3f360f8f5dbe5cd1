"""The hypervisor's user reaches the NBD sockets through a group, and nobody else reaches
anything (issue #15 points 1 and 10), with a real `blockstore serve`, qemu-img and qemu-io run
as unprivileged users.

Debian's libvirt runs QEMU as `libvirt-qemu`; here a test group and user stand in for it (made
once on the machine, like the package would), and `nobody` is the user outside the group.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, connect

GROUP = USER = "bstest-hv"
_n = itertools.count()


def _ensure_user() -> None:
    subprocess.run(["groupadd", "-f", "-r", GROUP], check=True)
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "-r", "-g", GROUP, "-M", "-s", "/usr/sbin/nologin", USER], check=True
        )


def _as(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def host(seaweed: SeaweedServer) -> Iterator[ServeHost]:
    _ensure_user()
    # The home's parent must let others pass (as /var/lib does); pytest's tmp dirs do not.
    base = Path(tempfile.mkdtemp(prefix="bs-group-", dir="/tmp"))
    os.chmod(base, 0o711)
    h = ServeHost(
        base / "home",
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=f"sockgroup-{next(_n)}-{os.getpid()}/",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        extra_env={"BLOCKSTORE_SOCKET_GROUP": GROUP},
    ).start()
    yield h
    h.stop()
    subprocess.run(["rm", "-rf", str(base)], check=False)


def test_the_socket_group_reaches_the_disk_and_no_one_else_does(host: ServeHost) -> None:
    host.ok("POST", "/v1/disks", {"name": "g1", "size_bytes": 1 << 20, "kind": "data"})
    host.ok("POST", "/v1/disks", {"name": "e1", "size_bytes": 1 << 20, "kind": "ephemeral"})
    att = host.ok("POST", "/v1/disks/g1/attach", {"vm": "vm1"})
    host.ok("POST", "/v1/disks/e1/attach", {"vm": "vm1"})
    h = connect(att["socket"])
    h.pwrite(b"\x5a" * 512, 0)
    h.flush()
    h.shutdown()

    inside = _as(USER, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 512", att["nbd_uri"])
    modes = subprocess.run(
        ["ls", "-la", str(host.home), str(host.home / "run")], capture_output=True, text=True
    ).stdout
    assert inside.returncode == 0 and "read 512/512" in inside.stdout, (inside, modes)
    outside = _as("nobody", "qemu-img", "info", att["nbd_uri"])
    assert outside.returncode != 0 and "Permission denied" in outside.stderr, outside

    # Everything else under the home is the service's alone, for the group too.
    home = host.home
    files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.endswith(".img") for p in files)  # the ephemeral disk's bytes
    for user in (USER, "nobody"):
        listing = _as(user, "ls", str(home))
        assert listing.returncode != 0, f"{user} lists the home"
        for path in files[:50]:
            got = _as(user, "head", "-c", "1", str(path))
            assert got.returncode != 0, f"{user} reads {path}"
