"""nbdkit Python plugin: one blockstore disk per nbdkit process, served through the host cache.

    nbdkit --unix SOCK --foreground python nbd_plugin/plugin.py disk=ID endpoint=URL \
        bucket=B [region=R] [prefix=P] [credentials=FILE] cache=none|readonly|readwrite \
        cache-dir=DIR [cache-size=1G] [cache-block=64K] [dirty-limit=256M] [readahead=1M] \
        [retry-seconds=30] [request-timeout=10] [write-wait=30] [readonly=false] \
        [epoch=N] [fence-check=1]

`blockstore/host/export.py` is the launcher to use; it sets PATH so that nbdkit's embedded Python
(Debian's 3.11) finds the project's virtualenv, and hands credentials over in the environment.

Read top to bottom: settings (`config`, `config_complete`), start-up (`after_fork`: the store
stack, the Volume and the HostCache are built there because their threads must start after
nbdkit forks), the per-connection handle (`open`), capabilities, the data calls. Every callback
is a thin call into `HostCache`; errors are mapped to errno in one place (`_fail`), and every
data call is timed, counted and given its deadline by one wrapper (`_served`).

The parameters, environment and files shared with the service (S3 keys never on the command
line, the size to grow to, the stats file, the other region of a grs disk for read repair) are
the contract in `blockstore/host/contract.py`, which the service side imports too.

Ownership: `epoch=` is the writer epoch the control plane issued with the disk record (without
it the next free one is claimed). `cache-dir=` is given in every mode, because a write journal
left there by an earlier export must be made durable (or, if its epoch was fenced, discarded)
before this one serves anything, whatever mode it runs in. Every `fence-check` seconds a thread
looks for a newer epoch claim; from then on every request fails with EPERM (reads too: the cache
may hold bytes the new owner has overwritten), and so it does once a commit meets a newer fence.

Every data call runs under its own deadline, `retry-seconds` after the call began
(blockstore/deadline.py): a request the store cannot serve fails with EIO within that plus one
`request-timeout`. Multi-conn is advertised: every connection shares one HostCache, and its
flush makes every write acknowledged before it durable, whichever connection carried it.
"""

import errno
import functools
import os
import site
import sys
import threading
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import NoReturn

import nbdkit

# The plugin runs in nbdkit's embedded interpreter: make the repository and its venv importable
# even when nbdkit was not started by blockstore/host/export.py.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
_VENV_SITE = _REPO / ".venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
if (_VENV_SITE / "site-packages").is_dir():
    site.addsitedir(str(_VENV_SITE / "site-packages"))

