"""A tiny Linux guest for tests: a Debian kernel and an initramfs with busybox and mke2fs.

Everything comes from Debian packages fetched with `apt-get download` (the kernel package named by
`linux-image-cloud-amd64`, and `busybox-static`) and from the host's e2fsprogs (`mke2fs`, `e2fsck`
and the libraries `ldd` names). Both are cached under `guest_cache_dir()`; the initramfs is rebuilt
only when this file changes. The guest's `/init` acts on every virtio disk it sees, according to the
kernel command line's `bsguest=`:

- `write`: mkfs.ext4, write files of random bytes, print their sha256, unmount, sync;
- `verify`: e2fsck -fn, mount, check every file against the sums written inside the disk, print
  the sums again (the test compares them with the first boot's);

then it powers off. A third mode acts on the first disk only and runs until the VM is stopped:

- `stream`: write numbered 4 KiB records to the raw disk, record i at offset i * 4096 holding
  `record(i)`, each with `dd conv=fsync` (a flush: durable once dd returns), and print
  `ack i` after each; a write that fails prints `FAIL write i`. The test reading the console
  knows which writes the guest saw acknowledged, across live migrations (the serial device's
  state travels with the guest, so the consoles of successive QEMU processes concatenate).
  The guest powers off when the disk is full (records never wrap).

Everything it reports goes to the serial console as lines starting `BSGUEST `, read by
`parse_console()`. A disk is named by its virtio serial when it has one, else by its kernel name
(vdb...).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import REPO

KERNEL_META = "linux-image-cloud-amd64"
# Loaded in this order (dependencies first, as computed from each module's own `depends=`).
WANTED_MODULES = ("virtio_pci", "virtio_blk")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin  # e2fsprogs in /sbin before busybox applets of the same name
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "BSGUEST $*"; }
finish() { sync; say "done $1"; poweroff -f; sleep 30; }
arg() { for w in $(cat /proc/cmdline); do case $w in "$1"=*) echo "${w#*=}";; esac; done; }
mode=$(arg bsguest); want=$(arg bsdisks)
say "boot mode=$mode kernel=$(uname -r)"
for m in $(cat /modules.load); do insmod "/lib/modules/$m" || say "FAIL insmod $m"; done
i=0
while [ "$(ls -d /sys/block/vd* 2>/dev/null | wc -l)" -lt "${want:-1}" ] && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i+1))
done
stream() {  # bsguest=stream: numbered records on the raw disk $1 (record() in Python)
    n=$(( $(cat "/sys/block/$1/size") / 8 )); i=0
    say "stream $1 $n"
    while [ $i -lt $n ]; do
        if yes "BSREC $(printf %08d $i)" | head -c 4096 | dd of="/dev/$1" bs=4096 seek=$i \
                count=1 iflag=fullblock conv=fsync,notrunc 2>/tmp/dd.log; then
            say "ack $i"
        else
            cat /tmp/dd.log; say "FAIL write $i"
        fi
        i=$((i+1))
    done
    finish full
}
[ "$mode" = stream ] && stream vda
status=ok
for dev in /sys/block/vd*; do
    [ -e "$dev" ] || continue
    name=${dev##*/}
    id=$(cat "$dev/serial" 2>/dev/null); [ -n "$id" ] || id=$name
    say "disk $name $id $(cat "$dev/size")"
    mkdir -p "/mnt/$id"
    if [ "$mode" = write ]; then
        if ! /sbin/mke2fs -q -F -t ext4 "/dev/$name" >/tmp/mkfs.log 2>&1; then
            cat /tmp/mkfs.log; say "FAIL mkfs $id"; status=fail; continue
        fi
        mount -t ext4 "/dev/$name" "/mnt/$id" || { say "FAIL mount $id"; status=fail; continue; }
        n=1
        for kib in 4 64 1024; do
            dd if=/dev/urandom of="/mnt/$id/file$n" bs=1024 count=$kib 2>/dev/null
            n=$((n+1))
        done
        (cd "/mnt/$id" && sha256sum file* > SHA256SUMS)
    else
        /sbin/e2fsck -fn "/dev/$name" >/tmp/fsck.log 2>&1
        rc=$?; say "fsck $id $rc"; [ $rc -eq 0 ] || { cat /tmp/fsck.log; status=fail; }
        if ! mount -t ext4 -o ro "/dev/$name" "/mnt/$id"; then
            say "FAIL mount $id"; status=fail; continue
        fi
        if (cd "/mnt/$id" && sha256sum -c SHA256SUMS >/tmp/check.log 2>&1); then
            say "check $id ok"
        else
            cat /tmp/check.log; say "check $id FAIL"; status=fail
        fi
    fi
    while read -r sum file; do say "sum $id $file $sum"; done < "/mnt/$id/SHA256SUMS"
    umount "/mnt/$id" || { say "FAIL umount $id"; status=fail; }
done
finish $status
"""


def guest_cache_dir() -> Path:
    """Where fetched packages and built images live (git-ignored); BLOCKSTORE_GUEST_CACHE moves
    it."""
    return Path(os.environ.get("BLOCKSTORE_GUEST_CACHE", REPO / "tests" / "data" / "guest-cache"))


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    kernel_version: str


