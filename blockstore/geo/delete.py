"""Remove a whole copy of a disk from one store (a grs disk's copy in the other region).

The order is the engine's (`engine/lifecycle.delete_all`): the volume record goes last, so a
copy cut short by a crash is still found, and removed, by a later attempt.
"""

from __future__ import annotations

from blockstore.engine.lifecycle import delete_all
from blockstore.format import keys
from blockstore.store.base import ObjectStore


def delete_copy(store: ObjectStore, disk_id: str) -> int:
    """Remove every object of a disk's copy on `store`; how many there were."""
    objects = [i.key for i in store.list(keys.disk_prefix(disk_id))]
    delete_all(store, disk_id, objects)
    return len(objects)
