"""The one module that owns object key names under a disk (`disks/<disk-id>/...`).

Every other module builds and parses keys through these functions, so the layout of a bucket is
readable in one place and can change in one place. The layout (see docs/format.md):

    disks/<id>/volume.json                     volume metadata (size at creation, clone source)
    disks/<id>/replication.json                geo-replication marker (on the target region only)
    disks/<id>/epoch/<epoch:08x>               writer epoch claim, created with If-None-Match: *
    disks/<id>/seg/<seq:016x>                  immutable log segment or fence (one per seq)
    disks/<id>/ckpt/<seq:016x>                 immutable checkpoint of the extent map at <seq>
    disks/<id>/snap/<name>.json                snapshot record (pins a checkpoint)
    disks/<id>/snap/<name>.deleting            tombstone while a snapshot is being deleted
    disks/<id>/snap/<name>.clones/<clone-id>   a clone depends on this snapshot
    control/disks/<name>/<version:020d>        disk record versions (blockstore/control/records.py)
    control/operations/<id>/<version:020d>     long-running operation record versions

Fixed-width hexadecimal numbers make the store's ascending key order the numeric order, so a
listing is already sorted by seq or epoch. Names are validated here and nowhere else; a bad name
raises `InvalidArgument` naming it. Nothing here touches the store.
"""

from __future__ import annotations

import re

from blockstore.errors import InvalidArgument

# Whole-string matches: `$` also matches before a trailing newline ("name\n" passed), so the
# patterns end in `\Z` (end of string), which keeps even a caller's `.match()` exact, and
# this module uses `fullmatch`.
NAME = r"[a-z0-9][a-z0-9-]{0,62}"  # a disk id or snapshot name: 1-63 of a-z, 0-9, '-'
DISK_ID_RE = re.compile(NAME + r"\Z")

_SEG_RE = re.compile(rf"disks/({NAME})/seg/([0-9a-f]{{16}})\Z")
_CKPT_RE = re.compile(rf"disks/({NAME})/ckpt/([0-9a-f]{{16}})\Z")
_EPOCH_RE = re.compile(rf"disks/{NAME}/epoch/([0-9a-f]{{8}})\Z")
_SNAP_RE = re.compile(rf"disks/{NAME}/snap/({NAME})\.json\Z")
_CLONE_RE = re.compile(rf"disks/{NAME}/snap/({NAME})\.clones/({NAME})\Z")

CONTROL_DISKS_PREFIX = "control/disks/"
CONTROL_OPERATIONS_PREFIX = "control/operations/"
CONTROL_GROUPS_PREFIX = "control/groups/"  # group snapshots (blockstore/control/groups.py)

MAX_SEQ = (1 << 64) - 1
MAX_EPOCH = (1 << 32) - 1


def validate_name(value: str, what: str = "name") -> str:
    """Return `value` if it is a valid disk id or snapshot name (all of it `NAME`)."""
    if not isinstance(value, str) or not DISK_ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {what} {value!r}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return value


def validate_disk_id(disk_id: str) -> str:
    return validate_name(disk_id, "disk id")


def validate_snapshot_name(name: str) -> str:
    return validate_name(name, "snapshot name")


def disk_prefix(disk_id: str) -> str:
    # The trailing slash matters: "disks/a" would also match "disks/ab/...".
    return f"disks/{validate_disk_id(disk_id)}/"


def volume_key(disk_id: str) -> str:
    return disk_prefix(disk_id) + "volume.json"


def protection_key(disk_id: str) -> str:
    """The disk's data-protection settings (its retention window: engine/points.py)."""
    return disk_prefix(disk_id) + "protection.json"


_DATA_KEY_RE = re.compile(rf"disks/{NAME}/keys/(k[0-9a-f]{{16}})\.([a-z0-9-]{{1,63}})\.json\Z")


def data_key_prefix(disk_id: str) -> str:
    """Where an encrypted disk's wrapped data keys live (blockstore/crypto/keyring.py)."""
    return disk_prefix(disk_id) + "keys/"


def data_key_key(disk_id: str, key_id: str, kek_id: str) -> str:
    key = f"{data_key_prefix(disk_id)}{key_id}.{kek_id}.json"
    if parse_data_key_key(key) is None:
        raise InvalidArgument(f"data key {key_id!r} / KEK {kek_id!r} make no valid key name")
    return key


