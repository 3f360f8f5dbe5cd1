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
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import Conflict, NotFound, PreconditionFailed, Unavailable
from blockstore.store.base import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")
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


PRIMARY, SECONDARY = "primary", "secondary"


@dataclass(frozen=True)
class Versioned:
    version: int
    value: Record | None  # None: a tombstone (the record was deleted)
    home: str = PRIMARY  # the region whose bucket holds the authoritative copy (MirroredRecords)
    generation: int = 0  # how many times the home moved; a newer generation wins


def _body(value: Record | None, written_at: float, home: str, generation: int) -> bytes:
    body: dict[str, Any] = {"value": value, "written_at": written_at}
    if home != PRIMARY or generation:
        body.update(home=home, generation=generation)
    return json.dumps(body, sort_keys=True).encode()


def _versioned(version: int, body: dict[str, Any]) -> Versioned:
    return Versioned(
        version, body.get("value"), body.get("home", PRIMARY), int(body.get("generation", 0))
    )


class Records(ABC):
    """What the control plane needs of a kind of records, wherever they are kept."""

    @abstractmethod
    def newest(self, name: str) -> Versioned: ...

    @abstractmethod
    def update(
        self, name: str, change: Callable[[Record | None], Record | None]
    ) -> Record | None: ...

    @abstractmethod
    def items(self) -> Iterator[tuple[str, Record]]: ...

    @abstractmethod
    def marks(self) -> dict[str, object]:
        """A mark of every record, from one listing per region, that changes whenever the
        record does: a host compares them to learn which records to read again."""

    def get(self, name: str) -> Record:
        """The current value; `NotFound` if it never existed or was deleted."""
        current = self.newest(name).value
        if current is None:
            raise NotFound(f"{name!r} does not exist")
        return current

    def find(self, name: str) -> Record | None:
        return self.newest(name).value

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

    def set_fields(self, name: str, fields: Record, *, missing: str) -> Record:
        """Set `fields` in the current value; `NotFound(missing)` if there is none."""

        def change(current: Record | None) -> Record:
            if current is None:
                raise NotFound(missing)
            return {**current, **fields}

        result = self.update(name, change)
        assert result is not None
        return result


class RecordStore(Records):
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
                    return _versioned(versions[-1], body)
            else:
                return Versioned(versions[-1], None)
        raise Conflict(f"record {self.prefix}{name} is changing too fast to read")

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
            if self.clock.monotonic() - read_at > MAX_READ_AGE_SECONDS:
                continue  # too old a read to write on: its version number may be pruned
            body = _body(new, self.clock.time(), current.home, current.generation)
            if self.create_version(name, current.version + 1, body):
                return new
        raise Conflict(f"record {self.prefix}{name} lost {MAX_RACES} update races in a row")

    def create_version(self, name: str, version: int, body: bytes) -> bool:
        """Create one version (create-if-absent); False if that number is taken already."""
        try:
            self.store.put(self._key(name, version), body, if_none_match=True)
        except PreconditionFailed:
            return False
        self._prune(name, version)
        return True

    def newest(self, name: str) -> Versioned:
        """The newest readable version with its number, home and generation."""
        return self._newest(name)

    def newest_numbers(self) -> dict[str, int]:
        """The newest version number of every record, from one listing."""
        newest: dict[str, int] = {}
        for obj in self.store.list(self.prefix):
            name, _, number = obj.key[len(self.prefix) :].partition("/")
            newest[name] = max(newest.get(name, 0), int(number))
        return newest

    def marks(self) -> dict[str, object]:
        return dict(self.newest_numbers())

    def at(self, name: str, version: int) -> Versioned:
        """That version of a record, or the newest one if it cannot be read (pruned, torn)."""
        try:
            body = _decode(self.store.get(self._key(name, version)))
        except NotFound:
            body = None
        return _versioned(version, body) if body is not None else self._newest(name)

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
        for name, version in sorted(self.newest_numbers().items()):
            value = self.at(name, version).value
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


