"""A real guest on blockstore disks (issue #15 point 4): QEMU (TCG) and libvirt as installed.

The guest is a Debian kernel with a busybox/e2fsprogs initramfs (`tests/support/guestimage.py`).
It runs on disks attached through a real `blockstore serve`, wired with what the attach call
returned and nothing else: `qemu_blockdev` unchanged behind `-blockdev` (the device only names
its node), or `libvirt_xml` unchanged inside a domain. The first boot makes ext4 on every disk
and writes files with sha256 sums; the disks are detached, attached to a second VM (on a second
host for QEMU), and a second boot checks the file systems and every sum. One data disk has a
63-character name (the longest there is), so its node name is the hashed one; two data disks and
an OS disk (caching `readwrite`) share the VM.

`virt-xml-validate` checks the `<disk>` elements inside a domain (fast). The boots are slow
tests (`.venv/bin/pytest -q -m slow tests/system/test_guest.py`, run by CI after the default
suite); the libvirt boot starts `virtlogd` and `libvirtd` itself when none is running (as root,
no systemd needed).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.guestimage import Console, GuestImage, build_guest_image, parse_console
from tests.support.seaweed import SeaweedServer
from tests.support.servehost import ServeHost, wait_for

LONG_NAME = "guest-" + "x" * 53 + "-end"  # 63 characters, the longest valid disk name
DISK_BYTES = 64 << 20
BOOT_TIMEOUT = 300.0  # TCG on two shared cores; a boot here takes about 5-15 s
LIBVIRT_URI = "qemu:///system"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_n = itertools.count()

assert len(LONG_NAME) == 63


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_guest_image()


@pytest.fixture
def base() -> Iterator[Path]:
    # Everything the hypervisor's user opens (sockets, kernel, initramfs) sits under a directory
    # others may pass, as /var/lib is; pytest's own tmp dirs are 0700.
    path = Path(tempfile.mkdtemp(prefix="bs-guest-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _prefix() -> str:
    return f"guest-{next(_n)}-{os.getpid()}/"


def _host(
    seaweed: SeaweedServer, home: Path, group: str | None = None, prefix: str | None = None
) -> ServeHost:
    return ServeHost(
        home,
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        prefix=prefix or _prefix(),
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        extra_env={"BLOCKSTORE_SOCKET_GROUP": group} if group else None,
    ).start()


@pytest.fixture
def host(seaweed: SeaweedServer, base: Path) -> Iterator[ServeHost]:
    h = _host(seaweed, base / "home")
    yield h
    h.stop()


def _create_disks(host: ServeHost, tag: str) -> list[str]:
    """An OS disk (caching readwrite by default) and two data disks, one with the longest name."""
    names = [f"{tag}-os", LONG_NAME, f"{tag}-data"]
    for name, kind in zip(names, ("os", "data", "data"), strict=True):
        host.ok("POST", "/v1/disks", {"name": name, "size_bytes": DISK_BYTES, "kind": kind})
    return names


def _attach_all(host: ServeHost, names: list[str], vm: str) -> list[dict[str, Any]]:
    return [host.ok("POST", f"/v1/disks/{name}/attach", {"vm": vm}) for name in names]


def _node_name(blockdev: str) -> str:
    return next(o.split("=", 1)[1] for o in blockdev.split(",") if o.startswith("node-name="))


def _boot_qemu(image: GuestImage, attachments: list[dict[str, Any]], mode: str) -> Console:
    args = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
        "-append", f"console=ttyS0 panic=-1 quiet bsguest={mode} bsdisks={len(attachments)}",
    ]  # fmt: skip
    for i, att in enumerate(attachments):
        # The snippet as returned; only the device is ours (the serial names the disk in the guest).
        node = _node_name(att["qemu_blockdev"])
        args += ["-blockdev", att["qemu_blockdev"]]
        args += ["-device", f"virtio-blk-pci,drive={node},serial=d{i}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    console = parse_console(proc.stdout)
    assert proc.returncode == 0 and console.done == "ok", (proc.stdout, proc.stderr)
    return console


def _assert_written(console: Console, ids: list[str]) -> None:
    assert sorted(console.disks) == sorted(ids), console.text
    assert not console.failures, console.text
    for disk in ids:
        assert sorted(console.sums.get(disk, {})) == ["file1", "file2", "file3"], console.text
        assert console.disks[disk][1] * 512 == DISK_BYTES


def _assert_verified(first: Console, second: Console) -> None:
    assert sorted(second.disks) == sorted(first.disks), second.text
    assert not second.failures, second.text
    for disk in first.disks:
        assert second.fsck.get(disk) == 0, second.text
        assert second.checks.get(disk) == "ok", second.text
        assert second.sums.get(disk) == first.sums[disk], second.text


def test_the_returned_libvirt_disks_validate_inside_a_domain(host: ServeHost, base: Path) -> None:
    names = _create_disks(host, "lvx")
    atts = _attach_all(host, names, "vm-xml")
    targets = [a["libvirt_xml"].split("<target dev='")[1][:3] for a in atts]
    assert targets == ["vda", "vdb", "vdc"]
    domain = base / "domain.xml"
    domain.write_text(_domain_xml("bs-validate", base, atts, "write"))
    got = subprocess.run(
        ["virt-xml-validate", str(domain), "domain"], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, (got.stdout, got.stderr, domain.read_text())


def test_the_qemu_snippet_and_the_uri_open_whatever_the_home_path(
    seaweed: SeaweedServer, base: Path
) -> None:
    """QEMU's option syntax ends a value at a comma unless it is doubled, and a URI needs a space
    or a % percent-encoded: a home's path may hold any of them."""
    host = _host(seaweed, base / "vms,1 100%" / "home")
    try:
        host.ok("POST", "/v1/disks", {"name": "comma", "size_bytes": 1 << 20, "kind": "data"})
        att = host.ok("POST", "/v1/disks/comma/attach", {"vm": "vm-comma"})
        for how in (["--image-opts", att["qemu_blockdev"]], [att["nbd_uri"]]):
            got = subprocess.run(
                ["qemu-img", "info", *how], capture_output=True, text=True, timeout=60
            )
            assert got.returncode == 0 and "virtual size: 1 MiB" in got.stdout, (how, got)
    finally:
        host.stop()


