"""`Cursor`: reads the fields of a decoded segment header or checkpoint body in order (the
codecs in this package turn its errors into `IntegrityError`)."""

from __future__ import annotations

import struct
from typing import Any


class Cursor:
    """Reads fields in order from a decoded body. A struct read past the end raises
    `struct.error`; `take` past the end returns fewer bytes (the caller checks where the format
    requires it). The decoders turn both into `IntegrityError`."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out

    def read_int(self, st: struct.Struct) -> int:
        return int(self.unpack(st)[0])

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def left(self) -> int:
        return len(self.buf) - self.pos
