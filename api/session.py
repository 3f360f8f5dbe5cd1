"""Console sessions: what lets a browser use the API without ever holding the token in script.

The web console (api/console/) signs in once with the API token (`POST /v1/session`) and from
then on is recognised by an HttpOnly, SameSite=Strict cookie holding a random session id. The
token itself never reaches a URL, a cookie or anything a page script can read back.

Kept here, in memory only, so a service restart signs every console out (the token signs in
again): a session is its id's SHA-256 (a memory dump yields no usable cookie), an absolute
expiry, and nothing else. The table is bounded: past `max_sessions` the session closest to
expiry is dropped, so signing in in a loop cannot grow memory. Thread-safe: the guard checks
sessions on the event loop, the route dependencies in the thread pool. Time comes from an
injected clock, so the expiry tests need not wait.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass

from blockstore.clock import SYSTEM_CLOCK, Clock

COOKIE = "blockstore_session"
CONSOLE_HEADER = "x-blockstore-console"  # a cross-site form cannot send it; a cross-site
# fetch that sends it needs a CORS preflight, which this server never grants
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def cookie_value(cookie_header: str, name: str = COOKIE) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None


@dataclass(frozen=True)
class SessionConfig:
    lifetime_seconds: float = SESSION_SECONDS
    max_sessions: int = MAX_SESSIONS


class SessionStore:
    """Signed-in consoles: random ids handed out as cookies, checked and revoked here."""

    def __init__(self, config: SessionConfig | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config or SessionConfig()
        self.clock = clock
        self._expiry: dict[str, float] = {}  # digest of the id -> wall-clock expiry
        self._lock = threading.Lock()

    def create(self) -> str:
        """A new session id (256 random bits); the oldest session goes when the table is full."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock.time()
        with self._lock:
            self._drop_expired(now)
            while len(self._expiry) >= self.config.max_sessions:
                del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
            self._expiry[_digest(session_id)] = now + self.config.lifetime_seconds
        return session_id

    def valid(self, session_id: str | None) -> bool:
        """Whether `session_id` is a live session (an expired one is forgotten on the way)."""
        if not session_id:
            return False
        key = _digest(session_id)
        with self._lock:
            expiry = self._expiry.get(key)
            if expiry is None:
                return False
            if expiry <= self.clock.time():
                del self._expiry[key]
                return False
            return True

    def revoke(self, session_id: str | None) -> None:
        """Sign a session out: its cookie is refused from now on, whoever still holds it."""
        if session_id:
            with self._lock:
                self._expiry.pop(_digest(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(self.clock.time())
            return len(self._expiry)

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, t in self._expiry.items() if t <= now]:
            del self._expiry[key]
