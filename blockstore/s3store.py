"""`S3Store`: the object store on any S3-compatible endpoint, over the MinIO Python SDK.

Bottom of the stack on the data path. Chosen over boto3 because it costs about half the client
CPU per request on this 2-core machine (docs/s3-client.md has the figures); `Boto3Store` keeps the
same contract for comparison. One urllib3 connection pool is shared by every thread; no
per-request client or session is created.

Failure behaviour: nothing is retried here (urllib3 retries are off; `RetryingStore` owns retries
and their deadline). Transient failures (5xx, SlowDown, resets, timeouts, a body shorter than its
Content-Length) raise `Unavailable`; 404 raises `NotFound`; 412 raises `PreconditionFailed`;
access and bucket errors raise `StoreRejected`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from blockstore.errors import NotFound, PreconditionFailed, StoreRejected, Unavailable
from blockstore.objectstore import Buffer, ObjectInfo, ObjectStore, StoreStats

TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
)


@dataclass(frozen=True)
class S3Config:
    """Where the store is and how to reach it. Secrets never appear in repr or logs."""

    endpoint: str  # http(s)://host:port
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    prefix: str = ""  # prepended to every key, so several deployments can share a bucket
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_connections: int = 64

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"region={self.region!r}, prefix={self.prefix!r}, access_key=***, secret_key=***)"
        )


def _classify(exc: BaseException, key: str) -> NoReturn:
    """Turn an SDK or transport exception into the blockstore hierarchy (one place)."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        code = exc.code or ""
        if code in ("NoSuchKey", "NoSuchVersion") or (status == 404 and code != "NoSuchBucket"):
            raise NotFound(f"object {key!r} does not exist") from None
        if code == "PreconditionFailed" or status == 412:
            raise PreconditionFailed(f"object {key!r}: precondition failed") from None
        if status >= 500 or code in TRANSIENT_CODES:
            raise Unavailable(f"object store busy or failing ({status} {code}) on {key!r}") from exc
        raise StoreRejected(
            f"object store refused {key!r}: {status} {code}: {exc.message}"
        ) from exc
    if isinstance(exc, ServerError):
        raise Unavailable(f"object store failed ({exc.status_code}) on {key!r}") from exc
    if isinstance(exc, InvalidResponseError):
        raise Unavailable(f"object store sent a malformed response on {key!r}") from exc
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | MinioException):
        raise Unavailable(f"object store unreachable on {key!r}: {type(exc).__name__}") from exc
    raise exc


class S3Store(ObjectStore):
    """An `ObjectStore` on one bucket of an S3-compatible endpoint."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.stats = StoreStats()
        self._stats_lock = threading.Lock()
        url = urlsplit(config.endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"endpoint must be http(s)://host:port, not {config.endpoint!r}")
        pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            maxsize=config.max_connections,
            retries=False,
            block=False,
        )
        self._client = Minio(
            url.netloc,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=url.scheme == "https",
            region=config.region,
            http_client=pool,
        )
        self._bucket = config.bucket
        self._prefix = config.prefix

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _error(self, exc: BaseException, key: str) -> NoReturn:
        try:
            _classify(exc, key)
        except NotFound:
            self._count(not_found=1)
            raise
        except PreconditionFailed:
            self._count(precondition_failed=1)
            raise
        except (Unavailable, StoreRejected) as err:
            with self._stats_lock:
                self.stats.count_error(type(err).__name__)
            raise

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (embedded store and tests)."""
        try:
            if not self._client.bucket_exists(self._bucket):
                self._client.make_bucket(self._bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._error(exc, self._bucket)
        except Exception as exc:
            self._error(exc, self._bucket)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        self._count(gets=1)
        if length == 0:
            return b""
        response: Any = None
        whole = False
        try:
            response = self._client.get_object(
                self._bucket, self._prefix + key, offset=start, length=length or 0
            )
            data: bytes = response.read()
            expected = response.headers.get("content-length")
            whole = expected is None or int(expected) == len(data)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return b""
            self._error(exc, key)
        except Exception as exc:
            self._error(exc, key)
        finally:
            _release(response, whole)
        if expected is not None and int(expected) != len(data):
            self._error(urllib3.exceptions.ProtocolError("short body"), key)
        self._count(bytes_fetched=len(data))
        return data

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        """Like `get`, but the body goes from the socket straight into `buf` (no bytes object
        per GET, no copy afterwards): a cold 1 MiB read otherwise allocates, faults in and
        copies 1 MiB more than it needs to."""
        self._count(gets=1)
        want = len(buf)
        if want == 0:
            return 0
        response: Any = None
        got, expected = 0, -1
        try:
            response = self._client.get_object(
                self._bucket, self._prefix + key, offset=start, length=want
            )
            expected = int(response.headers.get("content-length", -1))
            raw = getattr(response, "_fp", None)  # http.client's response under urllib3's
            if raw is None or response.headers.get("content-encoding") or expected > want:
                data = response.read()
                got = min(len(data), want)
                buf[:got] = memoryview(data)[:got]
            else:
                while got < want:
                    n = raw.readinto(buf[got:])
                    if not n:
                        break
                    got += n
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return 0
            self._error(exc, key)
        except Exception as exc:
            self._error(exc, key)
        finally:
            _release(response, expected == got)  # no length given: we cannot know it ended
        if expected >= 0 and expected != got:
            self._error(urllib3.exceptions.ProtocolError("short body"), key)
        self._count(bytes_fetched=got)
        return got

    def put(
        self,
        key: str,
        data: Buffer,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        headers: dict[str, str | list[str] | tuple[str]] = {}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        self._count(puts=1, conditional_puts=1 if headers else 0)
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            # put_object() would rename If-None-Match into user metadata; _put_object sends
            # the headers as given. Pinned SDK version (pyproject.toml) keeps this stable.
            result = self._client._put_object(self._bucket, self._prefix + key, body, headers)
        except Exception as exc:
            self._error(exc, key)
        self._count(bytes_uploaded=len(body))
        return str(result.etag or "")

    def delete(self, key: str) -> None:
        self._count(deletes=1)
        try:
            self._client.remove_object(self._bucket, self._prefix + key)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                self._error(exc, key)
        except Exception as exc:
            self._error(exc, key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self._count(lists=1)
        strip = len(self._prefix)
        try:
            for obj in self._client.list_objects(
                self._bucket,
                prefix=self._prefix + prefix,
                recursive=True,
                start_after=self._prefix + start_after if start_after else None,
            ):
                name = obj.object_name or ""
                yield ObjectInfo(
                    key=name[strip:], size=obj.size or 0, etag=(obj.etag or "").strip('"')
                )
        except Exception as exc:
            self._error(exc, prefix)

    def head(self, key: str) -> ObjectInfo:
        self._count(heads=1)
        try:
            st = self._client.stat_object(self._bucket, self._prefix + key)
        except Exception as exc:
            self._error(exc, key)
        return ObjectInfo(key=key, size=st.size or 0, etag=(st.etag or "").strip('"'))

    def close(self) -> None:
        self._client._http.clear()


def _release(response: Any, whole: bool) -> None:
    """Give a GET's connection back to the pool. Only a connection whose body was read to its
    end can carry the next request; any other is closed. (urllib3's `close()` closes the
    connection itself: calling it after every GET made every GET open a new TCP connection.)"""
    if response is None:
        return
    if not whole:
        response.close()
    response.release_conn()
