"""Hostile calls straight to the plugin's callbacks, in-process (no nbdkit to check anything).

`nbdkit` exists only inside nbdkit, so a small stand-in module records `set_error`; the plugin
runs over a real HostCache and Volume on a MemoryStore. Offsets near 2**63, lengths past the
end, negative and unaligned values, zero lengths: each must fail with a clean errno (or succeed,
for zero lengths inside the disk) and leave the disk as it was.
"""

from __future__ import annotations

import errno
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from blockstore.cache.hostcache import HostCache, HostCacheConfig
from blockstore.engine.volume import Volume
from blockstore.store.memory import MemoryStore

SIZE = 4 << 20


@pytest.fixture(params=["none", "readonly", "readwrite"])
def plugin(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = types.ModuleType("nbdkit")
    errors: list[int] = []
    fake.set_error = errors.append  # type: ignore[attr-defined]
    fake.debug = lambda msg: None  # type: ignore[attr-defined]
    fake.parse_size = int  # type: ignore[attr-defined]
    for i, name in enumerate(["FLAG_MAY_TRIM", "FLAG_FUA", "FLAG_REQ_ONE", "FLAG_FAST_ZERO"]):
        setattr(fake, name, 1 << i)
    fake.EXTENT_HOLE, fake.EXTENT_ZERO = 1, 2  # type: ignore[attr-defined]
    fake.FUA_NATIVE, fake.THREAD_MODEL_PARALLEL = 2, 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nbdkit", fake)
    for module in ("plugin", "errors", "settings"):  # those that import `nbdkit`
        monkeypatch.delitem(sys.modules, f"nbd_plugin.{module}", raising=False)
    mod = importlib.import_module("nbd_plugin.plugin")
    store = MemoryStore()
    Volume.create(store, "d", SIZE)
    vol = Volume.open(store, "d")
    mod._cache = HostCache(
        vol, HostCacheConfig(mode=request.param, cache_size=2 << 20, dirty_limit=1 << 20),
        tmp_path / "c",
    )  # fmt: skip
    mod.errors = errors
    yield mod
    mod._cache.close()
    vol.close()


HOSTILE = [(2**63 - 512, 512), (2**63, 512), (SIZE, 512), (SIZE - 512, 1024), (-512, 512),
           (0, SIZE + 512), (100, 512), (512, 100), (2**64, 512)]  # fmt: skip


def test_hostile_callbacks_fail_cleanly_and_damage_nothing(plugin: Any) -> None:
    h = plugin.Handle(False)
    good = bytes(range(256)) * 16
    plugin.pwrite(h, good, 8192, 0)
    plugin.flush(h, 0)
    for off, n in HOSTILE:
        calls: list[tuple[Any, tuple[Any, ...]]] = [
            (plugin.pread, (h, bytearray(n), off, 0)),
            (plugin.pwrite, (h, b"\xff" * n, off, 0)),
            (plugin.trim, (h, n, off, 0)),
            (plugin.zero, (h, n, off, 0)),
            (plugin.extents, (h, n, off, 0)),
        ]
        for fn, args in calls:
            plugin.errors.clear()
            with pytest.raises(Exception):  # noqa: B017 - any exception, with errno set
                fn(*args)
            assert plugin.errors == [errno.EINVAL], (off, n, plugin.errors)
    for off in (0, SIZE):  # zero lengths inside the disk are no-ops, not errors
        plugin.pread(h, bytearray(0), off, 0)
        plugin.pwrite(h, b"", off, 0)
        plugin.trim(h, 0, off, 0)
    buf = bytearray(4096)
    plugin.pread(h, buf, 8192, 0)
    assert buf == good
    buf = bytearray(SIZE)
    plugin.pread(h, buf, 0, 0)
    assert buf[:8192] == bytes(8192) and buf[8192 + 4096 :] == bytes(SIZE - 8192 - 4096)
    plugin.flush(h, 0)
    ext = plugin.extents(h, SIZE, 0, 0)
    assert sum(n for _, n, _ in ext) == SIZE