def parse_data_key_key(key: str) -> tuple[str, str] | None:
    """(key id, KEK id) of a wrapped data key's object key."""
    m = _DATA_KEY_RE.search(key)
    return (m.group(1), m.group(2)) if m else None


def restored_key(disk_id: str, original: str) -> str:
    """Where a disk restored from a backup keeps its copy of object `original` (a segment or
    checkpoint of the backed-up disk, blockstore/control/backups.py)."""
    return disk_prefix(disk_id) + "restored/" + original


# A backup target's layout (under its own prefix): copies of primary objects by their key, and
# one manifest per complete backup.
BACKUP_OBJECTS_PREFIX = "objects/"
BACKUP_MANIFESTS_PREFIX = "manifests/"


def backup_object_key(original: str) -> str:
    return BACKUP_OBJECTS_PREFIX + original


def backup_manifest_key(backup_id: str) -> str:
    return f"{BACKUP_MANIFESTS_PREFIX}{validate_name(backup_id, 'backup id')}.json"


def replication_progress_key(disk_id: str) -> str:
    """The replicator's marker (last sync time, frontier); it lives only on the target side."""
    return disk_prefix(disk_id) + "replication.json"


def epoch_prefix(disk_id: str) -> str:
    return disk_prefix(disk_id) + "epoch/"


def epoch_key(disk_id: str, epoch: int) -> str:
    return f"{epoch_prefix(disk_id)}{epoch:08x}"


def parse_epoch_key(key: str) -> int | None:
    """The epoch of a claim key, or None if `key` is not one."""
    m = _EPOCH_RE.fullmatch(key)
    return int(m.group(1), 16) if m else None


def segment_prefix(disk_id: str) -> str:
    return disk_prefix(disk_id) + "seg/"


def segment_key(disk_id: str, seq: int) -> str:
    # One key per seq, whoever writes it: create-if-absent on this key is what fences an older
    # writer (docs/format.md, "Fencing"). The writer's epoch is in the segment header.
    return f"{segment_prefix(disk_id)}{seq:016x}"


def _disk_and_seq(pattern: re.Pattern[str], key: str) -> tuple[str, int] | None:
    m = pattern.fullmatch(key)
    return (m.group(1), int(m.group(2), 16)) if m else None


def parse_segment_key(key: str) -> tuple[str, int] | None:
    """(disk id, seq), or None if `key` is not a segment key."""
    return _disk_and_seq(_SEG_RE, key)


def checkpoint_prefix(disk_id: str) -> str:
    return disk_prefix(disk_id) + "ckpt/"


def checkpoint_key(disk_id: str, seq: int) -> str:
    return f"{checkpoint_prefix(disk_id)}{seq:016x}"


def parse_checkpoint_key(key: str) -> tuple[str, int] | None:
    """(disk id, seq), or None if `key` is not a checkpoint key."""
    return _disk_and_seq(_CKPT_RE, key)


def snapshot_prefix(disk_id: str) -> str:
    return disk_prefix(disk_id) + "snap/"


def snapshot_key(disk_id: str, name: str) -> str:
    return f"{snapshot_prefix(disk_id)}{validate_snapshot_name(name)}.json"


def snapshot_deleting_key(disk_id: str, name: str) -> str:
    return f"{snapshot_prefix(disk_id)}{validate_snapshot_name(name)}.deleting"


def parse_snapshot_key(key: str) -> str | None:
    """The snapshot name if `key` is a snapshot record key, else None."""
    m = _SNAP_RE.fullmatch(key)
    return m.group(1) if m else None


def clone_ref_prefix(disk_id: str, name: str) -> str:
    return f"{snapshot_prefix(disk_id)}{validate_snapshot_name(name)}.clones/"


def clone_ref_key(disk_id: str, name: str, clone_id: str) -> str:
    return clone_ref_prefix(disk_id, name) + validate_disk_id(clone_id)


def parse_clone_ref_key(key: str) -> tuple[str, str] | None:
    """(snapshot name, clone disk id) if `key` is a clone registration, else None."""
    m = _CLONE_RE.fullmatch(key)
    return (m.group(1), m.group(2)) if m else None
