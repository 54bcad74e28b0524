"""The running node: receiver, series assembly, job scheduler, outbox sender and status endpoint.

:class:`Node` composes the stages; each is a ``run_once(..., now)`` called in turn by one loop
thread with the clock passed in, so tests can drive a pass by hand with :meth:`Node.run_once`.

Stages and the protocol the scheduler's parts implement::

    receiver   dicom_node.scp.start_receiver   (pynetdicom threads; records instances in the ledger)
    assembler  Assembler.run_once(now)          received -> complete | not_analysed
    submitter  submitter.run_once(ledger, now)  complete -> queued; outcomes; lost tasks resubmitted;
                                                status SRs for not_analysed jobs that want one
    sender     sender.run_once(now)             the durable outbox: C-STORE results, retry, dead-letter
    auditor    LedgerAuditor.run_once(now)      new ledger events -> the audit trail
    retention  Retention (a thread of its own)  purges delivered jobs' files by age and disk use

The submitter and sender come from ``dicom_node.submit.make_submitter(cfg, ledger, runner)`` and
``dicom_node.sender.make_sender(cfg, ledger)``. With the embedded queue the submitter runs jobs
with the ``runner`` the starting command hands in (``worker.embedded.make_runner``): the node
itself never imports the worker package.

Restart safety: no stage keeps state in memory. After a kill -9 the ledger still says where every
job is; on start the receiver closes the dead run's associations and records spooled files the
ledger missed, the assembler re-decides ``received`` jobs, and the submitter resubmits
``complete`` jobs and checks ``queued``/``running`` ones for lost tasks.

Signals: SIGTERM/SIGINT stop the receiver first (no new associations; open ones get
``receive_server.DRAIN_GRACE_S`` to finish, then are aborted), let the loop finish the pass it is
in, then stop the HTTP endpoint and record the stop in the state file.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pydicom.config

from dicom_node.assembler import Assembler
from dicom_node.config import Config
from dicom_node.httpstatus import status_snapshot, write_node_state
from dicom_node.ledger import Ledger
from dicom_node.names import LEDGER_FILE
from dicom_node.observability import audit, metrics
from dicom_node.observability.ledger_audit import LedgerAuditor
from dicom_node.retention import Retention
from dicom_node.sender import make_sender
from dicom_node.submit import JobRunner, make_submitter

if TYPE_CHECKING:
    from dicom_node.console.server import ConsoleServer

logger = logging.getLogger(__name__)

#: Seconds between loop passes when nothing is in flight.
LOOP_INTERVAL_S = 0.5
#: Seconds between passes while a series is about to complete or a job is queued or running:
#: each pass is a few indexed queries, and this bounds the delay each hand-over adds.
BUSY_INTERVAL_S = 0.1
#: /healthz reports the loop as stuck when its last pass ended longer ago than this.
LOOP_STALE_S = 120.0


class Submitter(Protocol):
    """Moves ``complete`` jobs into the queue and records what comes back."""

    def run_once(self, ledger: Ledger, now: float) -> object:
        """Submit complete eligible jobs, collect outcomes, resubmit lost ones; never raise for
        one job's problem (record it in the ledger instead)."""

    def health(self, now: float) -> list[str]:
        """Problems a health probe should see (an unreachable broker); empty when all is well."""


class Sender(Protocol):
    """Sends due deliveries of the durable outbox."""

    def run_once(self, now: float) -> object:
        """Attempt every due delivery once, recording each attempt in the ledger."""


