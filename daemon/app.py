"""The daemon's components, wired once and handed to every service.

:func:`edged.daemon.server.build_app` makes one :class:`App`. What each part
does lives in its own module: backend selection in :mod:`.selection`,
calibration runs in :mod:`.calibrator`, workers and memory in
:mod:`.scheduler`, conversations in :mod:`.sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edged.daemon.calibrator import Calibrator
from edged.daemon.config import ServerConfig
from edged.daemon.metrics import Metrics
from edged.daemon.scheduler import Scheduler
from edged.daemon.selection import Selection
from edged.daemon.sessions import SessionStore
from edged.models_registry.store import Store


@dataclass
class App:
    config: ServerConfig
    store: Store
    scheduler: Scheduler
    sessions: SessionStore
    selection: Selection
    calibrator: Calibrator
    metrics: Metrics = field(default_factory=Metrics)
    http_url: str = ""  # set once the HTTP listener is bound ("" = off)
