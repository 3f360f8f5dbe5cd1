"""Reading a layer's counters: every layer keeps a stats dataclass, and this is the one way to
copy one out (for the plugin's stats file, /metrics and the bench), so nobody re-counts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def counters(stats: object) -> dict[str, Any]:
    """A plain copy of a stats dataclass (dict fields copied too), safe to hand to another
    thread and to JSON."""
    out: dict[str, Any] = {}
    for f in fields(stats):  # type: ignore[arg-type]
        value = getattr(stats, f.name)
        out[f.name] = dict(value) if isinstance(value, dict) else value
    return out
