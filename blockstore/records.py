"""Control-plane records as series of immutable, numbered versions in the bucket.

Every record that changes (a disk, an operation) is a folder of versions,
`<kind>/<name>/<version:020d>`, each a JSON object created with `If-None-Match: *`. The newest
version is the record. An update reads the newest version N, computes the new value and creates
N+1; of two racing writers exactly one creates N+1 and the other gets 412, re-reads and tries
again. This rests only on create-if-absent, which SeaweedFS 4.48 applies atomically (`If-Match`
is not atomic there, so nothing uses it). Deleting writes a tombstone version, so a name can be
used again later without a gap in its history.

Old versions are pruned, but only once they are older than PRUNE_AGE_SECONDS (their body says
when they were written): a writer that read version N and stalled could otherwise create N+1
after N+1 had been written and pruned, and its stale value would hide below the newest one
(a lost update). A writer never creates a version from a read older than MAX_READ_AGE_SECONDS
(half the prune age), so a version number it creates cannot have been pruned already. A reader
that lists a version which is pruned before it reads it simply lists again. Two API processes
(two hosts) over one bucket therefore never corrupt a record and never lose an update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import Conflict, NotFound, PreconditionFailed
from blockstore.objectstore import ObjectStore

Record = dict[str, Any]
KEEP_VERSIONS = 3
PRUNE_EVERY = 8  # versions between two pruning passes
PRUNE_AGE_SECONDS = 600.0
MAX_READ_AGE_SECONDS = PRUNE_AGE_SECONDS / 2
MAX_RACES = 50


def _decode(raw: bytes) -> dict[str, Any] | None:
    """A version's body, or None for an empty or torn one (a PUT that never completed)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) and "value" in body else None


@dataclass(frozen=True)
class Versioned:
    version: int
    value: Record | None  # None: a tombstone (the record was deleted)


class RecordStore:
    """Records of one kind (e.g. `control/disks/`), each a series of immutable versions."""

    def __init__(self, store: ObjectStore, prefix: str, clock: Clock = SYSTEM_CLOCK) -> None:
        if not prefix.endswith("/"):
            raise ValueError("prefix must end with '/'")
        self.store = store
        self.prefix = prefix
        self.clock = clock

    def _key(self, name: str, version: int) -> str:
        return f"{self.prefix}{name}/{version:020d}"

    def _versions(self, name: str) -> list[int]:
        return [int(o.key.rsplit("/", 1)[1]) for o in self.store.list(f"{self.prefix}{name}/")]

    def _newest(self, name: str) -> Versioned:
        """The newest readable version. Its number is the newest listed one, readable or not:
        a PUT cut off before its body leaves an empty object on SeaweedFS 4.48; that version
        never succeeded (its writer saw an error) and is skipped, but its number stays used."""
        for _ in range(MAX_RACES):
            versions = self._versions(name)
            if not versions:
                return Versioned(0, None)
            for version in reversed(versions):
                try:
                    body = _decode(self.store.get(self._key(name, version)))
                except NotFound:
                    break  # pruned between the listing and the read: list again
                if body is not None:
                    return Versioned(versions[-1], body.get("value"))
            else:
                return Versioned(versions[-1], None)
        raise Conflict(f"record {self.prefix}{name} is changing too fast to read")

    def get(self, name: str) -> Record:
        """The current value; `NotFound` if it never existed or was deleted."""
        current = self._newest(name).value
        if current is None:
            raise NotFound(f"{name!r} does not exist")
        return current

    def find(self, name: str) -> Record | None:
        return self._newest(name).value

    def update(self, name: str, change: Callable[[Record | None], Record | None]) -> Record | None:
        """Apply `change` to the current value (None when absent) and store the result as the
        next version; `change` may raise to refuse, and is called again if another writer won
        the race. Returning None deletes the record (a tombstone)."""
        for _ in range(MAX_RACES):
            read_at = self.clock.monotonic()
            current = self._newest(name)
            new = change(current.value)
            if new is None and current.value is None:
                return None
            body = json.dumps(
                {"value": new, "written_at": self.clock.time()}, sort_keys=True
            ).encode()
            version = current.version + 1
            if self.clock.monotonic() - read_at > MAX_READ_AGE_SECONDS:
                continue  # too old a read to write on: its version number may be pruned
            try:
                self.store.put(self._key(name, version), body, if_none_match=True)
            except PreconditionFailed:
                continue
            self._prune(name, version)
            return new
        raise Conflict(f"record {self.prefix}{name} lost {MAX_RACES} update races in a row")

    def create(self, name: str, value: Record) -> Record:
        """Create the record; `Conflict` if it exists."""

        def change(current: Record | None) -> Record:
            if current is not None:
                raise Conflict(f"{name!r} already exists")
            return value

        result = self.update(name, change)
        assert result is not None
        return result

    def delete(self, name: str) -> None:
        self.update(name, lambda current: None)

    def names(self) -> list[str]:
        """Names of every record that has any version (tombstoned ones included)."""
        seen: list[str] = []
        for obj in self.store.list(self.prefix):
            name = obj.key[len(self.prefix) :].split("/", 1)[0]
            if not seen or seen[-1] != name:
                seen.append(name)
        return seen

    def items(self) -> Iterator[tuple[str, Record]]:
        """(name, value) of every live record, in name order."""
        newest: dict[str, int] = {}
        for obj in self.store.list(self.prefix):
            name, _, number = obj.key[len(self.prefix) :].partition("/")
            newest[name] = max(newest.get(name, 0), int(number))
        for name, version in sorted(newest.items()):
            try:
                body = _decode(self.store.get(self._key(name, version)))
            except NotFound:
                body = None
            value = body.get("value") if body is not None else self.find(name)
            if value is not None:
                yield name, value

    def purge(self, name: str) -> None:
        """Remove every version of a record (after its tombstone is no longer needed)."""
        for version in self._versions(name):
            self.store.delete(self._key(name, version))

    def _prune(self, name: str, newest: int) -> None:
        """Delete versions below the newest few once they are older than the prune age."""
        if newest % PRUNE_EVERY:
            return
        horizon = self.clock.time() - PRUNE_AGE_SECONDS
        for version in self._versions(name):
            if version > newest - KEEP_VERSIONS:
                break
            try:
                body = _decode(self.store.get(self._key(name, version)))
            except NotFound:
                continue
            written = body.get("written_at") if body is not None else 0.0
            if written is not None and written < horizon:
                self.store.delete(self._key(name, version))
