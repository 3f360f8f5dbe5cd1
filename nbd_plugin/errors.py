"""The one place core errors become the errno an NBD client sees."""

from __future__ import annotations

import errno
from typing import NoReturn

import nbdkit

from blockstore.errors import (
    BlockstoreError,
    Fenced,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)

_ERRNO = (
    (InvalidArgument, errno.EINVAL),
    (NotFound, errno.ENOENT),
    (Fenced, errno.EPERM),  # a newer writer owns the disk: this export serves nothing more
    (Unavailable, errno.EIO),
    (IntegrityError, errno.EIO),
)


def fail(exc: BaseException) -> NoReturn:
    """Set the errno the client will see for `exc`, then let nbdkit see the exception."""
    code = errno.EIO
    if isinstance(exc, BlockstoreError):
        for cls, value in _ERRNO:
            if isinstance(exc, cls):
                code = value
                break
    elif isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    elif isinstance(exc, (OverflowError, ValueError, TypeError)):
        code = errno.EINVAL  # hostile arguments handed straight to a callback
    nbdkit.set_error(code)
    raise exc
