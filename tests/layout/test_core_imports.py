"""The core (`blockstore/`) imports no adapter: no web framework, no CLI toolkit, no nbdkit.

`api/`, `cli/` and `nbd_plugin/` are adapters over the core (STYLE.md, lesson 14). Two checks:
every import statement in the core's source, lazy ones inside functions included, and what
importing every core module actually loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "blockstore"
ADAPTERS = {
    "fastapi",
    "starlette",
    "uvicorn",
    "typer",
    "rich",
    "httpx",
    "nbdkit",
    "api",
    "cli",
    "nbd_plugin",
}


def core_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in CORE.rglob("*.py")
    )


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_core_source_imports_an_adapter() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(imported_roots(p) & ADAPTERS) for p in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_whole_core_loads_no_adapter() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {core_modules()!r}: importlib.import_module(m)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {sorted(ADAPTERS)!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