def build_guest_image(cache: Path | None = None) -> GuestImage:
    """The kernel and initramfs, fetched and built on first use, then taken from the cache."""
    cache = cache or guest_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    kernel_deb = _kernel_deb(cache)
    busybox_deb = _fetch(cache, "busybox-static")
    root = cache / "root"
    if not (root / "boot").is_dir():
        tmp = cache / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for deb in (kernel_deb, busybox_deb):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    version = vmlinuz.name.removeprefix("vmlinuz-")
    stamp = hashlib.sha256(Path(__file__).read_bytes() + version.encode()).hexdigest()[:16]
    initramfs = cache / f"initramfs-{stamp}.cpio.gz"
    if not initramfs.exists():
        for old in cache.glob("initramfs-*.cpio.gz"):
            old.unlink()
        data = _initramfs(root, version)
        tmp_file = initramfs.with_suffix(".tmp")
        tmp_file.write_bytes(data)
        tmp_file.rename(initramfs)
    return GuestImage(vmlinuz, initramfs, version)


def _fetch(cache: Path, package: str) -> Path:
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        # apt's sandbox user must be able to write here, or apt warns and downloads as root.
        subprocess.run(
            ["apt-get", "download", "-q", package], cwd=cache, check=True, capture_output=True
        )
        found = sorted(cache.glob(f"{package}_*.deb"))
    return found[-1]


def _kernel_deb(cache: Path) -> Path:
    meta = _fetch(cache, KERNEL_META)
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(meta), "Depends"], check=True, capture_output=True, text=True
    ).stdout
    image = next(d.split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-"))
    return _fetch(cache, image.strip())


def _module_depends(ko: Path) -> list[str]:
    """A module's dependencies as its .modinfo names them (what depmod writes to modules.dep)."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def _modules_in_order(moddir: Path) -> list[Path]:
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = by_name[name.replace("-", "_")]
        if path in order:
            return
        for dep in _module_depends(path):
            visit(dep)
        order.append(path)

    for name in WANTED_MODULES:
        visit(name)
    return order


def _libraries(binary: str) -> list[Path]:
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    return [Path(p) for p in re.findall(r"(/\S+) \(0x", out)]


def _initramfs(root: Path, version: str) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "sbin", "dev", "proc", "sys", "mnt", "tmp", "etc", "lib", "lib/modules"):
        cpio.dir(d)
    cpio.file("bin/busybox", (root / "bin" / "busybox").read_bytes(), 0o755)
    cpio.file("init", INIT.encode(), 0o755)
    modules = _modules_in_order(root / "lib" / "modules" / version)
    for ko in modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes(), 0o644)
    cpio.file("modules.load", "".join(f"{ko.name}\n" for ko in modules).encode(), 0o644)
    # e2fsprogs' mke2fs makes ext4 (busybox's makes ext2 only); its libraries travel along.
    libs: set[Path] = set()
    for tool in ("mke2fs", "e2fsck"):
        binary = shutil.which(tool, path="/usr/sbin:/sbin") or f"/sbin/{tool}"
        cpio.file(f"sbin/{tool}", Path(binary).read_bytes(), 0o755)
        libs.update(_libraries(binary))
    for lib in sorted(libs):
        for parent in reversed(lib.parents[:-1]):
            cpio.dir(str(parent).lstrip("/"))
        cpio.file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)
    cpio.file("etc/mke2fs.conf", Path("/etc/mke2fs.conf").read_bytes(), 0o644)
    return gzip.compress(cpio.finish(), compresslevel=6)


@dataclass
class _Cpio:
    """The `newc` cpio format the kernel unpacks an initramfs from."""

    out: io.BytesIO = field(default_factory=io.BytesIO)
    seen: set[str] = field(default_factory=set)
    ino: int = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.out.write(name.encode() + b"\0")
        self.out.write(b"\0" * (-self.out.tell() % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def dir(self, name: str) -> None:
        if name and name not in self.seen:
            self.seen.add(name)
            self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, perm: int) -> None:
        if name not in self.seen:
            self.seen.add(name)
            self._entry(name, 0o100000 | perm, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self.out.getvalue()


RECORD_BYTES = 4096


def record(i: int) -> bytes:
    """What `bsguest=stream` writes as record `i`: `yes "BSREC %08d" | head -c 4096`."""
    line = b"BSREC %08d\n" % i
    return (line * (RECORD_BYTES // len(line) + 1))[:RECORD_BYTES]


@dataclass
class Console:
    """What one boot reported: disks seen, sums per disk, checks, and the final status."""

    text: str
    disks: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (kernel name, sectors)
    sums: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> file -> sha256
    checks: dict[str, str] = field(default_factory=dict)  # id -> ok | FAIL
    fsck: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    done: str | None = None


def parse_console(text: str) -> Console:
    c = Console(text)
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) < 2 or words[0] != "BSGUEST":
            continue
        kind, rest = words[1], words[2:]
        if kind == "disk" and len(rest) == 3:
            c.disks[rest[1]] = (rest[0], int(rest[2]))
        elif kind == "sum" and len(rest) == 3:
            c.sums.setdefault(rest[0], {})[rest[1]] = rest[2]
        elif kind == "check" and len(rest) == 2:
            c.checks[rest[0]] = rest[1]
        elif kind == "fsck" and len(rest) == 2:
            c.fsck[rest[0]] = int(rest[1])
        elif kind == "FAIL":
            c.failures.append(" ".join(rest))
        elif kind == "done" and rest:
            c.done = rest[0]
    return c
