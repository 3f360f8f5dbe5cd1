"""Start and stop nbdkit serving one disk on a Unix socket (the export of an attached disk).

Place: the control plane supervises one `Export` per attached disk; the NBD tests and the bench
use it too. nbdkit runs our plugin (`nbd_plugin/plugin.py`) in its embedded Python, which takes
the first `python3` on PATH as its home (DESIGN.md): the launcher puts the project's virtualenv
`bin/` first so that interpreter finds blockstore's dependencies, and the repository on
PYTHONPATH. S3 credentials go to the child in its environment, never on its command line, so
they do not show in `ps`.

Failure behaviour: `start()` returns once the socket accepts connections (the plugin has opened
the volume and replayed any journal by then), or raises `Unavailable` with the tail of nbdkit's
log if it exits or does not get there in time. `stop()` sends SIGTERM (nbdkit's cleanup uploads
what is dirty), waits, then SIGKILL. `kill()` is SIGKILL at once, as a crash (tests).

What the plugin is given (parameters, environment) is spelled by `host/contract.py`, which the
plugin imports too. `EphemeralExport` serves a resource disk with nbdkit's C `file` plugin.

One socket path serves one export at a time: `start()` takes the path over, and `stop()` and
`kill()` remove the socket only if it is still the one this export's nbdkit created, so an
export that stops late never takes away the socket of the export that replaced it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from blockstore.errors import InvalidArgument, Unavailable
from blockstore.host import contract
from blockstore.host.process import ChildProcess
from blockstore.store.s3 import S3Config

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "nbd_plugin" / "plugin.py"


@dataclass(frozen=True)
class ExportConfig:
    """How to serve one disk. Sizes are nbdkit size strings ("1G", "64K") or bytes."""

    disk_id: str
    socket: Path
    s3: S3Config
    cache_mode: str = "none"
    cache_dir: Path | None = None
    cache_size: str = "1G"
    cache_block: str = "64K"
    dirty_limit: str = "256M"
    readahead: str = "1M"
    # readwrite: writes no flush asked for are sent once the oldest is this old (seconds) or
    # this much waits (a size); until then a flush sends them, one PUT (cache/settings.py).
    upload_after: float = 1.0
    upload_batch: str = "4M"
    retry_seconds: float = 30.0
    request_timeout: float | None = None  # one S3 request (connect and read); None: S3Config's
    write_wait_seconds: float = 30.0
    readonly: bool = False
    epoch: int | None = None  # writer epoch issued by the control plane; None: the next free one
    fence_check_seconds: float = 1.0  # how often the plugin looks for a newer writer
    # A live migration's destination: hold I/O until the service hands over an epoch
    # (nbd_plugin/incoming.py, `contract.Activation` next to the socket).
    incoming: bool = False
    # Whether a group may connect to the socket (the hypervisor's, e.g. libvirt-qemu's): it is
    # made in a setgid run directory of that group, and opened to the group once it accepts.
    socket_group: bool = False
    threads: int = 16
    nbdkit: str = "nbdkit"
    verbose: bool = False
    exit_with_parent: bool = True  # tests: nbdkit dies with the test process
    filters: tuple[str, ...] = ()
    log_path: Path | None = None  # nbdkit's stderr; default: next to the socket
    extra_env: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the S3Config repr already hides secrets
        return f"ExportConfig(disk_id={self.disk_id!r}, socket={str(self.socket)!r}, ...)"


# glibc's malloc, tuned for nbdkit's 1 MiB request buffers: by default a freed buffer goes back
# to the kernel and the next request faults in and zeroes fresh pages (clear_page was 9% of
# nbdkit's CPU on 1 MiB writes). Buffers up to 8 MiB come from the heap, which keeps up to
# 32 MiB free; two arenas bound what a process keeps (the interpreter lock serialises most
# allocations anyway). The caller's environment wins.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(8 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(32 << 20),
    "MALLOC_ARENA_MAX": "2",
}


def venv_bin() -> Path | None:
    """The virtualenv this process runs in, if any (its python3 becomes nbdkit's home)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    candidate = REPO / ".venv" / "bin"
    return candidate if candidate.is_dir() else None


def activate(export: Export, epoch: int, timeout: float) -> None:
    """Hand an incoming export its writer epoch and wait until it serves with it (its stats
    file says so); Unavailable if it dies or does not get there within `timeout`."""
    contract.Activation(export.config.socket).answer(epoch)
    stats = contract.stats_path(export.config.socket)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if contract.read_fence(stats) == (False, epoch):
            return
        if not export.running:
            break
        time.sleep(0.002)
    raise Unavailable(
        f"the incoming export of disk {export.config.disk_id} did not take epoch {epoch}: "
        f"{export.log_tail()}"
    )


class Export(ChildProcess):
    """One nbdkit process serving one disk."""

    def __init__(self, config: ExportConfig) -> None:
        if config.cache_mode != "none" and config.cache_dir is None:
            raise InvalidArgument(f"cache mode {config.cache_mode} needs a cache directory")
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.log_path or Path(f"{config.socket}.log")
        self._socket_ino: int | None = None  # the socket our nbdkit bound, once it accepts
        # The disk's record names another holder now (control/holders.py): to be stopped.
        self.disowned = False

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.config.socket}"

    def _nbdkit_options(self) -> list[str]:
        c = self.config
        cmd = [c.nbdkit, "--foreground", "--unix", str(c.socket), "--threads", str(c.threads)]
        if c.exit_with_parent:
            cmd.append("--exit-with-parent")
        return cmd

    def command(self) -> list[str]:
        c = self.config
        cmd = self._nbdkit_options()
        if c.verbose:
            cmd.append("--verbose")
        if c.readonly:
            cmd.append("--readonly")
        for f in c.filters:
            cmd += ["--filter", f]
        return [*cmd, "python", str(PLUGIN), *contract.plugin_args(self._plugin_params())]

    def _plugin_params(self) -> dict[str, str | None]:
        c = self.config
        params: dict[str, str | None] = {
            "disk": c.disk_id,
            "endpoint": c.s3.endpoint,
            "bucket": c.s3.bucket,
            "region": c.s3.region,
            "prefix": c.s3.prefix,
            "cache": c.cache_mode,
            "retry-seconds": f"{c.retry_seconds:g}",
            "write-wait": f"{c.write_wait_seconds:g}",
            "readonly": str(c.readonly).lower(),
            "request-timeout": None if c.request_timeout is None else f"{c.request_timeout:g}",
            "epoch": None if c.epoch is None else str(c.epoch),
            "fence-check": f"{c.fence_check_seconds:g}",
            "incoming": str(c.incoming).lower(),
        }
        if c.cache_dir is not None:
            params["cache-dir"] = str(c.cache_dir)
            params["cache-size"] = c.cache_size
            params["cache-block"] = c.cache_block
            params["dirty-limit"] = c.dirty_limit
            params["readahead"] = c.readahead
            params["upload-after"] = f"{c.upload_after:g}"
            params["upload-batch"] = c.upload_batch
        return params

    def environment(self) -> dict[str, str]:
        env = {**MALLOC_ENV, **os.environ}
        vbin = venv_bin()
        if vbin is not None:
            env["PATH"] = f"{vbin}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONPATH"] = str(REPO)
        env.update(contract.credentials_env(self.config.s3))
        env.update(self.config.extra_env)
        env[contract.ENV_FREEZE] = str(self.config.socket)
        if self.config.incoming:
            env[contract.ENV_ACTIVATION] = str(self.config.socket)
        return env

    def start(self, timeout: float = 60.0) -> Export:
        """Launch nbdkit and return once its socket accepts a connection."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start nbdkit. With `exit_with_parent`, from a thread that lives as long as the
        service: Linux ties the child's parent-death signal to the thread that forked it."""
        sock = self.config.socket
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 60.0) -> Export:
        """Return once the launched nbdkit's socket accepts a connection (it has opened the
        disk, replayed any journal, and taken its epoch)."""
        assert self.process is not None, "launch() first"
        sock = self.config.socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(
                    f"nbdkit for disk {self.config.disk_id} exited with "
                    f"{self.process.returncode}: {self.log_tail()}"
                )
            if sock.exists() and _accepts(sock):
                self._socket_ino = _inode(sock)
                if self.config.socket_group:
                    # nbdkit makes it 0755 whatever the umask; the setgid run directory gave it
                    # the group, which may now connect. Others cannot reach the directory.
                    os.chmod(sock, 0o660)
                return self
            time.sleep(0.02)
        self.kill()
        raise Unavailable(f"nbdkit for disk {self.config.disk_id} did not start: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (nbdkit uploads dirty data in cleanup), wait, then SIGKILL. Returns the
        exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._unlink_socket()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL now, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._unlink_socket()

    def _unlink_socket(self) -> None:
        """Remove the socket if it is still ours (not one a later export bound since)."""
        if self._socket_ino is not None and _inode(self.config.socket) == self._socket_ino:
            self.config.socket.unlink(missing_ok=True)
        self._socket_ino = None

    def clients(self) -> int:
        """NBD clients connected now: the accepted connections of our socket
        (/proc/net/unix lists each under the listening socket's path, state 03)."""
        if self._socket_ino is None or not self.running:
            return 0
        return connected_clients(self.config.socket)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Export:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EphemeralExport(Export):
    """nbdkit's C `file` plugin on a local sparse file: the resource disk."""

    def __init__(self, config: ExportConfig, image: Path) -> None:
        super().__init__(config)
        self.image = image

    @classmethod
    def over(cls, config: ExportConfig, image: Path, size_bytes: int) -> EphemeralExport:
        """An export of the image, made (sparse, the owner's alone: the guest's bytes) or
        grown to `size_bytes` first; empty on a host that does not hold the disk."""
        image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as f:
            os.fchmod(fd, 0o600)
            if f.tell() < size_bytes:
                f.truncate(size_bytes)
        return cls(config, image)

    def command(self) -> list[str]:
        return [*self._nbdkit_options(), "file", f"file={self.image}", "cache=none"]


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def connected_clients(path: Path) -> int:
    """Connected (state 03) Unix sockets bound to `path`, but the listener: the connections a
    server at `path` has accepted and not closed."""
    want = str(path)
    n = 0
    with open("/proc/net/unix") as f:
        next(f)  # header
        for line in f:
            parts = line.split(None, 7)
            if len(parts) == 8 and parts[7].rstrip("\n") == want and parts[5] == "03":
                n += 1
    return n


def _accepts(path: Path) -> bool:
    """Whether nbdkit greets a connection. The socket is bound before the plugin's after_fork
    (volume open, journal replay) runs, but the greeting is sent only once that is done."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(str(path))
        return s.recv(8) == b"NBDMAGIC"
    except OSError:
        return False
    finally:
        s.close()


def start_export(config: ExportConfig, timeout: float = 60.0) -> Export:
    """Start nbdkit for `config.disk_id` and return the running `Export`."""
    return Export(config).start(timeout)