from blockstore import deadline  # noqa: E402
from blockstore.cache.hostcache import HostCache, HostCacheConfig  # noqa: E402
from blockstore.clock import SYSTEM_CLOCK  # noqa: E402
from blockstore.engine.volume import Volume  # noqa: E402
from blockstore.errors import (  # noqa: E402
    BlockstoreError,
    Fenced,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from blockstore.host import contract  # noqa: E402
from blockstore.host.iostats import IoStats  # noqa: E402
from blockstore.stats import counters  # noqa: E402

API_VERSION = 2

# --- settings ----------------------------------------------------------------------------------

_settings: dict[str, str] = {k: v for k, v in contract.PARAMETERS.items() if v is not None}
_KNOWN = frozenset(contract.PARAMETERS)

_store = None
_volume = None
_retry_seconds = 30.0  # each data call's deadline (retry-seconds=), set in after_fork
_resize_lock = threading.Lock()
_io = IoStats()
_stats_stop = threading.Event()
_stats_thread: threading.Thread | None = None
_fence_thread: threading.Thread | None = None
# Set in after_fork, before nbdkit accepts any connection; callbacks use it without a check.
_cache: HostCache = None  # type: ignore[assignment]


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def config(key, value):
    key = key.replace("_", "-")
    if key not in _KNOWN:
        raise RuntimeError(f"unknown parameter {key!r}; known: {', '.join(sorted(_KNOWN))}")
    _settings[key] = value


def config_complete():
    for need in contract.REQUIRED:
        if need not in _settings:
            raise RuntimeError(f"missing parameter {need}=")
    if _settings["cache"] != "none" and "cache-dir" not in _settings:
        raise RuntimeError("cache-dir= is needed unless cache=none")
    _cache_config()  # validate now, so a bad setting fails before nbdkit starts serving
    try:
        epoch = int(_settings.get("epoch", "1"))
        check = float(_settings["fence-check"])
    except ValueError as exc:
        raise RuntimeError(f"epoch= and fence-check= must be numbers: {exc}") from None
    if epoch < 1 or check < 0:
        raise RuntimeError("epoch= must be a positive integer and fence-check= >= 0 seconds")


def _cache_config() -> HostCacheConfig:
    s = _settings
    try:
        return HostCacheConfig(
            mode=s["cache"],
            block_size=nbdkit.parse_size(s["cache-block"]),
            cache_size=nbdkit.parse_size(s["cache-size"]),
            dirty_limit=nbdkit.parse_size(s["dirty-limit"]),
            readahead=nbdkit.parse_size(s["readahead"]),
            write_wait_seconds=float(s["write-wait"]),
        )
    except InvalidArgument as exc:
        raise RuntimeError(str(exc)) from None


def _credentials() -> tuple[str, str]:
    access, secret = contract.credentials(os.environ, _settings.get("credentials"))
    if not access or not secret:
        raise RuntimeError(
            f"S3 credentials missing: set {contract.ENV_ACCESS_KEY} and "
            f"{contract.ENV_SECRET_KEY} or pass credentials=FILE"
        )
    return access, secret


def _readonly() -> bool:
    return _settings["readonly"].lower() in contract.TRUE_WORDS


# --- start-up and shutdown ---------------------------------------------------------------------


def after_fork():
    """Build store -> Volume -> HostCache. Threads (uploader, group commit) start here, after
    nbdkit forked. A journal left by a crashed process is replayed inside HostCache() before
    this returns, so nothing is served until the store holds every acknowledged write."""
    global _store, _volume, _cache, _stats_thread, _fence_thread, _retry_seconds
    from blockstore.store.retry import RetryConfig
    from blockstore.store.s3 import S3Config
    from blockstore.store.stack import build_store

    s = _settings
    os.umask(0o077)  # nbdkit sets 022; the caches, journals and stats are the service's alone
    access, secret = _credentials()
    s3 = S3Config(s["endpoint"], s["bucket"], access, secret, s["region"], prefix=s["prefix"])
    if "request-timeout" in s:
        # One hung request must not outlast the retry deadline by much (a stopped store
        # accepts TCP connections and then never answers).
        t = float(s["request-timeout"])
        s3 = replace(s3, connect_timeout=t, read_timeout=t)
    _retry_seconds = float(s["retry-seconds"])
    repair = contract.repair_config(os.environ, s3)  # the other region of a grs disk
    _store = build_store(s3, RetryConfig(deadline_seconds=_retry_seconds), secondary=repair)
    writable = not _readonly()
    epoch = int(s["epoch"]) if "epoch" in s and writable else None
    _volume = Volume.open(_store, s["disk"], writable=writable, epoch=epoch)
    cache_dir = None
    if "cache-dir" in s:
        cache_dir = contract.disk_cache_dir(Path(s["cache-dir"]), s["disk"])
    _cache = HostCache(_volume, _cache_config(), cache_dir)
    nbdkit.debug(f"blockstore: disk {s['disk']} size {_volume.size} cache {s['cache']}")
    stats_path = os.environ.get(contract.ENV_STATS_FILE)
    if stats_path:
        _stats_thread = threading.Thread(
            target=_write_stats, args=(Path(stats_path),), name="stats", daemon=True
        )
        _stats_thread.start()
    if writable and float(s["fence-check"]) > 0:
        _fence_thread = threading.Thread(
            target=_watch_fence,
            args=(_volume, float(s["fence-check"])),
            name="fence-check",
            daemon=True,
        )
        _fence_thread.start()


def _watch_fence(volume: Volume, interval: float) -> None:
    """Stop serving as soon as a newer writer is authorised (one LIST per `interval`), rather
    than only when a commit meets its fence: a readwrite export would otherwise go on
    acknowledging writes into its cache and serving reads the new owner has overwritten."""
    while not _stats_stop.wait(interval):
        try:
            newer = volume.newer_epoch()
        except BlockstoreError:
            continue  # the store is away: the commits will tell
        if newer is not None:
            _cache.fence(
                Fenced(
                    f"disk {_settings['disk']}: writer epoch {volume.epoch} was superseded by "
                    f"epoch {newer}"
                )
            )
            nbdkit.debug(f"blockstore: fenced by epoch {newer}; every request now fails")
            return


def _write_stats(path: Path, interval: float = 2.0) -> None:
    """Every `interval` seconds, this export's counters (`contract.ExportStats`) for the API's
    /metrics and the supervisor; once more when the export stops, so the file ends with the
    final counts."""
    tmp = path.with_suffix(".tmp")
    while True:
        stopping = _stats_stop.is_set()
        body = contract.ExportStats(
            fenced=_cache.fenced is not None,
            epoch=_volume.epoch if _volume else None,
            disk=_settings["disk"],
            cache_mode=_settings["cache"],
            size=_cache.size,
            io=_io.counters(),
            cache=counters(_cache.stats),
            volume=counters(_volume.stats) if _volume else {},
            store=counters(_store.stats) if _store else {},
        )
        try:
            tmp.write_text(body.to_json())
            tmp.replace(path)
        except OSError as exc:
            nbdkit.debug(f"blockstore: writing stats failed: {exc}")
        if stopping:
            return
        _stats_stop.wait(interval)


def cleanup():
    """Upload what is dirty and close (best effort: a journal left behind is replayed later);
    then the last stats snapshot."""
    if _cache is not None:
        _cache.close()
    if _volume is not None:
        try:
            _volume.close()
        except BlockstoreError as exc:
            nbdkit.debug(f"blockstore: closing the volume failed: {exc}")
    if _store is not None:
        _store.close()
    _stats_stop.set()
    if _stats_thread is not None:
        _stats_thread.join(5)


# --- errors: the one place core errors become errno --------------------------------------------

_ERRNO = (
    (InvalidArgument, errno.EINVAL),
    (NotFound, errno.ENOENT),
    (Fenced, errno.EPERM),  # a newer writer owns the disk: this export serves nothing more
    (Unavailable, errno.EIO),
    (IntegrityError, errno.EIO),
)


def _fail(exc: BaseException) -> NoReturn:
    """Set the errno the client will see for `exc`, then let nbdkit see the exception."""
    code = errno.EIO
    if isinstance(exc, BlockstoreError):
        for cls, value in _ERRNO:
            if isinstance(exc, cls):
                code = value
                break
    elif isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    elif isinstance(exc, (OverflowError, ValueError, TypeError)):
        code = errno.EINVAL  # hostile arguments handed straight to a callback
    nbdkit.set_error(code)
    raise exc


# --- the handle and capabilities ---------------------------------------------------------------


class Handle:
    """Per connection. All state worth having is in the shared HostCache."""

    __slots__ = ("readonly",)

    def __init__(self, readonly):
        self.readonly = readonly


def open(readonly):
    if _cache is None:
        nbdkit.set_error(errno.EIO)
        raise RuntimeError("blockstore: the disk is not open (after_fork failed)")
    _apply_size_request()
    return Handle(readonly or _readonly())


def _apply_size_request():
    """Online grow: the control plane writes the wanted size to the file named in the
    environment; each new connection applies it before it learns the size."""
    path = os.environ.get(contract.ENV_SIZE_REQUEST)
    if not path:
        return
    wanted = contract.read_size_request(Path(path))
    if wanted is not None and wanted > _cache.size:
        with _resize_lock:
            try:
                _cache.grow(wanted)
            except BlockstoreError as exc:
                _fail(exc)


def get_size(h):
    return _cache.size


def block_size(h):
    # 512-byte sectors; 4 KiB is what the cache and the engine like; nbdkit caps requests at 32M.
    return (512, 4096, 32 * 1024 * 1024)


def is_rotational(h):
    return False


def can_write(h):
    return not h.readonly


def can_flush(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fast_zero(h):
    return True  # zeroing never writes data: it is always fast


def can_extents(h):
    return True


# --- data calls --------------------------------------------------------------------------------


_monotonic = SYSTEM_CLOCK.monotonic


def _request():
    """The deadline of a request issued now: `retry-seconds` from now."""
    return deadline.scope(_monotonic() + _retry_seconds)


def _served(op):
    """The data calls' one wrapper: run the call under its request's deadline (`_request`,
    inlined: this is every request's path), count it in the I/O stats as `op` (with the bytes
    it returns, or as an error), and map a failure to errno."""

    def wrap(call):
        @functools.wraps(call)
        def served(*args):
            start = perf_counter()
            try:
                with deadline.scope(_monotonic() + _retry_seconds):
                    nbytes = call(*args)
            except Exception as exc:
                _io.observe(op, 0, perf_counter() - start, ok=False)
                _fail(exc)
            _io.observe(op, nbytes, perf_counter() - start)

        return served

    return wrap


@_served("read")
def pread(h, buf, offset, flags):
    _cache.pread(buf, offset)
    return len(buf)


@_served("write")
def pwrite(h, buf, offset, flags):
    _cache.pwrite(buf, offset, fua=bool(flags & nbdkit.FLAG_FUA))
    return len(buf)


@_served("flush")
def flush(h, flags):
    _cache.flush()
    return 0


@_served("trim")
def trim(h, count, offset, flags):
    _cache.trim(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))
    return count


@_served("zero")
def zero(h, count, offset, flags):
    fua = bool(flags & nbdkit.FLAG_FUA)
    if flags & nbdkit.FLAG_MAY_TRIM:
        _cache.trim(offset, count, fua=fua)
    else:
        _cache.zero(offset, count, fua=fua)
    return count


def extents(h, count, offset, flags):
    try:
        with _request():
            runs = _cache.extents(offset, count)
    except Exception as exc:
        _fail(exc)
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    out = [(off, length, hole if is_hole else 0) for off, length, is_hole in runs if length > 0]
    if flags & nbdkit.FLAG_REQ_ONE:
        return out[:1]
    return out
