"""`S3Store`: the object store on any S3-compatible endpoint.

Bottom of the stack on the data path. The object calls of the data path (GET, PUT, HEAD,
DELETE) go through libcurl (pycurl), which also signs them (SigV4): it costs about a third of
the MinIO SDK's client CPU per request (docs/s3-client.md has the measurements). A request
takes an idle curl handle from a pool (each keeps its connection alive) and puts it back when
done. Bucket creation and listing stay on
the MinIO SDK (its XML parsing; not on the data path).

Failure behaviour: nothing is retried here (`RetryingStore` owns retries and their deadline).
One request takes at most the connect and read timeouts (a PUT: the read timeout plus 1 ms per
KiB of body); inside an NBD request, also at most one read timeout past the request's deadline
(blockstore/deadline.py).
Transient failures (5xx, SlowDown, resets, timeouts, a body shorter than its Content-Length)
raise `Unavailable`; 404 raises `NotFound`; 412 raises `PreconditionFailed`; access and bucket
errors raise `StoreRejected`.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import quote, urlsplit

import pycurl
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from blockstore import deadline as request_deadline
from blockstore.clock import SYSTEM_CLOCK
from blockstore.errors import NotFound, PreconditionFailed, StoreRejected, Unavailable
from blockstore.store.base import Buffer, ObjectInfo, ObjectStore, StoreStats

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


_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_CA_BUNDLE = next(
    (f for f in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
     if os.path.exists(f)),
    None,
)  # fmt: skip
_GET_BUFFER = 256 * 1024  # libcurl hands a GET body over in pieces of up to this size


class _HttpStatus(Exception):
    """A curl request answered with an error status (and the S3 error code, if any)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


