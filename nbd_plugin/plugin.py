"""nbdkit Python plugin: one blockstore disk per nbdkit process, served through the host cache.

    nbdkit --unix SOCK --foreground python nbd_plugin/plugin.py disk=ID endpoint=URL \
        bucket=B [region=R] [prefix=P] [credentials=FILE] cache=none|readonly|readwrite \
        cache-dir=DIR [cache-size=1G] [cache-block=64K] [dirty-limit=256M] [readahead=1M] \
        [retry-seconds=30] [request-timeout=10] [write-wait=30] [readonly=false] \
        [epoch=N] [fence-check=1] [upload-after=1] [upload-batch=4M] [incoming=false]

`blockstore/host/export.py` is the launcher to use; it sets PATH so that nbdkit's embedded Python
(Debian's 3.11) finds the project's virtualenv, and hands credentials over in the environment.

Read top to bottom: settings (`config`, `config_complete`), start-up (`after_fork`: the store
stack, the Volume and the HostCache are built there because their threads must start after
nbdkit forks), the per-connection handle (`open`), capabilities, the data calls. Every callback
is a thin call into `HostCache`; errors are mapped to errno in one place (nbd_plugin/errors.py);
one wrapper (`_served`) times, counts, throttles (nbd_plugin/throttle.py) and gives a deadline
to every data call. nbd_plugin/settings.py checks the parameters; an ``incoming=true`` export
(a live migration's destination) holds requests in nbd_plugin/incoming.py until it is the writer.

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
from blockstore.cache.hostcache import HostCache  # noqa: E402
from blockstore.clock import SYSTEM_CLOCK  # noqa: E402
from blockstore.engine.volume import Volume  # noqa: E402
from blockstore.errors import (  # noqa: E402
    BlockstoreError,
    Fenced,
)
from blockstore.host import contract  # noqa: E402
from blockstore.host.iostats import IoStats  # noqa: E402
from blockstore.stats import counters  # noqa: E402
from nbd_plugin import settings, throttle  # noqa: E402
from nbd_plugin.errors import fail  # noqa: E402
from nbd_plugin.fencewatch import FenceWatch  # noqa: E402
from nbd_plugin.freeze import GatedWrites, gated  # noqa: E402
from nbd_plugin.incoming import Incoming  # noqa: E402

API_VERSION = 2

# --- settings (nbd_plugin/settings.py) and state -------------------------------------------

_store = None
_volume = None
_retry_seconds = 30.0  # each data call's deadline (retry-seconds=), set in after_fork
_resize_lock = threading.Lock()
_io = IoStats()
_stats_stop = threading.Event()
_stats_thread: threading.Thread | None = None
_fence: FenceWatch | None = None  # looks for a newer writer while requests come
_incoming: Incoming | None = None  # a live migration's destination (nbd_plugin/incoming.py)
_holding = False  # requests wait in _incoming.hold until this export is the writer
# Set in after_fork, before nbdkit accepts any connection (or, for an incoming export, before
# `_holding` goes False); data callbacks use it without a check.
_cache: HostCache | GatedWrites = None  # type: ignore[assignment]


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def config(key, value):
    settings.set_value(key, value)


def config_complete():
    settings.check()


# --- start-up and shutdown ---------------------------------------------------------------------


def after_fork():
    """Build store -> Volume -> HostCache. Threads (uploader, group commit) start here, after
    nbdkit forked. A journal left by a crashed process is replayed inside HostCache() before
    this returns, so nothing is served until the store holds every acknowledged write. An
    incoming export (a live migration's destination) opens the volume only once it is the
    writer (nbd_plugin/incoming.py); until then it serves reads from the store and holds writes,
    trims, zeroes and flushes."""
    global _store, _stats_thread, _retry_seconds, _incoming, _holding
    from blockstore.crypto.disk import set_provider
    from blockstore.crypto.keyring import provider_from
    from blockstore.store.retry import RetryConfig
    from blockstore.store.s3 import S3Config
    from blockstore.store.stack import build_store

    s = settings.values
    os.umask(0o077)  # nbdkit sets 022; the caches, journals and stats are the service's alone
    access, secret = settings.credentials()
    s3 = S3Config(s["endpoint"], s["bucket"], access, secret, s["region"], prefix=s["prefix"])
    if "request-timeout" in s:
        # One hung request must not outlast the retry deadline by much (a stopped store
        # accepts TCP connections and then never answers).
        t = float(s["request-timeout"])
        s3 = replace(s3, connect_timeout=t, read_timeout=t)
    _retry_seconds = float(s["retry-seconds"])
    repair = contract.repair_config(os.environ, s3)  # the other region of a grs disk
    kek_dir = os.environ.get(contract.ENV_KEK_DIR)  # an encrypted disk's data key unwraps so
    set_provider(provider_from(os.environ, Path(kek_dir) if kek_dir else None))
    _store = build_store(s3, RetryConfig(deadline_seconds=_retry_seconds), secondary=repair)
    if settings.incoming():
        activation = contract.Activation(Path(os.environ[contract.ENV_ACTIVATION]))
        reader = functools.partial(Volume.open, _store, s["disk"], writable=False)
        _holding = True
        _incoming = Incoming(activation, reader, _become_writer)
        nbdkit.debug(f"blockstore: disk {s['disk']} incoming (live migration)")
    else:
        _open_disk(int(s["epoch"]) if "epoch" in s and not settings.readonly() else None)
    throttle.start()  # the disk's QoS caps (a changed file is applied by the request path)
    stats_path = os.environ.get(contract.ENV_STATS_FILE)
    if stats_path:
        _stats_thread = threading.Thread(
            target=_write_stats, args=(Path(stats_path),), name="stats", daemon=True
        )
        _stats_thread.start()


def _open_disk(epoch: int | None) -> None:
    """Open the volume (a writable open claims `epoch`, fencing every older writer) and the
    host cache over it, and start looking for newer writers."""
    global _volume, _cache, _fence
    s = settings.values
    writable = not settings.readonly()
    assert _store is not None
    _volume = Volume.open(_store, s["disk"], writable=writable, epoch=epoch)
    cache_dir = None
    if "cache-dir" in s:
        cache_dir = contract.disk_cache_dir(Path(s["cache-dir"]), s["disk"])
    _cache = HostCache(_volume, settings.cache_config(), cache_dir)
    if writable and contract.ENV_FREEZE in os.environ:  # group snapshots (nbd_plugin/freeze.py)
        _cache = gated(_cache, Path(os.environ[contract.ENV_FREEZE]), _retry_seconds)
    nbdkit.debug(f"blockstore: disk {s['disk']} size {_volume.size} cache {s['cache']}")
    interval = float(s["fence-check"])
    if writable and interval > 0:  # nbd_plugin/fencewatch.py: while requests come
        _fence = FenceWatch(_volume, interval, _stats_stop, _fenced_by)
        _fence.start()


def _become_writer(epoch: int) -> None:
    """The switchover of a live migration to this host: serve with the epoch the record issued
    (its open fences the source), then let the held requests through."""
    global _holding
    _open_disk(epoch)
    _holding = False
    stats_path = os.environ.get(contract.ENV_STATS_FILE)
    if stats_path:
        _write_stats_once(Path(stats_path))  # the service waits to see the epoch here


def _fenced_by(newer: int) -> None:
    """A newer writer is authorised: every request fails from now on."""
    epoch = _volume.epoch if _volume else None
    disk = settings.values["disk"]
    _cache.fence(Fenced(f"disk {disk}: writer epoch {epoch} was superseded by epoch {newer}"))
    nbdkit.debug(f"blockstore: fenced by epoch {newer}; every request now fails")


def _write_stats(path: Path, interval: float = 2.0) -> None:
    """Every `interval` seconds, this export's counters (`contract.ExportStats`) for the API's
    /metrics and the supervisor; once more when the export stops, so the file ends with the
    final counts."""
    while True:
        stopping = _stats_stop.is_set()
        _write_stats_once(path)
        if stopping:
            return
        _stats_stop.wait(interval)


def _write_stats_once(path: Path) -> None:
    cache, inc = _cache, _incoming
    body = contract.ExportStats(
        fenced=cache is not None and cache.fenced is not None,
        epoch=_volume.epoch if _volume else None,
        disk=settings.values["disk"],
        cache_mode=settings.values["cache"],
        size=_size(),
        incoming=_holding,
        held_requests=inc.held_requests if inc else 0,
        held_ms_max=inc.held_ms_max if inc else 0.0,
        early_reads=inc.early_reads if inc else 0,
        io=_io.counters(),
        cache=counters(cache.stats) if cache else {},
        volume=counters(_volume.stats) if _volume else {},
        store=counters(_store.stats) if _store else {},
        qos=throttle.limiter.counters(),
    )
    try:
        contract.write_whole(path, body.to_json(), f".{threading.get_ident()}.tmp")
    except OSError as exc:
        nbdkit.debug(f"blockstore: writing stats failed: {exc}")


def cleanup():
    """Upload what is dirty and close (best effort: a journal left behind is replayed later);
    then the last stats snapshot."""
    if _incoming is not None:
        _incoming.close()
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


# --- the handle and capabilities ---------------------------------------------------------------


class Handle:
    """Per connection. All state worth having is in the shared HostCache."""

    __slots__ = ("readonly",)

    def __init__(self, readonly):
        self.readonly = readonly


def open(readonly):
    if _cache is None and _incoming is None:
        nbdkit.set_error(errno.EIO)
        raise RuntimeError("blockstore: the disk is not open (after_fork failed)")
    if not _holding:
        _apply_size_request()
    return Handle(readonly or settings.readonly())


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
                fail(exc)


def _size() -> int:
    if _cache is not None:
        return _cache.size
    return _incoming.size if _incoming is not None else 0


def get_size(h):
    return _size()


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


def _hold():
    """An incoming export: wait (within the request's deadline) until it is the writer."""
    if _incoming is not None:
        _incoming.hold(_retry_seconds)


def _read_early(buf, offset):
    """An incoming export: serve a read before the switchover; False once it is the writer."""
    return _incoming is not None and _incoming.readinto(buf, offset)


def _served(op):
    """The data calls' one wrapper: run the call under its request's deadline (`_request`,
    inlined: this is every request's path), count it in the I/O stats as `op` (with the bytes
    it returns, or as an error), and map a failure to errno."""

    def wrap(call):
        @functools.wraps(call)
        def served(*args):
            start = perf_counter()
            if _fence is not None:
                _fence.touch()
            try:
                throttle.charge(op, args)  # QoS: the wait counts in the request's latency
                with deadline.scope(_monotonic() + _retry_seconds):
                    nbytes = call(*args)
            except Exception as exc:
                _io.observe(op, 0, perf_counter() - start, ok=False)
                fail(exc)
            _io.observe(op, nbytes, perf_counter() - start)

        return served

    return wrap


@_served("read")
def pread(h, buf, offset, flags):
    if _holding and _read_early(buf, offset):
        return len(buf)
    _cache.pread(buf, offset)
    return len(buf)


@_served("write")
def pwrite(h, buf, offset, flags):
    if _holding:
        _hold()
    _cache.pwrite(buf, offset, fua=bool(flags & nbdkit.FLAG_FUA))
    return len(buf)


@_served("flush")
def flush(h, flags):
    if _holding:
        _hold()
    _cache.flush()
    return 0


@_served("trim")
def trim(h, count, offset, flags):
    if _holding:
        _hold()
    _cache.trim(offset, count, fua=bool(flags & nbdkit.FLAG_FUA))
    return count


@_served("zero")
def zero(h, count, offset, flags):
    if _holding:
        _hold()
    fua = bool(flags & nbdkit.FLAG_FUA)
    if flags & nbdkit.FLAG_MAY_TRIM:
        _cache.trim(offset, count, fua=fua)
    else:
        _cache.zero(offset, count, fua=fua)
    return count


def extents(h, count, offset, flags):
    try:
        with _request():
            early = _incoming.extents(offset, count) if _holding and _incoming else None
            runs = early if early is not None else _cache.extents(offset, count)
    except Exception as exc:
        fail(exc)
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    out = [(off, length, hole if is_hole else 0) for off, length, is_hole in runs if length > 0]
    if flags & nbdkit.FLAG_REQ_ONE:
        return out[:1]
    return out