def _redact(url: str) -> str:
    """A broker URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class Node:
    """The whole node in one process.

    Parameters
    ----------
    cfg:
        The validated configuration.
    submitter, sender:
        Injected stages (tests); by default ``make_submitter`` and ``make_sender``.
    runner:
        Runs one job in this process, for ``queue.broker_url: embedded``; required there.
    clock:
        Returns the current time for each loop pass.
    """

    def __init__(self, cfg: Config, *, submitter: Submitter | None = None, sender: Sender | None = None,
                 runner: JobRunner | None = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        # The node reads headers to route series, never to check them: pydicom's per-value
        # checks (regular expressions on every UID) take GIL time from the receiver, and their
        # warnings quote element values, which may be PHI.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.ledger = Ledger(cfg.data_dir / LEDGER_FILE)
        self.assembler = Assembler(cfg, self.ledger)
        self.submitter: Submitter = submitter if submitter is not None else make_submitter(cfg, self.ledger, runner)
        self.sender: Sender = sender if sender is not None else make_sender(cfg, self.ledger)
        self.auditor = LedgerAuditor(self.ledger, cfg.data_dir)
        self.retention = Retention(cfg, self.ledger)
        metrics.bind_ledger(self.ledger)
        self.receiver: Any = None
        self.http: ConsoleServer | None = None
        self.started_at = clock()
        self.last_pass_at: float | None = None
        self.stage_errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._loop: threading.Thread | None = None

    # -- one pass ------------------------------------------------------------------------------
    def run_once(self, now: float) -> dict[str, Any]:
        """Run each stage once; a stage that raises is logged and the others still run."""
        results: dict[str, Any] = {}
        stages: list[tuple[str, Callable[[], object]]] = [
            ("assembler", lambda: self.assembler.run_once(now)),
            ("submitter", lambda: self.submitter.run_once(self.ledger, now)),
            ("sender", lambda: self.sender.run_once(now)),
            ("audit", lambda: self.auditor.run_once(now)),
        ]
        for name, call in stages:
            try:
                results[name] = call()
                if self.stage_errors.pop(name, None) is not None:
                    logger.info("stage recovered", extra={"stage": name})
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one stage's bug
                if self.stage_errors.get(name) != repr(exc):
                    logger.exception("stage failed; retrying on the next pass", extra={"stage": name})
                self.stage_errors[name] = repr(exc)
        self.last_pass_at = self.clock()
        return results

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the receiver, the console (HTTP) and the loop thread; returns at once."""
        from dicom_node.scp import start_receiver  # pynetdicom only where the receiver runs

        audit.configure(self.cfg.data_dir, max_bytes=int(self.cfg.audit.max_file_mb * 1e6),
                        backup_count=self.cfg.audit.files_kept)
        self.receiver = start_receiver(self.cfg, self.ledger, on_release=self.wake)
        if self.cfg.http.enabled:
            # The console (FastAPI, uvicorn) is imported only where it is served.
            from dicom_node.console.context import Console
            from dicom_node.console.server import ConsoleServer

            try:
                self.http = ConsoleServer(Console(self.cfg, self.ledger, self.status, self.health, self.readiness,
                                                  self.clock))
            except OSError:
                self.receiver.shutdown()  # leave nothing listening behind
                raise
            self.http.start()
        self._loop = threading.Thread(target=self._run, name="node-loop", daemon=True)
        self._loop.start()
        self.retention.start()
        logger.info("dicom-node serving", extra={
            "ae_title": self.cfg.node.ae_title, "port": self.receiver.port, "data_dir": str(self.cfg.data_dir),
            "broker": _redact(self.cfg.queue.broker_url), "http_port": self.http.port if self.http else None,
            "submitter": type(self.submitter).__name__, "sender": type(self.sender).__name__})

    def wake(self) -> None:
        """Run the next pass now (an association was released: a series may be complete)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.run_once(self.clock())
            self._write_state()
            try:
                busy = self.ledger.has_work_in_flight()
            except Exception:  # noqa: BLE001 - a ledger hiccup must not end the loop
                busy = False
            self._wake.wait(BUSY_INTERVAL_S if busy else LOOP_INTERVAL_S)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop receiving, finish the loop's current pass, stop the endpoint."""
        self._stop.set()
        self._wake.set()
        if self.receiver is not None:
            self.receiver.shutdown()
        if self._loop is not None:
            self._loop.join(timeout)
            if self._loop.is_alive():
                logger.error("loop did not finish its pass in time; exiting anyway", extra={"timeout_s": timeout})
        for stage in (self.submitter, self.sender):
            close = getattr(stage, "close", None)
            if close is not None:
                close()  # e.g. the embedded runner finishes the job it is running
        if self.http is not None:
            self.http.shutdown()
        self.retention.stop()
        try:
            self.auditor.run_once()  # what the last pass and the stages' closing changed
        except Exception:  # noqa: BLE001 - stopping goes on
            logger.exception("audit: last pass failed")
        audit.close()
        self._write_state(stopped=True)
        logger.info("dicom-node stopped")

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT (main thread only); returns the exit code."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: stop.set())  # only set a flag in a handler
        self.start()
        while not stop.wait(1.0):
            if self._loop is not None and not self._loop.is_alive():  # pragma: no cover - defensive
                logger.error("scheduler loop died; stopping so that systemd restarts the node")
                self.stop()
                return 1
        logger.info("signal received; stopping")
        self.stop()
        return 0

    # -- status --------------------------------------------------------------------------------
    def health(self) -> list[str]:
        """Problems a probe should see; empty when healthy."""
        problems = []
        now = self.clock()
        if self.last_pass_at is None or now - self.last_pass_at > LOOP_STALE_S:
            problems.append("scheduler loop has not completed a pass recently")
        if self.receiver is None:
            problems.append("receiver not running")
        elif self.receiver.status().get("low_disk"):
            problems.append("low disk: refusing instances (node.min_free_disk_gb)")
        problems += [f"stage {name} failing: {error}" for name, error in sorted(self.stage_errors.items())]
        problems += self.submitter.health(now)
        return problems

    def readiness(self) -> list[str]:
        """Why the node cannot take work now (ledger, queue or model unusable); empty when ready."""
        from dicom_node.console.health import readiness_problems

        return readiness_problems(self.cfg, self.ledger, lambda: self.submitter.health(self.clock()))

    def status(self) -> dict[str, Any]:
        """The status document with this process's live receiver counters."""
        snapshot = status_snapshot(self.ledger, self.cfg, self.clock())
        snapshot["node"]["running"] = True
        snapshot["node"]["problems"] = self.health()
        if self.receiver is not None:
            snapshot["receiver"].update(self.receiver.status())
        return snapshot

    def _write_state(self, stopped: bool = False) -> None:
        now = self.clock()
        state = {"pid": os.getpid(), "started_at": self.started_at, "updated_at": now,
                 "stopped_at": now if stopped else None, "last_pass_at": self.last_pass_at,
                 "receiver": self.receiver.status() if self.receiver is not None else None,
                 "stages": {"submitter": type(self.submitter).__name__, "sender": type(self.sender).__name__,
                            **{f"{k}_error": v for k, v in self.stage_errors.items()}},
                 "problems": self.health() if not stopped else []}
        try:
            write_node_state(self.cfg.data_dir, state)
        except OSError as exc:
            logger.warning("cannot write the node state file", extra={"error": exc.strerror})
