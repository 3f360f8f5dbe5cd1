"""`<home>/service.json`: where the running service listens, for the CLI on the same host;
`<home>/service.lock`: one service per home.

The contract between `blockstore serve` (the writer) and the CLI (the reader), defined once:

    {"url": "http://127.0.0.1:8471", "pid": 12345, "pid_started": 987654, "version": "0.1.0"}

The service writes it at start (mode 0600, replaced atomically) and removes it at a clean stop.
A service that was killed leaves it behind: the reader then finds the pid gone (or reused by
another process: `pid_started`, the process's start time in clock ticks since boot from
/proc/<pid>/stat, no longer matches) and ignores the file with a notice saying so.

Two services on one home would be one host twice (the same host id, the same sockets and
caches), each serving the disks attached "here". So the service holds an exclusive `flock` on
`service.lock` for its whole life; the kernel drops it when the process ends, `kill -9`
included, so a dead service never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import blockstore
from blockstore.errors import InvalidArgument

FILE_NAME = "service.json"
LOCK_NAME = "service.lock"


@dataclass(frozen=True)
class ServiceRecord:
    url: str
    pid: int
    pid_started: int | None  # None where /proc is not there to tell
    version: str = ""


def path_of(home: Path) -> Path:
    return home / FILE_NAME


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None if it does not exist
    or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces: count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent has not collected it yet
        return None
    return int(fields[19])


def write(home: Path, url: str, pid: int | None = None) -> ServiceRecord:
    """Record that the service `pid` (default: this process) listens on `url`."""
    pid = os.getpid() if pid is None else pid
    record = ServiceRecord(url, pid, process_start(pid), blockstore.__version__)
    target = path_of(home)
    tmp = target.with_name(f".{FILE_NAME}.{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
        f.write("\n")
    os.chmod(tmp, 0o600)  # whatever the umask made of it
    os.replace(tmp, target)
    return record


def remove(home: Path, pid: int | None = None) -> None:
    """Remove the record if it is `pid`'s (a newer service's record is left alone)."""
    pid = os.getpid() if pid is None else pid
    found = read(home)
    if isinstance(found, ServiceRecord) and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path_of(home).unlink()


def read(home: Path) -> ServiceRecord | str | None:
    """The record; None if there is none; a notice (str) if it is unreadable."""
    path = path_of(home)
    try:
        raw = json.loads(path.read_text())
        return ServiceRecord(
            url=str(raw["url"]),
            pid=int(raw["pid"]),
            pid_started=None if raw.get("pid_started") is None else int(raw["pid_started"]),
            version=str(raw.get("version", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"ignoring {path}: unreadable ({exc})"


def running(record: ServiceRecord) -> bool:
    """Whether the process that wrote `record` still runs."""
    started = process_start(record.pid)
    if started is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: whether the pid exists at all
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return record.pid_started is None or started == record.pid_started


def find(home: Path) -> tuple[str | None, str | None]:
    """(URL of the service running with this home or None, a notice for the user or None)."""
    record = read(home)
    if record is None:
        return None, None
    if isinstance(record, str):
        return None, record
    if not running(record):
        return None, (
            f"ignoring {path_of(home)}: the service that wrote it (pid {record.pid}, "
            f"{record.url}) is not running any more"
        )
    return record.url, None


def claim(home: Path) -> int:
    """Take the home for this process: an exclusive lock on `<home>/service.lock`, held
    until the returned descriptor is closed or the process ends. `InvalidArgument` (naming
    the service that runs) when another process holds it."""
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        url, _ = find(home)
        raise InvalidArgument(
            f"another blockstore serve already runs with home {home}"
            + (f" (at {url})" if url else "")
            + ": stop it first, or give this one its own --home"
        ) from None
    return fd
