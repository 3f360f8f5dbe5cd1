"""A process this service starts and owns: nbdkit for an export, `weed mini` for the embedded
store. Both keep their `subprocess.Popen` here, so "is it running" is asked one way."""

from __future__ import annotations

import subprocess


class ChildProcess:
    """The Popen of a child once started (None before)."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None
