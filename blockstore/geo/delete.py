"""Remove a whole copy of a disk from one store (a grs disk's copy in the other region).

The volume record goes last, so a copy cut short by a crash is still found, and removed, by a
later attempt. blockstore/engine/volume.py (`Volume.destroy`) removes a disk in the same order;
the two are to become one function.
"""

from __future__ import annotations

from blockstore.format import keys
from blockstore.store.base import ObjectStore


def delete_copy(store: ObjectStore, disk_id: str) -> int:
    """Remove every object of a disk's copy on `store` (the volume record last)."""
    objects = [i.key for i in store.list(keys.disk_prefix(disk_id))]
    meta = keys.volume_key(disk_id)
    for key in objects:
        if key != meta:
            store.delete(key)
    store.delete(meta)
    return len(objects)