class MirroredRecords(Records):
    """Records kept in two regions, for a service with a secondary region (geo-redundant disks).

    A record that `mirrored(value)` says needs it is written to its *home* region's bucket and
    then copied to the other one. Its home is the primary region unless `in_secondary(value)`
    says it lives in the secondary (a disk that failed over). Within one region version numbers
    order the versions as usual; across the two, every version says its home and its
    *generation*, which moving the home increments. The newer generation wins; within one
    generation the home's own copy does (a copy may lag). So a failover can be recorded in the
    secondary alone, from its last mirrored copy, while the primary region is completely down,
    and it wins over whatever the primary holds once the primary comes back. Two home moves
    racing from the same generation (a failover and a failback at once) resolve to the secondary.

    A primary call that failed with `Unavailable` marks the primary down for `hold_seconds`:
    meanwhile records are read from the secondary (only mirrored ones exist there; anything
    else stays `Unavailable`) and only records whose home is the secondary can change. Without
    that, every control call would wait out the store's retry deadline again."""

    def __init__(
        self,
        primary: RecordStore,
        secondary: RecordStore,
        *,
        mirrored: Callable[[Record], bool],
        in_secondary: Callable[[Record], bool],
        hold_seconds: float = 30.0,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.mirrored = mirrored
        self.in_secondary = in_secondary
        self.hold_seconds = hold_seconds
        self.clock = primary.clock
        self._primary_down_until = 0.0

    # -- the primary's health ------------------------------------------------------------

    def primary_down(self) -> bool:
        """Whether a primary call failed with `Unavailable` in the last `hold_seconds`."""
        return self.clock.monotonic() < self._primary_down_until

    def _on_primary(self, call: Callable[[], T]) -> T:
        if self.primary_down():
            raise Unavailable("the primary region's store did not answer a moment ago")
        try:
            return call()
        except Unavailable:
            self._primary_down_until = self.clock.monotonic() + self.hold_seconds
            raise

    def _newest_in(self, region: RecordStore, name: str) -> Versioned:
        if region is self.primary:
            return self._on_primary(lambda: region.newest(name))
        return region.newest(name)

    def _create_in(self, region: RecordStore, name: str, version: int, body: bytes) -> bool:
        if region is self.primary:
            return self._on_primary(lambda: region.create_version(name, version, body))
        return region.create_version(name, version, body)

    # -- reading ------------------------------------------------------------------------

    @staticmethod
    def _winner(p: Versioned, s: Versioned | None) -> Versioned:
        if s is None or s.version == 0:
            return p
        if p.version == 0 or s.generation > p.generation:
            return s
        if p.generation > s.generation:
            return p
        if p.home == s.home == PRIMARY:
            return p
        return s

    def _read(self, name: str) -> tuple[Versioned, Versioned | None, Versioned | None]:
        """(the winning version, the primary's newest, the secondary's newest); None for a
        region not asked (a record that is not mirrored) or not answering."""
        try:
            p = self._newest_in(self.primary, name)
        except Unavailable:
            s = self.secondary.newest(name)  # raises Unavailable too if both are down
            if s.value is None:
                raise  # not mirrored, or deleted: only the primary can say
            return s, None, s
        if p.value is not None and not self.mirrored(p.value):
            return p, p, None
        try:
            s = self.secondary.newest(name)
        except Unavailable:
            log.warning("secondary region unreachable: record %s read from the primary", name)
            return p, p, None
        return self._winner(p, s), p, s

    def newest(self, name: str) -> Versioned:
        return self._read(name)[0]

    def items(self) -> Iterator[tuple[str, Record]]:
        """(name, value) of every live record, in name order; needs the primary."""
        in_primary = self._on_primary(self.primary.newest_numbers)
        try:
            in_secondary = self.secondary.newest_numbers()
        except Unavailable:
            in_secondary = {}
        for name in sorted(in_primary.keys() | in_secondary.keys()):
            p = (
                self.primary.at(name, in_primary[name])
                if name in in_primary
                else Versioned(0, None)
            )
            s = None
            if name in in_secondary and (p.value is None or self.mirrored(p.value)):
                s = self.secondary.at(name, in_secondary[name])
            value = self._winner(p, s).value
            if value is not None:
                yield name, value

    def marks(self) -> dict[str, object]:
        """Both regions' newest version numbers; the secondary's left out while it is away."""
        in_primary = self._on_primary(self.primary.newest_numbers)
        try:
            in_secondary = self.secondary.newest_numbers()
        except Unavailable:
            in_secondary = {}
        return {
            name: (in_primary.get(name), in_secondary.get(name))
            for name in in_primary.keys() | in_secondary.keys()
        }

    # -- writing ------------------------------------------------------------------------

    def update(self, name: str, change: Callable[[Record | None], Record | None]) -> Record | None:
        """As `RecordStore.update`, over both regions: the new version is created in the
        record's home (where `in_secondary` of the new value says), then mirrored."""
        for _ in range(MAX_RACES):
            read_at = self.clock.monotonic()
            current, p, s = self._read(name)
            new = change(current.value)
            if new is None and current.value is None:
                return None
            subject = new if new is not None else current.value
            assert subject is not None
            home = SECONDARY if self.in_secondary(subject) else PRIMARY
            generation = current.generation + (home != current.home)
            there, other, base = self.primary, self.secondary, p
            if home == SECONDARY:
                there, other, base = self.secondary, self.primary, s
            if base is None:
                base = self._newest_in(there, name)
            if self.clock.monotonic() - read_at > MAX_READ_AGE_SECONDS:
                continue  # too old a read to write on: its version number may be pruned
            body = _body(new, self.clock.time(), home, generation)
            if not self._create_in(there, name, base.version + 1, body):
                continue
            if self.mirrored(subject) and not self._mirror(other, name, body, generation):
                continue  # the other region moved the home meanwhile: apply on top of that
            return new
        raise Conflict(f"record {name} lost {MAX_RACES} update races in a row")

    def _mirror(self, to: RecordStore, name: str, body: bytes, generation: int) -> bool:
        """Copy a version to the other region, after its newest one there. False if that one
        is of a newer generation: the home moved while this change was made, and the change
        has to be applied again on top of it. An unreachable region is skipped: its copy is
        brought up to date by the next change, and a stale copy never wins."""
        try:
            for _ in range(MAX_RACES):
                there = self._newest_in(to, name)
                if there.generation > generation:
                    return False
                if self._create_in(to, name, there.version + 1, body):
                    return True
        except Unavailable:
            log.warning("record %s not mirrored: the other region is unreachable", name)
        return True
