"""A fault-injecting HTTP proxy on 127.0.0.1, put between a store client and the real SeaweedFS.

Tests point the S3 endpoint at `FaultProxy.endpoint`; requests are forwarded unchanged (the
Host header included, so SigV4 signatures still match) until a fault is armed:

- ``"503"``: answer 503 with an S3 ``SlowDown`` error body;
- ``"500"``: answer 500 with an S3 ``InternalError`` body;
- ``"full"``: answer 507 with an S3 ``InsufficientStorage`` body (a store out of space);
- ``"reset"``: forward, then send the response headers and half the body and reset the
  connection (RST via SO_LINGER 0);
- ``"truncate"``: forward, then send the full Content-Length header but only half the body and
  close the connection cleanly;
- ``"stall"``: hold the request until the fault is cleared (or `stall_seconds`), then forward.
- ``"down"``: reset the connection without forwarding or answering: the store is gone.

`methods` limits a fault to some HTTP methods (e.g. ``{"GET"}``), `path` to requests whose
path holds that text (e.g. ``"/seg/"``: the data path of a disk, not its records), `count` to
the next N matching requests (None: until cleared). `stats` counts what happened (also
"requests" and client "connections"). Only the test that started it stops it (`close()`).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "500", "full", "reset", "truncate", "stall", "down")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


class _Server(ThreadingHTTPServer):
    """socketserver's default backlog of 5 drops SYNs when a fence or an upload pool opens
    a dozen connections at once on a loaded machine; the client then times out connecting
    (curl error 28) before any fault was armed."""

    request_queue_size = 128


class FaultProxy:
    def __init__(self, upstream: str, port: int = 0) -> None:
        u = urlsplit(upstream)
        self.upstream_host = u.hostname or "127.0.0.1"
        self.upstream_port = u.port or 80
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._methods: frozenset[str] | None = None
        self._path: str | None = None
        self._count: int | None = None
        self._cleared = threading.Event()
        self._cleared.set()
        self.stall_seconds = 60.0
        self.stats: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                proxy.stats["connections"] += 1

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def arm(
        self,
        fault: str,
        *,
        methods: set[str] | None = None,
        path: str | None = None,
        count: int | None = None,
    ) -> None:
        assert fault in FAULTS, fault
        with self._lock:
            self._fault = fault
            self._methods = frozenset(methods) if methods else None
            self._path = path
            self._count = count
            if fault == "stall":
                self._cleared.clear()

    def clear(self) -> None:
        with self._lock:
            self._fault = None
            self._cleared.set()

    def close(self) -> None:
        self.clear()
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            if self._fault is None or (self._methods and method not in self._methods):
                return None
            if self._path is not None and self._path not in path:
                return None
            fault = self._fault
            if self._count is not None:
                self._count -= 1
                if self._count <= 0:
                    self._fault = None
                    self._cleared.set()
            self.stats[fault] += 1
            return fault

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._take(h.command, h.path)
        self.stats["requests"] += 1
        if fault == "down":
            h.close_connection = True
            self._reset(h)
            return
        if fault in ("503", "500", "full"):
            code, name = {"503": (503, "SlowDown"), "500": (500, "InternalError"),
                          "full": (507, "InsufficientStorage")}[fault]  # fmt: skip
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
                f"<Message>injected by faultproxy</Message></Error>"
            ).encode()
            h.send_response(code)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(xml)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(xml)
            return
        if fault == "stall":
            self._cleared.wait(self.stall_seconds)
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            h.close_connection = True
            self._reset(h)
            return
        finally:
            conn.close()
        h.send_response_only(resp.status, resp.reason)
        # HEAD: the store's own Content-Length, the object's size (a HEAD has no body to count;
        # saying 0 made every object look empty, which the engine reads as a torn segment).
        head = h.command == "HEAD"
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and (head or k.lower() != "content-length"):
                h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if head:
            return
        if fault in ("reset", "truncate") and data:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            if fault == "reset":
                self._reset(h)
            return
        if fault in ("reset", "truncate"):
            h.close_connection = True
            self._reset(h)
            return
        h.wfile.write(data)

    @staticmethod
    def _reset(h: BaseHTTPRequestHandler) -> None:
        """Close with RST rather than FIN."""
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass
        time.sleep(0)
