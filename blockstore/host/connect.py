"""How a hypervisor connects to an export: the NBD URI, QEMU's -blockdev, libvirt's <disk> XML.

Place: `ExportSupervisor.details` returns these for every attach (and the control plane notes
them in the disk record). Pure string building from the disk name and the socket path: every
valid disk name and every home path (spaces, commas, `%`, quotes) must give strings that libnbd,
QEMU and libvirt accept as they are. Also who may reach the sockets (`restrict_run_dir`) and
the service's own NBD connection to an export (`nbd_connection`: flush, resize).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from blockstore.errors import Unavailable

QEMU_NODE_NAME_MAX = 31  # QEMU refuses longer node names ("Node name too long")


def qemu_node_name(disk_name: str) -> str:
    """A QEMU node name for the disk: `bs-<name>`, or, when that is too long, a prefix of the
    name and a hash of all of it, so that every valid disk name (up to 63 characters) gives a
    valid node name (a letter first, at most 31 characters) and different disks differ."""
    node = f"bs-{disk_name}"
    if len(node) <= QEMU_NODE_NAME_MAX:
        return node
    digest = hashlib.blake2s(disk_name.encode(), digest_size=4).hexdigest()
    return f"{node[: QEMU_NODE_NAME_MAX - len(digest) - 1]}-{digest}"


def libvirt_disk_xml(name: str, sock: Path, target: str) -> str:
    return (
        "<disk type='network' device='disk'>\n"
        "  <driver name='qemu' type='raw' cache='none' discard='unmap'/>\n"
        f"  <source protocol='nbd' name={quoteattr(name)}>\n"
        f"    <host transport='unix' socket={quoteattr(str(sock))}/>\n"
        "  </source>\n"
        f"  <target dev='{target}' bus='virtio'/>\n"
        "</disk>"
    )


def connection_details(name: str, sock: Path, target: str) -> dict[str, str]:
    """The ways to reach export `name` on `sock`, as the attach API returns them; `target` is
    the guest device (vda, vdb...)."""
    node = qemu_node_name(name)
    return {
        # A URI: a space or % in the home's path must be percent-encoded (libnbd and QEMU
        # refuse the URI otherwise).
        "nbd_uri": f"nbd+unix:///{name}?socket={quote(str(sock), safe='/')}",
        "socket": str(sock),
        "export": name,
        # QEMU's option syntax ends a value at a comma unless it is doubled (disk names have
        # none; a home's path may).
        "qemu_blockdev": (
            "driver=nbd,server.type=unix,"
            f"server.path={str(sock).replace(',', ',,')},export={name},node-name={node}"
        ),
        "qemu_node_name": node,  # what -device virtio-blk-pci,drive= names
        "libvirt_xml": libvirt_disk_xml(name, sock, target),
    }


def restrict_run_dir(home: Path, run_dir: Path, group: int | None) -> None:
    """The home is the service's alone (0700). With a socket group, the group may pass through
    the home (0710) and the run directory (02710: sockets made in it take its group) to reach a
    socket, but may not list either, nor read anything else."""
    if group is None:
        os.chmod(home, 0o700)
        os.chmod(run_dir, 0o700)
        return
    os.chown(home, -1, group)
    os.chmod(home, 0o710)
    os.chown(run_dir, -1, group)
    os.chmod(run_dir, 0o2710)


@contextmanager
def nbd_connection(socket: Path, name: str, doing: str) -> Iterator[Any]:
    """A libnbd connection to one of our exports (Debian's python3-libnbd)."""
    import nbd

    handle = nbd.NBD()
    try:
        handle.connect_unix(str(socket))
        yield handle
        handle.shutdown()
    except nbd.Error as exc:
        raise Unavailable(f"{doing} disk {name!r} through its export failed: {exc}") from exc
