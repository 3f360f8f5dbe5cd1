"""Where the tree under test is (also when it is a git worktree) and its entry points."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent / "blockstore")  # the CLI of the venv running the tests
