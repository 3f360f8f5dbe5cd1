"""`StoreProbe`: whether the object store answers, probed in the background.

`/healthz` is open and polled by load balancers; answering it by calling the store would hold
a request worker for the whole retry deadline while the store is down (45 calls once made an
authenticated `/v1/info` wait 25 s). Instead one thread lists a key prefix every `interval`
seconds, each probe bounded by `timeout` (a request deadline on the store stack), and
`/healthz` only reads the last result: it never waits for the store.

States: no probe finished yet (`checked` is None), the last probe's answer (reachable or not,
its latency and error, how old it is), and a probe in flight longer than `timeout`, which
counts as "not reachable" at once, whatever the last finished probe said.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from blockstore import deadline as request_deadline
from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import BlockstoreError
from blockstore.store.base import ObjectStore

PROBE_PREFIX = "health-probe/"


@dataclass(frozen=True)
class Health:
    """What `/healthz` reports about the store."""

    reachable: bool
    latency_ms: float | None  # of the last finished probe
    error: str | None
    age_seconds: float | None  # since the last finished probe started; None: none yet


class StoreProbe:
    """Probes `store` every `interval` s in a daemon thread; `health()` never blocks."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        interval: float | None = 5.0,  # None: only explicit probe() calls (tests)
        timeout: float = 3.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, bool, float, str | None] | None = None  # started, ok, ms, err
        self._in_flight_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = threading.Event()  # set once a probe has finished

    def probe(self) -> None:
        """One probe, now, in the caller's thread (bounded by `timeout` plus one store
        request timeout)."""
        started = self._clock.monotonic()
        with self._lock:
            self._in_flight_since = started
        try:
            with request_deadline.scope(started + self.timeout):
                for _ in self.store.list(PROBE_PREFIX):
                    break
            ok, error = True, None
        except BlockstoreError as exc:
            ok, error = False, str(exc)
        ms = (self._clock.monotonic() - started) * 1000
        with self._lock:
            self._last = (started, ok, ms, error)
            self._in_flight_since = None
        self._first.set()

    def wait_first(self) -> None:
        """Until the first probe has finished, at most `timeout` (and one request timeout):
        a service that has just started answers with the store's state, not "unknown"."""
        self._first.wait(self.timeout + 1.0)

    @property
    def probed(self) -> bool:
        return self._first.is_set()

    def start(self) -> StoreProbe:
        """Start probing in the background (the first probe at once); idempotent."""
        with self._lock:
            if self._thread is not None or self.interval is None:
                return self
            self._thread = threading.Thread(target=self._run, name="store-probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self.interval)

    def health(self) -> Health:
        now = self._clock.monotonic()
        with self._lock:
            last, since = self._last, self._in_flight_since
        if since is not None and now - since > self.timeout:
            return Health(
                reachable=False,
                latency_ms=None,
                error=f"the object store has not answered a probe for {now - since:.1f} s",
                age_seconds=None if last is None else round(now - last[0], 1),
            )
        if last is None:
            return Health(False, None, "no probe of the object store has finished yet", None)
        started, ok, ms, error = last
        return Health(ok, round(ms, 2), error, round(now - started, 1))

    def close(self) -> None:
        self._stop.set()
