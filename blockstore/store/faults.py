"""`FaultyStore`: a wrapper that injects failures, for crash and outage tests.

Sits where `RetryingStore` would, around a real or in-memory store. A test arms it with rules;
each rule matches an operation (`get`, `put`, `delete`, `list`, `head`) and a key substring and
either raises `Unavailable` (a transient outage) or "crashes": the call fails and so does every
call after it, as if the process had died at that instant. A `torn` rule on `put` leaves an
EMPTY object at the key (honouring If-None-Match) and raises `Unavailable`: what SeaweedFS 4.48
keeps when a PUT's connection dies before its body. `after` lets a rule skip the first N
matching calls, so a test can sweep a crash over every step of a flush or a checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from blockstore.errors import Unavailable
from blockstore.store.base import Buffer, ObjectInfo, ObjectStore


class Crashed(Unavailable):
    """Raised by every call once a crash rule fired."""


@dataclass
class FaultRule:
    op: str = "*"  # operation name or "*"
    key_contains: str = ""
    after: int = 0  # let this many matching calls through first
    times: int = 1  # then fail this many (ignored for crash rules)
    crash: bool = False  # fail this call and every later call of any kind
    apply_before: bool = True  # False: the call reaches the store, then fails (lost reply)
    torn: bool = False  # put only: store an empty object instead of the body, then fail
    seen: int = 0


class FaultyStore(ObjectStore):
    """An `ObjectStore` that fails on purpose according to its rules."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.rules: list[FaultRule] = []
        self.crashed = False
        self.calls = 0
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def crash_after(self, op: str, n: int, *, key_contains: str = "", before: bool = True) -> None:
        """Let `n` matching calls through, then crash on the next one."""
        self.add(
            FaultRule(op=op, key_contains=key_contains, after=n, crash=True, apply_before=before)
        )

    def tear(self, key_contains: str, *, after: int = 0) -> FaultRule:
        """Let `after` matching PUTs through, then leave the next one torn (an empty object)."""
        return self.add(FaultRule(op="put", key_contains=key_contains, after=after, torn=True))

    def heal(self) -> None:
        with self._lock:
            self.rules.clear()
            self.crashed = False

    def _check(self, op: str, key: str) -> FaultRule | None:
        with self._lock:
            self.calls += 1
            if self.crashed:
                raise Crashed(f"store connection is gone (crashed before {op} {key!r})")
            for rule in self.rules:
                if rule.op not in ("*", op) or rule.key_contains not in key:
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.crash:
                    if rule.apply_before:
                        self.crashed = True
                        raise Crashed(f"injected crash at {op} {key!r}")
                    return rule
                if rule.seen <= rule.after + rule.times:
                    if rule.apply_before and not rule.torn:
                        raise Unavailable(f"injected outage at {op} {key!r}")
                    return rule
        return None

    def _after(self, rule: FaultRule | None, op: str, key: str) -> None:
        if rule is None:
            return
        if rule.crash:
            with self._lock:
                self.crashed = True
            raise Crashed(f"injected crash after {op} {key!r} reached the store")
        raise Unavailable(f"injected lost reply after {op} {key!r}")

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        rule = self._check("get", key)
        data = self.inner.get(key, start, length)
        self._after(rule, "get", key)
        return data

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        rule = self._check("put", key)
        if rule is not None and rule.torn:
            self.inner.put(key, b"", if_none_match=if_none_match, if_match=if_match)
            raise Unavailable(f"injected torn PUT at {key!r}: an empty object was left")
        etag = self.inner.put(key, data, if_none_match=if_none_match, if_match=if_match)
        self._after(rule, "put", key)
        return etag

    def delete(self, key: str) -> None:
        rule = self._check("delete", key)
        self.inner.delete(key)
        self._after(rule, "delete", key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        rule = self._check("list", prefix)
        items = list(self.inner.list(prefix, start_after))
        self._after(rule, "list", prefix)
        return iter(items)

    def head(self, key: str) -> ObjectInfo:
        rule = self._check("head", key)
        info = self.inner.head(key)
        self._after(rule, "head", key)
        return info
