"""The embedded transport: jobs run in this process, on one background thread, without a broker."""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from dicom_node.config import Config
from dicom_node.contract import LANES
from dicom_node.ledger import Ledger
from dicom_node.submit.scheduler import Submitter

logger = logging.getLogger(__name__)

#: Runs the job whose manifest is at this path (relative to ``data_dir``), writing its outcome;
#: ``worker.embedded.make_runner`` builds the real one.
JobRunner = Callable[[str], object]


class EmbeddedSubmitter(Submitter):
    """Runs jobs in this process, one at a time, on a background thread (no broker needed).

    Lanes are honoured: a stat job waiting behind a batch backlog runs next. Tasks live only in
    memory, so after a restart every queued or running job is found lost and resubmitted.

    Parameters
    ----------
    cfg, ledger:
        As for every submitter.
    runner:
        Runs one job; handed in by the command that starts the node, so that the node does not
        depend on the worker package.
    """

    def __init__(self, cfg: Config, ledger: Ledger | None = None, *, runner: JobRunner) -> None:
        super().__init__(cfg, ledger)
        if not callable(runner):
            raise TypeError(f"runner must be callable; got {type(runner).__name__}")
        self.runner = runner
        self._queue: queue.PriorityQueue[tuple[int, int, str, int, str]] = queue.PriorityQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def _send(self, job_id: int, manifest_rel: str, lane: str, task_id: str) -> None:
        with self._lock:
            self._pending.add(task_id)
            self._seq += 1
            self._queue.put((LANES.index(lane), self._seq, task_id, job_id, manifest_rel))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="embedded-worker", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            _, _, task_id, job_id, manifest_rel = self._queue.get()
            if job_id < 0:
                return
            try:
                self.runner(manifest_rel)
            except Exception:
                logger.exception("embedded job raised; it will be found lost", extra={"job": job_id})
            finally:
                with self._lock:
                    self._pending.discard(task_id)

    def _in_flight(self, task_ids: set[str], now: float, waiting_only: bool = False) -> set[str] | None:
        with self._lock:
            return task_ids & self._pending

    def idle(self) -> bool:
        """True when no job is waiting or running here."""
        with self._lock:
            return not self._pending

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put((-1, -1, "", -1, ""))
            self._thread.join(timeout=self.cfg.queue.time_limit_s)
