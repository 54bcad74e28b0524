"""What the console reads and calls, handed in by the node: :class:`Console`."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.config import Config
from dicom_node.console.identifiers import IdentifierCache
from dicom_node.console.views import Views
from dicom_node.ledger import Ledger


@dataclass
class Console:
    """What the console reads and calls, handed in by the node.

    Parameters
    ----------
    cfg:
        The node's configuration (``http.session_minutes``, ``http.cookie_secure``, data folder).
    ledger:
        The node's ledger.
    status:
        Returns the status document (``dicom_node.httpstatus.status_snapshot`` plus live counters).
    health:
        Problems that make ``/healthz`` fail (empty when alive).
    readiness:
        Problems that make ``/readyz`` fail (empty when ledger, queue and model are usable).
    clock:
        Current time (tests pass their own).
    """

    cfg: Config
    ledger: Ledger
    status: Callable[[], dict[str, Any]]
    health: Callable[[], list[str]]
    readiness: Callable[[], list[str]]
    clock: Callable[[], float] = time.time
    views: Views = field(init=False)

    def __post_init__(self) -> None:
        identifiers = IdentifierCache(lambda uid: [self._path(p) for p in self.ledger.study_instance_paths(uid)])
        self.views = Views(self.ledger, identifiers, self.cfg.data_dir)

    def _path(self, recorded: Path) -> Path:
        return recorded if recorded.is_absolute() else self.cfg.data_dir / recorded
