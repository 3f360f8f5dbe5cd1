"""The thrasher's fault proxy: tests/faultproxy.py's `FaultProxy` with HEAD answered honestly.

`FaultProxy._serve` sends `Content-Length: len(body read)` on every response; for HEAD the body
read is empty, so every HEAD through it says the object has 0 bytes. blockstore's fence reads a
segment of size 0 as a torn (empty) object and counts it and every older-epoch segment after it
void (blockstore/volume.py, `Volume._fence`), so a host behind that proxy that force-attaches a
disk drops the old writer's last acknowledged segments from its map: the thrasher's first
"lost write" findings were this harness bug, not the product's. Here HEAD passes the store's
own Content-Length through; everything else is the same proxy.
"""

from __future__ import annotations

import http.client
from http.server import BaseHTTPRequestHandler

from tests.faultproxy import _HOP, FaultProxy


class HonestHeadProxy(FaultProxy):
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        if h.command != "HEAD":
            super()._serve(h)
            return
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        fault = self._take(h.command, h.path)
        self.stats["requests"] += 1
        if fault in ("down", "reset", "truncate"):
            h.close_connection = True
            self._reset(h)
            return
        if fault in ("503", "500"):
            h.send_response(503 if fault == "503" else 500)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault == "stall":
            self._cleared.wait(self.stall_seconds)
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            conn.request("HEAD", h.path, headers=headers)
            resp = conn.getresponse()
            resp.read()
        except OSError:
            h.close_connection = True
            self._reset(h)
            return
        finally:
            conn.close()
        h.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:  # Content-Length included: the object's real size
                h.send_header(k, v)
        h.end_headers()