@pytest.mark.slow
def test_a_qemu_guest_makes_ext4_and_a_vm_on_another_host_verifies_every_file(
    seaweed: SeaweedServer, base: Path, image: GuestImage
) -> None:
    """The second VM runs on a second host over the same bucket, so what it reads came from the
    store, not from the first host's cache (the OS disk's caching is readwrite)."""
    prefix = _prefix()
    first_host = _host(seaweed, base / "host-a", prefix=prefix)
    second_host: ServeHost | None = None
    try:
        names = _create_disks(first_host, "qg")
        atts = _attach_all(first_host, names, "vm-one")
        nodes = [_node_name(a["qemu_blockdev"]) for a in atts]
        assert len(set(nodes)) == 3 and all(len(n) <= 31 for n in nodes), nodes

        t0 = time.monotonic()
        first = _boot_qemu(image, atts, "write")
        t1 = time.monotonic()
        _assert_written(first, ["d0", "d1", "d2"])
        for name in names:
            first_host.ok("POST", f"/v1/disks/{name}/detach", {})
        first_host.stop()

        second_host = _host(seaweed, base / "host-b", prefix=prefix)
        second_atts = _attach_all(second_host, names, "vm-two")
        t2 = time.monotonic()
        second = _boot_qemu(image, second_atts, "verify")
        t3 = time.monotonic()
        _assert_verified(first, second)
        print(f"qemu guest: write boot {t1 - t0:.1f} s, verify boot {t3 - t2:.1f} s")
    finally:
        first_host.stop()
        if second_host is not None:
            second_host.stop()


# --- libvirt ---------------------------------------------------------------------------------


def _domain_xml(name: str, base: Path, atts: list[dict[str, Any]], mode: str) -> str:
    disks = "\n".join(a["libvirt_xml"] for a in atts)  # unchanged
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{base}/vmlinuz</kernel>
    <initrd>{base}/initramfs.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet bsguest={mode} bsdisks={len(atts)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}
    <serial type='file'>
      <source path='{base}/console-{mode}.log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    got = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": SYSTEM_PATH},
    )
    assert not check or got.returncode == 0, (args, got.stdout, got.stderr)
    return got


def _libvirt_up() -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(LIBVIRT_SOCK))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[None]:
    """A running libvirtd: the machine's, or one started here (as root, without systemd) and
    stopped after."""
    started: list[subprocess.Popen[bytes]] = []
    if not _libvirt_up():
        logs = Path(tempfile.mkdtemp(prefix="bs-libvirtd-"))
        env = {"PATH": SYSTEM_PATH, "LANG": "C"}
        for daemon in ("virtlogd", "libvirtd"):
            with open(logs / f"{daemon}.log", "ab") as log:
                started.append(
                    subprocess.Popen([f"/usr/sbin/{daemon}"], env=env, stdout=log, stderr=log)
                )
            time.sleep(0.5)
        wait_for(_libvirt_up, 30, "libvirtd's socket")
    yield
    for proc in reversed(started):
        proc.terminate()
        proc.wait(30)


