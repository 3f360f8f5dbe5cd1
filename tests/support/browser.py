"""A real headless Chromium for the web console's tests: Debian's `chromium`, driven by
Playwright for Python (which downloads no browser of its own: it is pointed at the system's).

Also what the console tests look at the way a person's tools would: the accessible names
Chromium computes for every control (its accessibility tree, over the DevTools protocol), and
where screenshots go (`test-artifacts/console/`, not tracked).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright

from tests.support.paths import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "console"
README_SCREENSHOT = REPO / "docs" / "console.png"
# Roles a person operates: each must have a name a screen reader can say.
CONTROL_ROLES = {
    "button", "textbox", "searchbox", "combobox", "checkbox", "radio", "link", "spinbutton",
    "slider", "switch", "tab", "menuitem", "listbox", "option",
}  # fmt: skip


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless. --no-sandbox: the tests run as root."""
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} missing: ./scripts/setup.sh installs Debian's chromium")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
    )


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot under test-artifacts/console/ and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def publish_readme_screenshot(path: Path) -> None:
    """Copy the disk-with-graphs screenshot to docs/console.png when it is missing or when
    BLOCKSTORE_UPDATE_SCREENSHOT=1 (so an ordinary test run leaves the tracked file alone)."""
    if not README_SCREENSHOT.exists() or os.environ.get("BLOCKSTORE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, README_SCREENSHOT)


def unnamed_controls(page: Page) -> list[str]:
    """The operable controls on the page (not hidden) without an accessible name, as Chromium
    computes names (aria-label, <label>, text...): '<role> <html>' for each."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes: list[dict[str, Any]] = cdp.send("Accessibility.getFullAXTree")["nodes"]
        bad = []
        for node in nodes:
            role = node.get("role", {}).get("value")
            if node.get("ignored") or role not in CONTROL_ROLES:
                continue
            if not str(node.get("name", {}).get("value", "")).strip():
                backend = node.get("backendDOMNodeId")
                html = "?"
                if backend is not None:
                    described = cdp.send("DOM.describeNode", {"backendNodeId": backend})
                    html = str(described["node"].get("localName"))
                    attrs = described["node"].get("attributes", [])
                    html += " " + " ".join(
                        f"{k}={v!r}" for k, v in zip(attrs[::2], attrs[1::2], strict=False)
                    )
                bad.append(f"{role} {html}")
        return bad
    finally:
        cdp.detach()


def controls_named(page: Page) -> int:
    """How many operable controls the accessibility tree holds (to know the check saw some)."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
        return sum(
            1
            for n in nodes
            if not n.get("ignored") and n.get("role", {}).get("value") in CONTROL_ROLES
        )
    finally:
        cdp.detach()


def tab_to(page: Page, matches: Callable[[dict[str, Any]], bool], limit: int = 60) -> None:
    """Press Tab until the focused element matches (given {id, text, label, tag}); fails after
    `limit` presses, so an unreachable control is a test failure, not a hang."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const e = document.activeElement; return { id: e.id, tag: e.tagName,
            text: (e.textContent || '').trim(), label: e.getAttribute('aria-label') || '' }; }"""
        )
        if matches(focused):
            return
    raise AssertionError(f"no focusable element matched within {limit} Tab presses")


def focus_ring(page: Page) -> str:
    """The focused element's outline ('none' if focus is not visible)."""
    return str(
        page.evaluate(
            """() => { const s = getComputedStyle(document.activeElement);
            return s.outlineStyle === 'none' || s.outlineWidth === '0px'
                ? 'none' : `${s.outlineStyle} ${s.outlineWidth}`; }"""
        )
    )
