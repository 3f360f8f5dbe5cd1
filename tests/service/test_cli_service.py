"""The CLI finds a real `blockstore serve` from `--home` alone (through `<home>/service.json`),
ignores a record left by a service that is gone, and prints an attachment whole on an
80-column terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockstore.host import servicefile
from blockstore.host.embedded import free_ports
from tests.support.paths import BIN, REPO
from tests.support.seaweed import SeaweedServer


def _clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKSTORE_")}
    env.update(values, PYTHONPATH=str(REPO), COLUMNS="80", TERM="xterm")
    return env


class Service:
    """`blockstore serve --home HOME --port <free>` on the test SeaweedFS; its token is the
    one it generates into the home (no $BLOCKSTORE_API_TOKEN)."""

    def __init__(self, seaweed: SeaweedServer, home: Path) -> None:
        self.seaweed = seaweed
        self.home = home
        self.port = free_ports(1)[0]
        self.env = _clean_env(
            BLOCKSTORE_S3_ENDPOINT=seaweed.endpoint,
            BLOCKSTORE_S3_BUCKET=seaweed.bucket,
            BLOCKSTORE_S3_ACCESS_KEY=seaweed.access_key,
            BLOCKSTORE_S3_SECRET_KEY=seaweed.secret_key,
            BLOCKSTORE_S3_PREFIX=f"cli-{uuid.uuid4().hex[:8]}/",
            BLOCKSTORE_RETRY_SECONDS="5",
        )
        self.log = home.parent / f"{home.name}-serve.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--home", str(home), "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 60
        while not servicefile.path_of(home).exists() or self.cli("disk", "list").returncode:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.3)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The CLI as a user on this host runs it: `--home` and nothing else."""
        return subprocess.run(
            [BIN, *args, "--home", str(self.home)],
            env=_clean_env(**env),
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def service(seaweed: SeaweedServer, tmp_path: Path) -> Iterator[Service]:
    s = Service(seaweed, tmp_path / "home")
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(30)


def test_cli_finds_the_service_from_home_alone(service: Service) -> None:
    path = servicefile.path_of(service.home)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    record = json.loads(path.read_text())
    assert record["url"] == f"http://127.0.0.1:{service.port}"
    assert record["pid"] == service.proc.pid
    assert service.port != 8470
    out = service.cli("disk", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    assert out.stderr == ""
    service.proc.send_signal(signal.SIGTERM)
    service.proc.wait(60)
    assert not path.exists(), "service.json outlived a clean stop"


def test_a_second_service_on_the_same_home_is_refused(service: Service) -> None:
    proc = subprocess.run(
        [BIN, "serve", "--home", str(service.home), "--port", str(free_ports(1)[0])],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"blockstore serve: error: another blockstore serve already runs with home "
        f"{service.home} (at http://127.0.0.1:{service.port}): stop it first, or give this "
        "one its own --home"
    ), proc.stderr
    assert service.proc.poll() is None
    assert service.cli("disk", "list").returncode == 0
    # The lock goes with the process, even with kill -9: the next start is not blocked.
    service.proc.kill()
    service.proc.wait(30)
    again = Service(service.seaweed, service.home)
    try:
        assert again.cli("disk", "list").returncode == 0
    finally:
        again.proc.send_signal(signal.SIGTERM)
        again.proc.wait(60)


def test_a_record_left_by_a_killed_service_is_ignored(service: Service) -> None:
    path = servicefile.path_of(service.home)
    service.proc.kill()
    service.proc.wait(30)
    assert path.exists()  # kill -9: nothing could remove it
    nothing_there = free_ports(1)[0]
    out = service.cli("disk", "list", BLOCKSTORE_PORT=str(nothing_there))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert (
        f"note: ignoring {path}: the service that wrote it (pid {service.proc.pid}, "
        f"http://127.0.0.1:{service.port}) is not running any more; "
        f"trying http://127.0.0.1:{nothing_there}"
    ) in out.stderr.replace("\n", " ")
    assert f"cannot reach the blockstore API at http://127.0.0.1:{nothing_there}" in out.stderr


def test_a_reused_pid_is_not_the_service(tmp_path: Path) -> None:
    """A record whose pid now belongs to another process (here: this test) is stale too."""
    home = tmp_path / "home"
    home.mkdir()
    servicefile.write(home, "http://127.0.0.1:1")
    assert servicefile.find(home) == ("http://127.0.0.1:1", None)
    record = json.loads(servicefile.path_of(home).read_text())
    record["pid_started"] -= 1  # written by an earlier process that had this pid
    servicefile.path_of(home).write_text(json.dumps(record))
    url, notice = servicefile.find(home)
    assert url is None and notice is not None and "not running any more" in notice
    servicefile.path_of(home).write_text("{not json")
    url, notice = servicefile.find(home)
    assert url is None and notice is not None and "unreadable" in notice


def test_attach_prints_uri_and_blockdev_whole_at_80_columns(service: Service) -> None:
    name = ("long-disk-name-" + uuid.uuid4().hex)[:63].ljust(63, "x")
    assert len(name) == 63
    out = service.cli("disk", "create", name, "--size", "16M", "--kind", "data")
    assert out.returncode == 0, out.stderr
    out = service.cli("disk", "attach", name, "--vm", "vm1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    fields = dict(line.split(": ", 1) for line in lines if ": " in line and "<" not in line)
    sock = fields["socket"]
    assert Path(sock).is_socket()
    assert fields["nbd_uri"] == f"nbd+unix:///{name}?socket={sock}"
    assert fields["qemu_blockdev"].startswith(
        f"driver=nbd,server.type=unix,server.path={sock},export={name},node-name="
    )
    assert max(len(line) for line in lines) > 80  # printed whole, not cut to the terminal
    assert "…" not in out.stdout
    assert "libvirt_xml:" in lines and "</disk>" in lines
    # What was printed works as printed: QEMU's own tools open the URI.
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", fields["nbd_uri"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == 16 << 20
    # `disk show` prints the attachment the same way.
    out = service.cli("disk", "show", name)
    assert out.returncode == 0, out.stderr
    assert f"attachment.nbd_uri: {fields['nbd_uri']}" in out.stdout.splitlines()
    assert f"attachment.qemu_blockdev: {fields['qemu_blockdev']}" in out.stdout.splitlines()
    assert f"name: {name}" in out.stdout.splitlines()
    out = service.cli("disk", "detach", name)
    assert out.returncode == 0, out.stderr


def test_restore_points_groups_and_backups_from_the_cli(service: Service) -> None:
    """The data-protection commands through the real service, as the README shows them."""

    def ok(*args: str) -> str:
        out = service.cli(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    ok("disk", "create", "cdp", "--size", "8M", "--kind", "data", "--retention", "1h")
    assert json.loads(ok("disk", "show", "cdp", "--json"))["retention_seconds"] == 3600
    sock = json.loads(ok("disk", "attach", "cdp", "--vm", "vm1", "--json"))["socket"]
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 64k",
                    f"nbd+unix:///cdp?socket={sock}"], check=True, capture_output=True)  # fmt: skip
    points = json.loads(ok("point", "list", "cdp", "--json"))
    assert points["count"] >= 1
    position = points["newest"]["position"]
    assert "restore points of cdp" in ok("point", "list", "cdp")
    ok("disk", "create", "cdp-then", "--kind", "data", "--source-point", f"cdp@{position}")
    ok("disk", "create", "other", "--size", "8M", "--kind", "data")
    group = json.loads(ok("group", "create", "both", "cdp", "other", "--json"))
    assert [m["disk"] for m in group["members"]] == ["cdp", "other"]
    assert "both" in ok("group", "list")
    ok("disk", "detach", "cdp")
    out = ok("point", "revert", "cdp", "--position", str(position))
    assert "undo: blockstore point revert cdp --position" in out
    out = service.cli("backup", "list")
    assert out.returncode == 0 and "TARGET" in out.stdout, out.stderr
    out = service.cli("backup", "create", "cdp", "both", "--target", "nosuch")
    assert out.returncode != 0 and "backup target 'nosuch' does not exist" in out.stderr


def test_encrypted_and_compressed_disks_from_the_cli(service: Service) -> None:
    """A real service and its exports with the KEK in `<home>/kek/`: an encrypted, compressed
    disk is written and read through NBD, the KEK rotates, the disk reads on with only the new
    KEK file, and it deletes (its keys first); a bad codec name is refused."""

    def ok(*args: str) -> str:
        out = service.cli(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    disk = json.loads(ok("disk", "create", "vault1", "--size", "8M", "--kind", "os",
                         "--encrypted", "--compression", "zstd", "--json"))  # fmt: skip
    assert disk["encrypted"] and disk["compression"] == "zstd" and disk["caching"] == "readwrite"
    sock = json.loads(ok("disk", "attach", "vault1", "--vm", "vm1", "--json"))["socket"]
    uri = f"nbd+unix:///vault1?socket={sock}"
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", uri],
                   check=True, capture_output=True)  # fmt: skip
    ok("disk", "detach", "vault1")
    status = json.loads(ok("encryption", "status", "--json"))
    assert status["provider"] == "local" and status["encrypted_disks"] == ["vault1"]
    rotated = json.loads(ok("encryption", "rotate", "--json"))
    assert rotated["current_kek"] == "local-2"
    assert rotated["disks"] == [{"disk": "vault1", "keys_rewrapped": 1}]
    (service.home / "kek" / "1.key").unlink()  # only the new KEK is left on the host
    sock = json.loads(ok("disk", "attach", "vault1", "--vm", "vm1", "--json"))["socket"]
    read = ["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", f"nbd+unix:///vault1?socket={sock}"]
    check = subprocess.run(read, capture_output=True, text=True)
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check
    ok("disk", "detach", "vault1")
    ok("disk", "delete", "vault1", "--wait")
    assert service.cli("disk", "show", "vault1").returncode != 0
    out = service.cli(
        "disk", "create", "x", "--size", "8M", "--kind", "data", "--compression", "gzip"
    )
    assert out.returncode != 0 and "compression" in (out.stderr + out.stdout)


def test_qos_caps_from_the_cli(service: Service) -> None:
    """Caps set at create, changed on an attached disk (applied to its running export), shown
    by `disk qos`; a burst below the baseline is refused with the reason."""

    def ok(*args: str) -> str:
        out = service.cli(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    disk = json.loads(ok("disk", "create", "capped", "--size", "8M", "--kind", "data",
                         "--iops-limit", "300", "--json"))  # fmt: skip
    assert disk["qos"]["iops_limit"] == 300 and disk["qos"]["mbps_limit"] == 0
    ok("disk", "attach", "capped", "--vm", "vm1", "--json")
    qos = json.loads(ok("disk", "qos", "capped", "--mbps-limit", "12.5", "--json"))
    assert (qos["iops_limit"], qos["mbps_limit"]) == (300, 12.5)
    assert json.loads(ok("disk", "qos", "capped", "--json"))["mbps_limit"] == 12.5
    assert "iops_limit" in ok("disk", "qos", "capped")  # the table
    bad = service.cli("disk", "qos", "capped", "--burst-iops", "100")
    assert bad.returncode != 0 and "must be at least iops_limit" in bad.stdout + bad.stderr
    ok("disk", "detach", "capped")
