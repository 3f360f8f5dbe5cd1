"""Rooms stay small: no module of the product over 450 lines, no function over 60.

A module that grows past that is several jobs (STYLE.md, lesson 11); a function past that is
several ideas. Today nothing needs an exception, the codecs included.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("blockstore", "api", "cli", "nbd_plugin")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def product_files() -> list[Path]:
    return sorted(p for top in PRODUCT for p in (REPO / top).rglob("*.py"))


def test_no_module_is_over_450_lines() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in product_files()}
    assert {k: n for k, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(REPO)}:{node.name}"
                if lines > MAX_FUNCTION_LINES:
                    long[name] = lines
    assert long == {}
