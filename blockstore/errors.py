"""The one exception hierarchy of blockstore.

Every layer raises these; the API maps them to HTTP status in one place (`api/errors.py`) and
the NBD plugin maps them to errno in one place (`nbd_plugin/plugin.py`). Messages are meant for
a person: they say what was wrong and, where it helps, what to do instead.
"""

from __future__ import annotations


class BlockstoreError(Exception):
    """Base of every error blockstore raises on purpose."""


class InvalidArgument(BlockstoreError):
    """The caller asked for something malformed or out of range (HTTP 422, EINVAL)."""


class NotFound(BlockstoreError):
    """The named disk, snapshot, operation or object does not exist (HTTP 404, ENOENT)."""


class Conflict(BlockstoreError):
    """The request clashes with the current state, e.g. deleting an attached disk (HTTP 409)."""


class PreconditionFailed(Conflict):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class Fenced(Conflict):
    """This writer's epoch was superseded by a newer writer; it may not commit any more."""


class Unavailable(BlockstoreError):
    """The object store did not answer in the bounded retry time (HTTP 503, EIO)."""


class StoreRejected(BlockstoreError):
    """The object store refused a request for good (access denied, no such bucket): not retried.

    `code` is the store's S3 error code (``NoSuchBucket``, ``AccessDenied``...), "" if none."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class IntegrityError(BlockstoreError):
    """Bytes read from the store do not match their checksum, or an object is malformed (EIO)."""


class Unauthorized(BlockstoreError):
    """Missing or wrong API token (HTTP 401)."""
