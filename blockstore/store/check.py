"""The start-up check of a configured (external) object store: one clear answer, in bounded time.

`blockstore serve` calls `check_store()` before anything else touches the store, so that a
configuration mistake ends the start with one line saying what to do instead of a traceback
from deep inside the service:

- the endpoint does not answer (nothing listening, a firewall, a store that hangs): retried
  until `seconds` have passed, each attempt bounded by short timeouts, then `Unavailable`;
- the credentials are refused (403 InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied):
  `InvalidArgument` at once (retrying cannot help);
- the bucket does not exist: it is created if the credentials may; if the store refuses,
  `InvalidArgument` saying to create it or to name an existing one.

Nothing here runs on the data path; the service's own store stack is built afterwards.
"""

from __future__ import annotations

import re
from dataclasses import replace

from blockstore.clock import SYSTEM_CLOCK, Clock
from blockstore.errors import InvalidArgument, StoreRejected, Unavailable
from blockstore.store.s3 import S3Config, S3Store

# One attempt may take this long at most: long enough for a slow store's first answer, short
# enough that a store that accepts connections and never answers is noticed quickly.
ATTEMPT_TIMEOUT = 5.0
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
REGION_CODES = frozenset(
    {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}
)
CREDENTIALS_HINT = (
    "check BLOCKSTORE_S3_ACCESS_KEY and BLOCKSTORE_S3_SECRET_KEY (or [s3] in <home>/config.toml)"
)


def check_store(s3: S3Config, seconds: float, clock: Clock = SYSTEM_CLOCK) -> str | None:
    """Check that `s3` answers, accepts the credentials and has the bucket (creating it when
    allowed). Returns a note for the log ("created bucket ..."), or None. Raises
    `InvalidArgument` (a configuration to fix) or `Unavailable` (nothing answered in time),
    each with a message that names the endpoint and says what to do."""
    short = replace(
        s3,
        connect_timeout=min(s3.connect_timeout, ATTEMPT_TIMEOUT),
        read_timeout=min(s3.read_timeout, ATTEMPT_TIMEOUT),
    )
    store = S3Store(short)
    where = f"the object store at {s3.endpoint}"
    try:
        try:
            _probe(store, seconds, clock, where)
            return None
        except StoreRejected as exc:
            if exc.code != "NoSuchBucket":
                raise _rejected(exc, s3, where) from None
        try:
            store.create_bucket()
        except StoreRejected as exc:
            raise InvalidArgument(
                f"bucket {s3.bucket!r} does not exist at {s3.endpoint} and the store refused to "
                f"create it ({_code(exc)}): create it there, or set BLOCKSTORE_S3_BUCKET to a "
                "bucket these credentials may use"
            ) from None
        _probe(store, seconds, clock, where)
        return f"created bucket {s3.bucket!r} at {s3.endpoint}"
    finally:
        store.close()


def _probe(store: S3Store, seconds: float, clock: Clock, where: str) -> None:
    """One listing of the bucket, retried while nothing answers, up to `seconds`."""
    deadline = clock.monotonic() + seconds
    attempts = 0
    while True:
        attempts += 1
        try:
            for _ in store.list("control/"):
                break
            return
        except Unavailable as exc:
            left = deadline - clock.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"{where} did not answer ({attempts} attempts in {seconds:g} s; last: "
                    f"{_reason(exc)}): check BLOCKSTORE_S3_ENDPOINT and that the store is "
                    "running and reachable from this host"
                ) from None
            clock.sleep(min(1.0, left))


def _rejected(exc: StoreRejected, s3: S3Config, where: str) -> InvalidArgument:
    if exc.code in CREDENTIAL_CODES:
        return InvalidArgument(
            f"{where} refused these credentials for bucket {s3.bucket!r} ({_code(exc)}): "
            + CREDENTIALS_HINT
        )
    if exc.code in REGION_CODES:
        return InvalidArgument(
            f"{where} says bucket {s3.bucket!r} is not in region {s3.region!r} ({exc.code}): "
            "set BLOCKSTORE_S3_REGION to the bucket's region"
        )
    return InvalidArgument(f"{where} refused access to bucket {s3.bucket!r}: {exc}")


def _code(exc: StoreRejected) -> str:
    return exc.code or str(exc)


def _reason(exc: Unavailable) -> str:
    """The transport's own words ("Connection refused", "Read timed out"), not its repr."""
    cause = exc.__cause__
    text = f"{cause!s}" if cause is not None else str(exc)
    m = _ERRNO.search(text) or _TIMEOUT.search(text)
    if m:
        return m.group(1)
    return type(cause).__name__ if cause is not None else text


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_TIMEOUT = re.compile(r"((?:Read|Connect)[a-z ]* timed out|timed out)", re.IGNORECASE)
