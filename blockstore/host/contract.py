"""The contract between this service and the nbdkit plugin process it starts, in one place.

Place: both sides import this module. The service side (`host/export.py` builds the command
line and environment, `host/supervisor.py` adds the per-export files) and the plugin side
(`nbd_plugin/plugin.py`, running in nbdkit's embedded Python) never spell a parameter name,
variable name, file name or stats field themselves. It imports nothing outside the standard
library at import time, so the plugin can load it before nbdkit forks.

What crosses the process boundary:

- **Parameters** (``key=value`` after the plugin's path; nbdkit hands them to ``config()``):
  `PARAMETERS` names every one with its default; `plugin_args` writes them.
- **Environment**: the S3 keys (`ENV_ACCESS_KEY`, `ENV_SECRET_KEY`; secrets never go on the
  command line, which `ps` shows), the size-request file (`ENV_SIZE_REQUEST`), the stats file
  (`ENV_STATS_FILE`) and, for a geo-redundant disk, the other region's store (`ENV_REPAIR_*`).
- **Files next to the export's socket**: ``<sock>.size`` (a size to grow to, one decimal
  number), ``<sock>.stats.json`` (`ExportStats`, rewritten atomically every couple of
  seconds) and, for an export started ``incoming=true`` (the destination of a live migration),
  the two `Activation` files. The host cache's own files (the journal) are
  `blockstore.cache.journal`'s.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plugin imports the S3 client only after nbdkit forks (after_fork)
    from blockstore.store.s3 import S3Config

# --- parameters --------------------------------------------------------------------------------

# Every parameter the plugin takes, with its default (None: no default).
PARAMETERS: dict[str, str | None] = {
    "disk": None, "endpoint": None, "bucket": None, "region": "us-east-1", "prefix": "",
    "credentials": None, "cache": "none", "cache-dir": None, "cache-size": "1G",
    "cache-block": "64K", "dirty-limit": "256M", "readahead": "1M", "retry-seconds": "30",
    "request-timeout": None, "write-wait": "30", "readonly": "false", "epoch": None,
    "fence-check": "1", "incoming": "false", "upload-after": "1", "upload-batch": "4M",
}  # fmt: skip
REQUIRED = ("disk", "endpoint", "bucket")
TRUE_WORDS = ("true", "1", "yes", "on")  # how a boolean parameter says yes


def plugin_args(params: dict[str, str | None]) -> list[str]:
    """``key=value`` arguments for the plugin, in the order given; None values are left out."""
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"not plugin parameters: {', '.join(sorted(unknown))}")
    return [f"{key}={value}" for key, value in params.items() if value is not None]


def disk_cache_dir(cache_dir: Path, disk: str) -> Path:
    """Where the plugin keeps disk `disk`'s host cache, given ``cache-dir=cache_dir``."""
    return cache_dir / disk


# --- environment -------------------------------------------------------------------------------

ENV_ACCESS_KEY = "BLOCKSTORE_S3_ACCESS_KEY"
ENV_SECRET_KEY = "BLOCKSTORE_S3_SECRET_KEY"
ENV_SIZE_REQUEST = "BLOCKSTORE_SIZE_REQUEST"
ENV_STATS_FILE = "BLOCKSTORE_STATS_FILE"
ENV_ACTIVATION = "BLOCKSTORE_ACTIVATION"  # an incoming export's `Activation` base path
ENV_FREEZE = "BLOCKSTORE_FREEZE"  # the base path of an export's `Freeze` files (its socket)
ENV_QOS_FILE = "BLOCKSTORE_QOS_FILE"  # the disk's caps (`write_qos`), watched while it runs
# Where the local key-encryption keys are (blockstore/crypto/keyring.py `LocalKeyFile`); an
# export unwraps its disk's data key with them (`BLOCKSTORE_KEK`, when set, passes as it is).
ENV_KEK_DIR = "BLOCKSTORE_KEK_DIR"


def kek_dir(home: Path) -> Path:
    """Where a service with home `home` keeps its local key-encryption keys."""
    return home / "kek"


_REPAIR = "BLOCKSTORE_REPAIR_"  # + ENDPOINT, BUCKET, REGION, PREFIX, ACCESS_KEY, SECRET_KEY


def credentials_env(s3: S3Config) -> dict[str, str]:
    return {ENV_ACCESS_KEY: s3.access_key, ENV_SECRET_KEY: s3.secret_key}


def credentials(env: Mapping[str, str], path: str | None) -> tuple[str | None, str | None]:
    """The S3 keys from the environment, overridden by a ``credentials=`` file if given (lines
    ``access_key=...`` and ``secret_key=...``, or ``KEY=value`` with the environment names)."""
    access, secret = env.get(ENV_ACCESS_KEY), env.get(ENV_SECRET_KEY)
    if path:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition("=")
            name = name.strip().lower().removeprefix("blockstore_s3_")
            if name == "access_key":
                access = value.strip()
            elif name == "secret_key":
                secret = value.strip()
    return access, secret


