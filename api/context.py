"""What a request handler may touch, built once by `blockstore serve` (api/serve.py) or a test.

`create_app` keeps it in `app.state.context`; routes reach it through the `Context` dependency
(api/routes/common.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from api.session import SessionStore
from blockstore.control.sampling import HistorySampler
from blockstore.control.service import ControlService
from blockstore.errors import Unavailable
from blockstore.host.config import Settings
from blockstore.store.base import ObjectStore
from blockstore.store.health import StoreProbe


@dataclass
class AppContext:
    """The settings, the store, the API token, the console's sessions and the services the
    routes call."""

    settings: Settings
    store: ObjectStore
    token: str = field(repr=False)  # the API's bearer token: never in a log line
    control: ControlService | None = None
    health: StoreProbe | None = None  # None: create_app makes one on `store`
    history: HistorySampler | None = None  # disks' performance history (blockstore serve's)
    # Set when the server begins to stop: long-lived answers (the event stream) end then,
    # or the server would wait for them forever.
    stopping: threading.Event = field(default_factory=threading.Event)
    sessions: SessionStore = field(default_factory=SessionStore)  # signed-in web consoles

    def service(self) -> ControlService:
        if self.control is None:
            raise Unavailable("the control plane is not running on this server")
        return self.control

    def close(self) -> None:
        if self.health is not None:
            self.health.close()
