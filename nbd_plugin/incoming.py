"""The destination of a live migration, inside the plugin: serve the handshake, hold the I/O.

An export started with ``incoming=true`` runs on the host a VM is migrating to, while the source
host still serves the disk. QEMU's destination connects at once (it opens its block nodes
inactive) and writes nothing until the source has stopped the guest and flushed, and it has
itself activated (QEMU commit 76b1c7fe; DESIGN.md). It does read before that: a virtio-blk,
scsi-hd or ide-hd device reads sector 0 at start-up to guess a geometry (QEMU 7.2's
`hd_geometry_guess`), and holding that read would keep QEMU from starting at all. So:

- a read or block-status query before the switchover is served from a read-only open of the
  volume made for that request (`open_reader`), without the host cache: it sees every write
  the source made durable, and after activation that is every write the source acknowledged
  (QEMU flushed it), so a guest's read after it resumed is never stale;
- a write, trim, zero or flush is held; the first one asks the service to switch over
  (`contract.Activation`: under QEMU's protocol it comes only once the VM runs here), as does
  `POST .../migration/complete`. Once the service answers with the epoch the record issued to
  this host, `become_writer` opens the volume with it, which fences the source's epoch, and the
  held requests go through. They never fail for the switchover: they wait (the guest sees a
  pause, not an error). If the migration is cancelled, or no answer comes within the request's
  own deadline, they fail with EIO.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter

from blockstore.engine.volume import Volume
from blockstore.errors import IntegrityError, NotFound, Unavailable
from blockstore.host.contract import Activation


class Incoming:
    """Holds requests until `become_writer(epoch)` has run, or the migration was cancelled."""

    POLL_SECONDS = 0.005  # how often the answer file is looked for: part of the pause
    READ_ATTEMPTS = 3

    def __init__(
        self,
        activation: Activation,
        open_reader: Callable[[], Volume],
        become_writer: Callable[[int], None],
    ) -> None:
        self.activation = activation
        self._open_reader = open_reader
        self.size = self._read(lambda v: v.size)
        self._become_writer = become_writer
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._asked = False
        self.held_requests = 0
        self.held_ms_max = 0.0
        self.early_reads = 0  # reads served before the switchover
        self._thread = threading.Thread(target=self._await_answer, name="incoming", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> bool:
        """Not the writer yet (and not cancelled)."""
        return not self._ready.is_set()

    def _await_answer(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            answer = self.activation.read_answer()
            if answer is None:
                continue
            if answer == Activation.CANCEL:
                self._error = Unavailable("the live migration to this host was cancelled")
            else:
                try:
                    self._become_writer(int(answer))
                except BaseException as exc:  # handed to every held request
                    self._error = exc
            break
        self._ready.set()

    def hold(self, timeout: float) -> None:
        """Wait until this export is the writer; raise what stopped it from becoming one."""
        if not self._ready.is_set():
            with self._lock:
                if not self._asked:
                    self._asked = True
                    self.activation.ask()
            start = perf_counter()
            done = self._ready.wait(timeout)
            waited = (perf_counter() - start) * 1000
            with self._lock:
                self.held_requests += 1
                self.held_ms_max = max(self.held_ms_max, waited)
            if not done:
                raise Unavailable(
                    f"the switchover of this live migration did not come within {timeout:g} s"
                )
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        """Cancelled, or the volume would not open with the epoch: nothing is served."""
        if self._error is not None:
            raise self._error

    def _read(self, call: Callable[[Volume], object]) -> object:
        """`call` on a fresh read-only open. The source's GC may delete a segment this open's
        map still names (it rewrote its live bytes elsewhere first): the next open sees where
        they went, so such a read is tried again on one."""
        for attempt in range(self.READ_ATTEMPTS):
            reader = self._open_reader()
            try:
                return call(reader)
            except (NotFound, IntegrityError):
                if attempt == self.READ_ATTEMPTS - 1:
                    raise
            finally:
                reader.close()
        raise AssertionError("unreachable")

    def readinto(self, buf: bytearray, offset: int) -> bool:
        """Serve a read made before the switchover (True), or leave it to the writer's cache
        (False: the switchover is done)."""
        if self._ready.is_set():
            self._raise_if_failed()
            return False
        self._read(lambda v: v.readinto(offset, memoryview(buf)))
        with self._lock:
            self.early_reads += 1
        return True

    def extents(self, offset: int, length: int) -> list[tuple[int, int, bool]] | None:
        """Block status before the switchover; None once the writer's cache answers it."""
        if self._ready.is_set():
            self._raise_if_failed()
            return None
        runs: list[tuple[int, int, bool]] = self._read(lambda v: v.extents(offset, length))  # type: ignore[assignment]
        return runs

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