def repair_env(other: S3Config) -> dict[str, str]:
    """The other region of a grs disk, where read repair fetches segments missing or damaged
    in the region the export serves from."""
    return {
        _REPAIR + "ENDPOINT": other.endpoint,
        _REPAIR + "BUCKET": other.bucket,
        _REPAIR + "REGION": other.region,
        _REPAIR + "PREFIX": other.prefix,
        _REPAIR + "ACCESS_KEY": other.access_key,
        _REPAIR + "SECRET_KEY": other.secret_key,
    }


def repair_config(env: Mapping[str, str], primary: S3Config) -> S3Config | None:
    """The store `repair_env` described, with `primary`'s timeouts; None when there is none."""
    from blockstore.store.s3 import S3Config

    if not env.get(_REPAIR + "ENDPOINT"):
        return None
    return S3Config(
        endpoint=env[_REPAIR + "ENDPOINT"],
        bucket=env.get(_REPAIR + "BUCKET", primary.bucket),
        access_key=env[_REPAIR + "ACCESS_KEY"],
        secret_key=env[_REPAIR + "SECRET_KEY"],
        region=env.get(_REPAIR + "REGION", primary.region),
        prefix=env.get(_REPAIR + "PREFIX", ""),
        connect_timeout=primary.connect_timeout,
        read_timeout=primary.read_timeout,
    )


# --- files next to the socket ------------------------------------------------------------------


def size_request_path(socket: Path) -> Path:
    return socket.with_suffix(".size")


def write_whole(path: Path, data: str | bytes, tmp_suffix: str = ".tmp") -> None:
    """Write a file whole (a temporary file, then rename): whoever reads it reads the old
    contents or the new, never half of them."""
    tmp = path.with_suffix(tmp_suffix)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def write_size_request(path: Path, size: int) -> None:
    write_whole(path, f"{size}\n")


