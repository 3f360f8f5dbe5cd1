"""The uploader: one batch of records PUT as the segment at its log position.

A batch's segment is created with If-None-Match at its position, so a position holds one object
whoever writes it. When the PUT finds the position held, what holds it decides:

- our own bytes (an earlier attempt whose reply was lost stored them): the PUT succeeded;
- a newer writer's fence: this writer is superseded, `Fenced`, and acknowledges nothing more;
- an empty (torn) object our own PUT left when it died mid-body: `TornPosition`, and the
  commit pipeline takes the log up again past it (blockstore/engine/fencing.py);
- anything else: `IntegrityError`. Older writers' PUTs cannot be there: they all fall inside
  our own fence span (docs/format.md).

A failed PUT is not retried here (`RetryingStore` below does bounded retries); the pipeline
keeps the batch and sends it again. The encoded segment is kept on the batch until it is
acknowledged, so a re-sent PUT carries the same bytes.
"""

from __future__ import annotations

from concurrent.futures import Future

from blockstore.crypto.seal import Sealer
from blockstore.engine.config import VolumeConfig
from blockstore.errors import BlockstoreError, Fenced, IntegrityError, PreconditionFailed
from blockstore.format import keys
from blockstore.format.segment import LogRecord, decode_segment_header, encode_segment
from blockstore.store.base import ObjectStore
from blockstore.store.segment_head import read_segment_head


class TornPosition(BlockstoreError):
    """Our own segment PUT left an empty (torn) object at its position."""


class Batch:
    """Records that become one segment."""

    __slots__ = ("blob", "data_len", "first", "future", "n", "nbytes", "records", "seq")

    # `future` is the PUT in flight (None: not sent, or to be re-sent after an error).
    # `seq` is the log position; `n` the batch's ordinal in this handle, which waiters wait
    # for: a writer that resumes after its own torn PUT moves its batches to new positions.

    def __init__(self, seq: int, n: int, first: float) -> None:
        self.seq = seq
        self.n = n
        self.first = first
        self.records: list[LogRecord] = []
        self.nbytes = 0
        self.data_len = 0
        self.blob: bytes | None = None
        self.future: Future[None] | None = None


class SegmentUploader:
    """PUTs the batches of one writer epoch."""

    def __init__(
        self,
        store: ObjectStore,
        disk_id: str,
        epoch: int,
        config: VolumeConfig,
        sealer: Sealer | None,
        codec: int = 0,
    ) -> None:
        self.store = store
        self.codec = codec  # a compressed disk's (blockstore/format/codec.py)
        self.sealer = sealer  # an encrypted disk's: every segment is sealed
        self.disk_id = disk_id
        self.epoch = epoch
        self.config = config

    def put(self, b: Batch) -> None:
        """PUT batch `b` at its position; returns when the position holds our segment."""
        key = keys.segment_key(self.disk_id, b.seq)
        if b.blob is None:
            b.blob = encode_segment(
                key,
                self.disk_id,
                b.seq,
                self.epoch,
                self.config.coded_chunk
                if self.sealer or self.codec
                else self.config.checksum_chunk,
                b.records,
                self.sealer,
                self.codec,
            )
        try:
            self.store.put(key, b.blob, if_none_match=True)
            return
        except PreconditionFailed:
            pass
        self._settle_held(key, b.blob)

    def _settle_held(self, key: str, blob: bytes) -> None:
        """The position is held: succeed if by our own bytes, else raise what holds it."""
        raw = read_segment_head(self.store, key, self.config.header_read_bytes)
        if not raw:
            raise TornPosition(f"segment {key}: our PUT left an empty object there")
        hdr = decode_segment_header(raw, key)
        if hdr.epoch > self.epoch:
            raise Fenced(
                f"disk {self.disk_id!r}: writer epoch {self.epoch} was superseded by epoch "
                f"{hdr.epoch}; this handle may not commit any more"
            )
        if raw[: hdr.data_start] != blob[: hdr.data_start]:
            raise IntegrityError(
                f"segment {key} holds epoch {hdr.epoch}'s segment, not ours (epoch "
                f"{self.epoch}); refusing to acknowledge"
            )
