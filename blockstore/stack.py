"""Builds the object-store stack, bottom up, in the order DESIGN.md draws it.

    RetryingStore   bounded retries with jitter; gives up with Unavailable at the deadline
      S3Store       MinIO SDK, one connection pool, errors mapped to the blockstore hierarchy

Retries sit above the S3 client and below everything else, so the volume sees one call that
either succeeded or failed for good; the deadline is what bounds an NBD client's wait for EIO.
"""

from __future__ import annotations

from blockstore.objectstore import ObjectStore
from blockstore.retry import RetryConfig, RetryingStore
from blockstore.s3store import S3Config, S3Store


def build_store(s3: S3Config, retry: RetryConfig | None = None) -> ObjectStore:
    return RetryingStore(S3Store(s3), retry or RetryConfig())
