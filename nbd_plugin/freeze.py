"""The write gate: holds an export's writes while a group snapshot takes its cut.

Place: the plugin's write, trim, zero and flush calls pass `Gate.enter` / `Gate.leave`; a
thread (`Gate.watch`) answers the service's freeze requests (blockstore/host/contract.py,
`Freeze`, says the files and the protocol).

Why a gate and not a lock: writes run in parallel on nbdkit's threads, and a freeze must know
when the last write that got past the gate has finished. Each thread announces itself in
`_busy` (one dict store, atomic under the interpreter lock) and then looks at `closed` again;
the freezer sets `closed` and then waits until no thread is announced. Whichever runs second
sees the other, so no write slips past a closed gate unseen, and a write costs two dict
stores and a flag check (no lock).

Guarantee: once the export has written its `frozen` answer, every write it acknowledged is
in the store (it flushed after the last one finished) and it acknowledges no other until
thawed. Failure: if the flush fails, no answer is written (the service's freeze times out and
thaws); a freeze that outlasts `Freeze.MAX_SECONDS` thaws itself, saying so first.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blockstore.host.contract import Freeze


class Gate:
    """The write gate of one export (module docstring)."""

    def __init__(self, files: Freeze, flush: Callable[[], None]) -> None:
        self.files = files
        self._flush = flush
        self.closed = False
        self._open = threading.Event()
        self._open.set()
        self._busy: dict[int, bool] = {}
        self._stop = threading.Event()
        self._bell: int | None = None  # the FIFO the service rings (`open_bell`)
        self.freezes = 0  # answered freeze requests (stats)

    # -- the request path -----------------------------------------------------------------

    def enter(self, wait_seconds: float) -> None:
        """Before a write-like request: wait while the gate is closed, then announce it."""
        me = threading.get_ident()
        while True:
            if self.closed and not self._open.wait(wait_seconds):
                raise TimeoutError("writes are held for a group snapshot longer than allowed")
            self._busy[me] = True
            if not self.closed:
                return
            self._busy[me] = False

    def leave(self) -> None:
        self._busy[threading.get_ident()] = False

    # -- the freezer ----------------------------------------------------------------------

    def watch(self) -> None:
        """Answer freeze requests until `stop` (runs in its own thread). A request is answered
        once: one that outlasted its limit is not taken up again. Between requests the thread
        sleeps on the bell (`Freeze.ring`), looking by itself only every `POLL_SECONDS`."""
        last = None
        self._bell = open_bell(self.files.bell_path)
        while not self._stop.is_set():
            self._wait_for_bell()
            if self._stop.is_set():
                break
            token = self.files.requested()
            if token is None or token == last:
                last = token
                continue
            last = token
            try:
                self._freeze()
            except Exception:  # a failed flush: no answer, the service times out
                self._thaw()
                continue
            self.files.answer(token)
            self.freezes += 1
            self._hold_until_thawed()

    def _freeze(self) -> None:
        self.closed = True
        self._open.clear()
        deadline = time.monotonic() + Freeze.MAX_SECONDS
        while any(self._busy.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("writes in flight did not finish")
            time.sleep(0.0005)
        self._flush()

    def _hold_until_thawed(self) -> None:
        until = time.monotonic() + Freeze.MAX_SECONDS
        while self.files.requested() is not None and not self._stop.is_set():
            if time.monotonic() > until:
                self.files.gave_up()  # before any write gets through
                break
            time.sleep(Freeze.HOLD_POLL_SECONDS)
        self._thaw()

    def _thaw(self) -> None:
        self.files.clear_answer()
        self.closed = False
        self._open.set()

    def _wait_for_bell(self) -> None:
        """Until the bell rings (its bytes drained) or `POLL_SECONDS` have passed."""
        if self._bell is None:
            self._stop.wait(Freeze.POLL_SECONDS)
            return
        ready, _, _ = select.select([self._bell], [], [], Freeze.POLL_SECONDS)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._bell, 4096)

    def stop(self) -> None:
        self._stop.set()
        self.files.ring()  # out of its wait
        self._thaw()


def open_bell(path: Path) -> int | None:
    """The freeze bell: a FIFO next to the socket (0600), opened for reading and writing so
    that it never reads end-of-file; None if it cannot be made (the freezer then polls)."""
    try:
        if path.exists() and not stat.S_ISFIFO(path.lstat().st_mode):
            path.unlink()
        if not path.exists():
            os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None


class GatedWrites:
    """A host cache whose write-like calls pass the gate; reads (and everything else) go to
    the cache as they are, without a call more on their path."""

    def __init__(self, cache: Any, gate: Gate, wait_seconds: float) -> None:
        self._cache = cache
        self._gate = gate
        self._wait = wait_seconds
        self.pread = cache.pread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def _through(self, call: Callable[..., None], *args: Any, **kw: Any) -> None:
        self._gate.enter(self._wait)
        try:
            call(*args, **kw)
        finally:
            self._gate.leave()

    def pwrite(self, data: Any, offset: int, *, fua: bool = False) -> None:
        self._through(self._cache.pwrite, data, offset, fua=fua)

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        self._through(self._cache.trim, offset, length, fua=fua)

    def zero(self, offset: int, length: int, *, fua: bool = False) -> None:
        self._through(self._cache.zero, offset, length, fua=fua)

    def flush(self) -> None:
        self._through(self._cache.flush)


def gated(cache: Any, socket: Path, wait_seconds: float) -> GatedWrites:
    """`cache` behind a gate that answers freeze requests for the export at `socket`."""
    gate = Gate(Freeze(socket), cache.flush)
    threading.Thread(target=gate.watch, name="freeze", daemon=True).start()
    return GatedWrites(cache, gate, wait_seconds)