def _run_domain(name: str, base: Path, atts: list[dict[str, Any]], mode: str) -> Console:
    xml = base / f"{name}.xml"
    xml.write_text(_domain_xml(name, base, atts, mode))
    _virsh("define", str(xml))
    try:
        _virsh("start", name)
        live = _virsh("dumpxml", name, check=False).stdout
        if "<seclabel" in live:  # still running: QEMU's DAC label is libvirt-qemu's uid:gid
            uid = subprocess.run(["id", "-u", "libvirt-qemu"], capture_output=True, text=True)
            assert f"<label>+{uid.stdout.strip()}:" in live, live
            print(f"libvirt runs QEMU as {live.split('<label>')[1].split('<')[0]}")
        wait_for(
            lambda: "shut off" in _virsh("domstate", name, check=False).stdout,
            BOOT_TIMEOUT,
            f"domain {name} to power off",
            step=0.5,
        )
    finally:
        _virsh("destroy", name, check=False)
        _virsh("undefine", name, check=False)
    return parse_console((base / f"console-{mode}.log").read_text(errors="replace"))


def _kernel_for_libvirt(image: GuestImage, base: Path) -> None:
    shutil.copy(image.kernel, base / "vmlinuz")
    shutil.copy(image.initramfs, base / "initramfs.gz")


@pytest.mark.slow
def test_libvirt_as_installed_boots_a_guest_on_the_returned_disks(
    seaweed: SeaweedServer, base: Path, image: GuestImage, libvirtd: None
) -> None:
    """QEMU runs as Debian's default `libvirt-qemu`; the socket group lets it in."""
    _kernel_for_libvirt(image, base)
    host = _host(seaweed, base / "home", group="libvirt-qemu")
    try:
        names = _create_disks(host, "lv")
        atts = _attach_all(host, names, "vm-lv")
        t0 = time.monotonic()
        first = _run_domain(f"bs-guest-{os.getpid()}", base, atts, "write")
        t1 = time.monotonic()
        # No serial in libvirt's XML: the guest names each disk by its target (vda, vdb, vdc).
        _assert_written(first, ["vda", "vdb", "vdc"])
        assert first.done == "ok", first.text
        second = _run_domain(f"bs-guest-{os.getpid()}", base, atts, "verify")
        t2 = time.monotonic()
        _assert_verified(first, second)
        print(f"libvirt guest: write boot {t1 - t0:.1f} s, verify boot {t2 - t1:.1f} s")
    finally:
        host.stop()


@pytest.mark.slow
def test_libvirt_without_the_socket_group_is_denied(
    seaweed: SeaweedServer, base: Path, image: GuestImage, libvirtd: None
) -> None:
    _kernel_for_libvirt(image, base)
    host = _host(seaweed, base / "home")
    try:
        body = {"name": "lv-nogroup", "size_bytes": DISK_BYTES, "kind": "data"}
        host.ok("POST", "/v1/disks", body)
        atts = _attach_all(host, ["lv-nogroup"], "vm-nogroup")
        name = f"bs-nogroup-{os.getpid()}"
        xml = base / f"{name}.xml"
        xml.write_text(_domain_xml(name, base, atts, "write"))
        _virsh("define", str(xml))
        try:
            got = _virsh("start", name, check=False)
        finally:
            _virsh("destroy", name, check=False)
            _virsh("undefine", name, check=False)
        assert got.returncode != 0 and "Permission denied" in got.stderr, (got.stdout, got.stderr)
        print(f"libvirt without the socket group: {got.stderr.strip()}")
    finally:
        host.stop()


@pytest.mark.slow
def test_libvirt_hot_plugs_a_returned_disk_and_blockstore_refuses_to_detach_it_in_use(
    seaweed: SeaweedServer, base: Path, image: GuestImage, libvirtd: None
) -> None:
    """`virsh attach-device --live` with `libvirt_xml` as returned: QEMU (as libvirt-qemu)
    connects; a detach while it is connected is refused (409); after the VM stops it succeeds."""
    _kernel_for_libvirt(image, base)
    host = _host(seaweed, base / "home", group="libvirt-qemu")
    name = f"bs-hotplug-{os.getpid()}"
    try:
        host.ok("POST", "/v1/disks", {"name": "lv-hot", "size_bytes": DISK_BYTES, "kind": "data"})
        xml = base / f"{name}.xml"
        xml.write_text(_domain_xml(name, base, [], "verify"))
        _virsh("define", str(xml))
        _virsh("start", name, "--paused")  # a paused guest takes devices; it never runs here
        att = host.ok("POST", "/v1/disks/lv-hot/attach", {"vm": name})
        disk = base / "hot-disk.xml"
        disk.write_text(att["libvirt_xml"])
        _virsh("attach-device", name, str(disk), "--live")
        assert "lv-hot" in _virsh("domblklist", name).stdout
        status, body = host.call("POST", "/v1/disks/lv-hot/detach", {})
        assert status == 409, (status, body)
        _virsh("destroy", name)
        wait_for(
            lambda: host.call("POST", "/v1/disks/lv-hot/detach", {})[0] == 200,
            30,
            "the detach once QEMU has gone",
            step=0.5,
        )
    finally:
        _virsh("destroy", name, check=False)
        _virsh("undefine", name, check=False)
        host.stop()
