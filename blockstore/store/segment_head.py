"""Reading a segment's header from a store: the one function the engine (replay, fencing, the
commit pipeline) and read repair (`repair.py`) share.

A segment's header has no fixed length (it lists every record and its checksums), so it is read
with one ranged GET of `HEADER_READ_BYTES`, which holds every header of up to a few thousand
small records, and a second GET for the rest only when the prefix says it is longer.
"""

from __future__ import annotations

from blockstore.format.segment import segment_header_length
from blockstore.store.base import ObjectStore

HEADER_READ_BYTES = 64 << 10


def read_segment_head(store: ObjectStore, key: str, first_read: int = HEADER_READ_BYTES) -> bytes:
    """The first bytes of segment `key`, at least its whole header: one ranged GET, two when
    the header is longer than `first_read`. b"" for an empty (torn) object; `IntegrityError`
    when the bytes are not a segment's; `NotFound` when there is no object."""
    head = store.get(key, 0, first_read)
    if not head:
        return head
    need = segment_header_length(head, key)
    if need > len(head):
        head += store.get(key, len(head), need - len(head))
    return head