def read_size_request(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stats_path(socket: Path) -> Path:
    return socket.with_suffix(".stats.json")


def qos_path(socket: Path) -> Path:
    return socket.with_suffix(".qos.json")


def write_qos(path: Path, limits: dict[str, Any]) -> None:
    """A disk's caps (`blockstore.host.qos.QosLimits.to_dict`) for its export, written whole
    (rename): the plugin looks at the file a few times a second and applies what it reads."""
    write_whole(path, json.dumps(limits))


def read_qos(path: Path) -> dict[str, Any] | None:
    """The caps in the file, or None without one (or a file not JSON: the export keeps its
    caps rather than dropping them)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Activation:
    """How an incoming export (a live migration's destination) and the service agree on the
    moment it becomes the disk's writer.

    The export serves reads but holds every write, trim, zero and flush until it has an
    answer. On the first of those it asks (``<sock>.wanted``: under QEMU's migration protocol
    the destination writes nothing before the source stopped and flushed); the service, asked
    or told to complete, moves the disk in the record and answers (``<sock>.activate``) with
    the writer epoch it issued, or ``cancel`` when the migration was called off. Both files are
    written whole (rename), so a reader never sees half an answer."""

    base: Path  # the socket path

    CANCEL = "cancel"

    @property
    def wanted_path(self) -> Path:
        return self.base.with_suffix(".wanted")

    @property
    def answer_path(self) -> Path:
        return self.base.with_suffix(".activate")

    def ask(self) -> None:
        self.wanted_path.touch()

    def asked(self) -> bool:
        return self.wanted_path.exists()

    def answer(self, epoch: int | None) -> None:
        """The epoch to serve with, or None: cancelled, fail what is held and serve nothing."""
        write_whole(self.answer_path, self.CANCEL if epoch is None else str(epoch))

    def read_answer(self) -> int | str | None:
        """The epoch, CANCEL, or None while there is no answer yet."""
        try:
            text = self.answer_path.read_text().strip()
        except FileNotFoundError:
            return None
        return self.CANCEL if text == self.CANCEL else int(text)

    def clear(self) -> None:
        for path in (self.wanted_path, self.answer_path):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Freeze:
    """How the service holds an export's writes for the cut of a group snapshot
    (blockstore/control/groups.py) and lets them go again.

    The service writes a token to ``<sock>.freeze``. The export (nbd_plugin/freeze.py) then
    acknowledges no more writes, trims, zeroes or flushes: new ones wait; it waits for those
    in flight, flushes (so a host cache's writes are in the store) and writes the token to
    ``<sock>.frozen``. Removing ``<sock>.freeze`` thaws it. An export frozen longer than
    `MAX_SECONDS` thaws itself, writing ``<sock>.thawed`` before it lets a write through, so
    a service that finds that file knows its cut may hold later writes. Files are written whole
    (rename)."""

    base: Path  # the socket path

    MAX_SECONDS = 10.0  # an export thaws itself after this long frozen
    # How often an export looks for a request when nobody rings (`ring`): a request whose ring
    # was lost still gets its answer. An export woken ten times a second cost a hundred idle
    # disks a third of a core in wake-ups (issue #21); the bell costs nothing while idle.
    POLL_SECONDS = 2.0
    HOLD_POLL_SECONDS = 0.02  # while frozen: how often the export looks for the thaw

    @property
    def request_path(self) -> Path:
        return self.base.with_suffix(".freeze")

    @property
    def bell_path(self) -> Path:
        """A FIFO the export waits on; the service writes a byte to it after a request."""
        return self.base.with_suffix(".freeze-bell")

    def ring(self) -> None:
        """Wake the export's freezer now (no reader, or no FIFO: it finds the request at its
        next poll)."""
        try:
            fd = os.open(self.bell_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.write(fd, b"!")
        except OSError:
            pass  # the pipe is full: a ring is waiting to be read already
        finally:
            os.close(fd)

    @property
    def frozen_path(self) -> Path:
        return self.base.with_suffix(".frozen")

    @property
    def thawed_path(self) -> Path:
        return self.base.with_suffix(".thawed")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        write_whole(path, text, ".tmp-freeze")

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    # The service's side.
    def ask(self, token: str) -> None:
        self.thawed_path.unlink(missing_ok=True)
        self._write(self.request_path, token)
        self.ring()

    def is_frozen(self, token: str) -> bool:
        return self._read(self.frozen_path) == token

    def thaw(self) -> None:
        self.request_path.unlink(missing_ok=True)

    def thawed_early(self) -> bool:
        return self.thawed_path.exists()

    # The export's side.
    def requested(self) -> str | None:
        """The token asked for, if any. Every export asks `POLL_SECONDS`: without a request
        (nearly always) this is one stat() and no exception, path object or file read
        (issue #21: it was most of an idle export's CPU)."""
        path = self.request_path
        if not os.path.exists(path):
            return None
        return self._read(path)

    def answer(self, token: str) -> None:
        self._write(self.frozen_path, token)

    def gave_up(self) -> None:
        self.thawed_path.write_text("thawed after the freeze outlasted its limit\n")

    def clear_answer(self) -> None:
        self.frozen_path.unlink(missing_ok=True)


@dataclass
class ExportStats:
    """The stats file: one export's counters, written by its plugin, read by /metrics
    (api/metrics.py) and by the supervisor for the fenced state. `fenced` and `epoch` come first
    in the file, so that the supervisor reads only its head (`read_fence`)."""

    fenced: bool = False  # a newer writer took the disk: the export serves nothing more
    epoch: int | None = None  # the writer epoch the export runs with
    disk: str = ""
    incoming: bool = False  # a migration's destination, not the disk's writer yet
    held_requests: int = 0  # requests an incoming export held until it became the writer
    held_ms_max: float = 0.0  # the longest such hold: the switchover pause its clients saw
    early_reads: int = 0  # reads an incoming export served before the switchover
    cache_mode: str = "none"
    size: int = 0
    io: dict[str, dict[str, Any]] = field(default_factory=dict)  # host/iostats.py, per op
    cache: dict[str, Any] = field(default_factory=dict)  # HostCacheStats
    volume: dict[str, Any] = field(default_factory=dict)  # the engine's VolumeStats
    store: dict[str, Any] = field(default_factory=dict)  # the store stack's StoreStats
    qos: dict[str, Any] = field(default_factory=dict)  # host/qos.py `Limiter.counters`

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportStats:
        """Fields the file lacks keep their defaults; fields this side does not know are
        ignored (a plugin and a service of different versions)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def read_stats(path: Path) -> dict[str, Any] | None:
    """The stats file as written, or None if there is none (yet) or it is not JSON."""
    got = read_stats_at(path)
    return None if got is None else got[0]


def read_stats_at(path: Path) -> tuple[dict[str, Any], float] | None:
    """The stats file and when its export wrote it (the time from the open file, so a file
    replaced meanwhile cannot pair new counters with an old time); None as `read_stats`."""
    try:
        with open(path, "rb") as f:
            at = os.fstat(f.fileno()).st_mtime
            data = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    return (data, at) if isinstance(data, dict) else None


_FENCE_HEAD = re.compile(rb'\{"fenced": (true|false), "epoch": (null|\d+)[,}]')


def read_fence(path: Path) -> tuple[bool, int | None] | None:
    """(fenced, epoch) from the stats file, reading only its head; None without a file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        return None
    m = _FENCE_HEAD.match(head)
    if m is not None:
        return m[1] == b"true", None if m[2] == b"null" else int(m[2])
    data = read_stats(path)  # not laid out by `to_json`: read it whole
    if not data:
        return None
    return bool(data.get("fenced")), data.get("epoch")
