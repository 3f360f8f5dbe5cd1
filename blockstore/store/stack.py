"""Builds the object-store stack, bottom up, in the order DESIGN.md draws it.

    RetryingStore   bounded retries with jitter; gives up with Unavailable at the deadline
      S3Store       libcurl with a pool of kept-alive handles, errors mapped to the blockstore
                    hierarchy (listing and bucket creation through the MinIO SDK)

Retries sit above the S3 client and below everything else, so the volume sees one call that
either succeeded or failed for good; the deadline is what bounds an NBD client's wait for EIO.

With a secondary region configured (geo-redundant disks), read repair sits on top:

    RepairingStore  segments/checkpoints missing or damaged here are read from the secondary,
      RetryingStore   verified, served and written back (blockstore/store/repair.py)
      RetryingStore   (secondary) over its own S3Store

It sits above the retries on both sides so that a repair is attempted only once a read has
failed for good (NotFound) or returned bytes that do not verify, never on a transient error.
"""

from __future__ import annotations

from blockstore.store.base import ObjectStore
from blockstore.store.repair import RepairingStore
from blockstore.store.retry import RetryConfig, RetryingStore
from blockstore.store.s3 import S3Config, S3Store


def build_store(
    s3: S3Config, retry: RetryConfig | None = None, secondary: S3Config | None = None
) -> ObjectStore:
    primary = RetryingStore(S3Store(s3), retry or RetryConfig())
    if secondary is None:
        return primary
    return RepairingStore(primary, RetryingStore(S3Store(secondary), retry or RetryConfig()))