class _Reply:
    """What one curl request answered. Header lines are only collected while it runs (the
    list's own append is the callback: no Python frame per line) and read when needed."""

    __slots__ = ("error_body", "lines", "sink", "status")

    def __init__(self, sink: Callable[[bytes], None] | None) -> None:
        self.sink = sink
        self.status = 0
        self.lines: list[bytes] = []
        self.error_body = bytearray()

    def write(self, chunk: bytes) -> None:
        """The body callback: a 2xx body goes to the sink, an error body is kept for its code."""
        if not self.status:  # the headers are all in: the last status line is this body's
            line = next(x for x in reversed(self.lines) if x.startswith(b"HTTP/"))
            self.status = int(line.split(None, 2)[1])
        if self.status < 300 and self.sink is not None:
            self.sink(chunk)
        elif len(self.error_body) < 65536:
            self.error_body += chunk

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lower case) in the final response, if it has one."""
        for line in reversed(self.lines):
            if line.startswith(b"HTTP/"):  # a status line starts a response (again after a 100)
                return None
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == name:
                return value.strip()
        return None

    @property
    def etag(self) -> str:
        value = self.header(b"etag")
        return value.decode("latin-1").strip('"') if value else ""

    @property
    def length(self) -> int:
        value = self.header(b"content-length")
        return int(value) if value else -1

    def failure(self) -> _HttpStatus:
        m = _ERROR_CODE.search(self.error_body)
        return _HttpStatus(self.status, m.group(1).decode("latin-1") if m else "")


def _classify(exc: BaseException, key: str) -> NoReturn:
    """Turn an SDK or transport exception into the blockstore hierarchy (one place)."""
    if isinstance(exc, S3Error | _HttpStatus):
        if isinstance(exc, S3Error):
            status = exc.response.status if exc.response is not None else 0
            code, message = exc.code or "", exc.message
        else:
            status, code, message = exc.status, exc.code, ""
        if code in ("NoSuchKey", "NoSuchVersion") or (status == 404 and code != "NoSuchBucket"):
            raise NotFound(f"object {key!r} does not exist") from None
        if code == "PreconditionFailed" or status == 412:
            raise PreconditionFailed(f"object {key!r}: precondition failed") from None
        if status >= 500 or code in TRANSIENT_CODES:
            raise Unavailable(f"object store busy or failing ({status} {code}) on {key!r}") from exc
        raise StoreRejected(
            f"object store refused {key!r}: {status} {code}: {message}", code=code
        ) from exc
    if isinstance(exc, pycurl.error):
        errno, text = exc.args if len(exc.args) == 2 else (0, str(exc))
        raise Unavailable(
            f"object store unreachable on {key!r}: curl error {errno}: {text}"
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
        self._base = f"{config.endpoint.rstrip('/')}/{quote(config.bucket, safe='')}/"
        # Curl handles not in use, each keeping its connection alive. A pool, not one handle
        # per thread: nbdkit runs each callback in a fresh Python thread state, so a
        # thread-local handle lasted one request (a new connection every time).
        self._idle: list[pycurl.Curl] = []
        self._handles: list[pycurl.Curl] = []  # all of them, for close()
        self._handles_lock = threading.Lock()

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
                self.create_bucket()
        except Exception as exc:
            self._error(exc, self._bucket)

    def create_bucket(self) -> None:
        """Create the bucket (one that exists already is fine). `StoreRejected` when the
        credentials may not create buckets."""
        try:
            self._client.make_bucket(self._bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._error(exc, self._bucket)
        except Exception as exc:
            self._error(exc, self._bucket)

    def _take(self) -> pycurl.Curl:
        """An idle handle (or a new one), reset to the options every request shares."""
        try:
            c = self._idle.pop()
            c.reset()  # keeps the connection
        except (IndexError, pycurl.error):  # none idle, or one close() closed in flight
            c = pycurl.Curl()
            with self._handles_lock:
                self._handles.append(c)
        cfg = self.config
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.AWS_SIGV4, f"aws:amz:{cfg.region}:s3")  # libcurl signs (in C)
        c.setopt(pycurl.USERNAME, cfg.access_key)
        c.setopt(pycurl.PASSWORD, cfg.secret_key)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(cfg.connect_timeout * 1000)))
        # The read timeout as urllib3 has it: fail when nothing arrives for that long.
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(cfg.read_timeout)))
        if _CA_BUNDLE is not None and self._base.startswith("https:"):
            c.setopt(pycurl.CAINFO, _CA_BUNDLE)
        return c

    def _request(
        self,
        method: str,
        key: str,
        headers: list[str],
        *,
        body: bytes | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> _Reply:
        """One request; the body of a 2xx answer goes to `sink`. Raises `_HttpStatus` for an
        error status and pycurl.error for a transport failure (a body cut short included)."""
        c = self._take()
        try:
            return self._perform(c, method, key, headers, body, sink)
        finally:
            self._idle.append(c)

    def _perform(
        self,
        c: pycurl.Curl,
        method: str,
        key: str,
        headers: list[str],
        body: bytes | None,
        sink: Callable[[bytes], None] | None,
    ) -> _Reply:
        reply = _Reply(sink)
        url = self._base + quote(self._prefix + key, safe="/-_.~")
        c.setopt(pycurl.URL, url)
        # UNSIGNED-PAYLOAD: the payload is not hashed for the signature (segments carry their
        # own checksums); "Expect:" stops curl waiting for a 100 Continue before a PUT body.
        fixed = ["Expect:", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
        c.setopt(pycurl.HEADERFUNCTION, reply.lines.append)
        c.setopt(pycurl.WRITEFUNCTION, reply.write)
        cap = None  # ms the whole request may take
        if method == "PUT":
            assert body is not None
            # The low-speed check cannot see a server that stalls after taking the body (the
            # bytes just sent keep the measured speed up): cap the whole request instead, at
            # the read timeout plus 1 ms per KiB of body (1 MiB/s at the least).
            cap = 1000 * self.config.read_timeout + len(body) / 1024
        left = request_deadline.remaining(SYSTEM_CLOCK)
        if left is not None:
            # Inside an NBD request: at most one request timeout past the request's deadline
            # (blockstore/deadline.py), whatever the body's size.
            past = 1000 * (max(left, 0.0) + self.config.read_timeout)
            cap = past if cap is None else min(cap, past)
        if cap is not None:
            c.setopt(pycurl.TIMEOUT_MS, max(1, int(cap)))
        if method == "PUT":
            # The body straight from our bytes (pycurl keeps a reference, libcurl sends from
            # it): no read callback per 64 KiB. The empty Content-Type drops POST's default.
            c.setopt(pycurl.CUSTOMREQUEST, "PUT")
            c.setopt(pycurl.POSTFIELDS, body)
            fixed.append("Content-Type:")
        elif method == "HEAD":
            c.setopt(pycurl.NOBODY, 1)
        elif method == "DELETE":
            c.setopt(pycurl.CUSTOMREQUEST, "DELETE")
        else:
            c.setopt(pycurl.BUFFERSIZE, _GET_BUFFER)
        c.setopt(pycurl.HTTPHEADER, fixed + headers)
        try:
            c.perform()
        finally:
            if body is not None:
                c.setopt(pycurl.POSTFIELDS, b"")  # an idle handle must not pin a segment
        reply.status = c.getinfo(pycurl.RESPONSE_CODE)
        if reply.status >= 300:
            raise reply.failure()
        return reply

    @staticmethod
    def _range(start: int, length: int | None) -> list[str]:
        if length:
            return [f"Range: bytes={start}-{start + length - 1}"]
        return [f"Range: bytes={start}-"] if start else []

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        self._count(gets=1)
        if length == 0:
            return b""
        chunks: list[bytes] = []
        try:
            reply = self._request("GET", key, self._range(start, length), sink=chunks.append)
        except _HttpStatus as exc:
            if exc.status == 416:  # InvalidRange: nothing at or past `start`
                return b""
            self._error(exc, key)
        except Exception as exc:
            self._error(exc, key)
        data = b"".join(chunks)
        if reply.length >= 0 and reply.length != len(data):
            self._error(urllib3.exceptions.ProtocolError("short body"), key)
        self._count(bytes_fetched=len(data))
        return data

    def get_into(self, key: str, start: int, buf: memoryview) -> int:
        """Like `get`, but the body goes into `buf` as it arrives (no bytes object for the
        whole body, no copy afterwards): a cold 1 MiB read otherwise allocates, faults in and
        copies 1 MiB more than it needs to."""
        self._count(gets=1)
        want = len(buf)
        if want == 0:
            return 0
        received = 0

        def into(chunk: bytes) -> None:
            nonlocal received
            n = min(len(chunk), want - received)
            if n > 0:
                buf[received : received + n] = chunk if n == len(chunk) else chunk[:n]
            received += len(chunk)

        try:
            reply = self._request("GET", key, self._range(start, want), sink=into)
        except _HttpStatus as exc:
            if exc.status == 416:
                return 0
            self._error(exc, key)
        except Exception as exc:
            self._error(exc, key)
        if reply.length >= 0 and reply.length != received:
            self._error(urllib3.exceptions.ProtocolError("short body"), key)
        got = min(received, want)
        self._count(bytes_fetched=got)
        return got

    def put(
        self, key: str, data: Buffer, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        headers = []
        if if_none_match:
            headers.append("If-None-Match: *")
        if if_match is not None:
            headers.append(f'If-Match: "{if_match}"')
        self._count(puts=1, conditional_puts=1 if headers else 0)
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            reply = self._request("PUT", key, headers, body=body)
        except Exception as exc:
            self._error(exc, key)
        self._count(bytes_uploaded=len(body))
        return reply.etag

    def delete(self, key: str) -> None:
        self._count(deletes=1)
        try:
            self._request("DELETE", key, [])
        except _HttpStatus as exc:
            if exc.status != 404 or exc.code == "NoSuchBucket":
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
                    key=name[strip:],
                    size=obj.size or 0,
                    etag=(obj.etag or "").strip('"'),
                    modified=obj.last_modified.timestamp() if obj.last_modified else None,
                )
        except Exception as exc:
            self._error(exc, prefix)

    def head(self, key: str) -> ObjectInfo:
        self._count(heads=1)
        try:
            reply = self._request("HEAD", key, [])
        except Exception as exc:
            self._error(exc, key)
        return ObjectInfo(key=key, size=max(reply.length, 0), etag=reply.etag)

    def close(self) -> None:
        """Close every connection. Only when no request is in flight; a later request opens
        new ones."""
        with self._handles_lock:
            handles, self._handles = self._handles, []
            self._idle.clear()
        for c in handles:
            c.close()
        self._client._http.clear()
