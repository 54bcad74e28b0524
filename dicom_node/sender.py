"""The outbox sender: C-STOREs each job's result files to every configured destination.

``Sender.run_once(now)`` looks at the ledger's due deliveries and hands each destination's share
to a thread of its own, so a slow or dead destination (one that accepts TCP and never answers,
say) never holds up another; every attempt is also time-boxed by ``destination.timeout_s``.
A delivery is marked sent only when every instance got a success status (0x0000, or the
warnings B000/B006/B007, which mean "stored"). A failed attempt is retried with exponential
backoff and jitter (``backoff_base_s`` .. ``backoff_max_s``); after ``max_attempts`` the delivery
is dead, visible in ``dicom-node status``, and ``dicom-node retry`` requeues it.

HL7 and webhook notifications (``notify:``) are rows of the same outbox with their own kind;
the same loop sends them through ``dicom_node.notify.send``, one thread per receiver.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from dicom_node.config import Config, Destination
from dicom_node.ledger import Delivery, Ledger
from dicom_node.notify.send import notify_once, receiver_for
from dicom_node.observability import events as observed

logger = logging.getLogger(__name__)

#: C-STORE statuses that mean the instance is stored (PS3.4 B.2.3): success, and the warnings
#: "coercion of data elements" (B000), "elements discarded" (B006), "data set does not match
#: SOP class" (B007).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})

#: ``send(destination, paths) -> one status per path (None when no response)``; raises on a
#: failure of the association as a whole.
SendFn = Callable[[Destination, Sequence[Path]], list[int | None]]


class Retrying(Protocol):
    """The retry plan a DICOM destination and a notification receiver share."""

    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float


def backoff_s(attempt: int, dest: Retrying, rng: random.Random) -> float:
    """Delay before the next attempt after failed attempt number ``attempt`` (1-based).

    Exponential, capped, with jitter in [delay/2, delay] so that many deliveries that failed
    together (a PACS restart) do not all come back in the same second.
    """
    delay = min(dest.backoff_max_s, dest.backoff_base_s * 2 ** max(0, attempt - 1))
    return delay * (0.5 + 0.5 * rng.random())


def files_for(files: list[dict[str, Any]] | None, dest: Destination) -> list[dict[str, Any]]:
    """The result files of a job that ``dest`` wants (``destination.send``)."""
    return [f for f in files or [] if f.get("type") in dest.send]


def scu_send(dest: Destination, paths: Sequence[Path], calling_ae: str) -> list[int | None]:
    """C-STORE ``paths`` with ``dicom_node.scu`` (exact SOP classes, the file's own syntax plus the
    destination's ``transfer_syntax``), time-boxed by ``dest.timeout_s``; one status per file.

    Raises ``scu.DeliveryError`` when the peer cannot be reached, rejects or aborts.
    """
    from dicom_node.scu import send_files

    results = send_files(paths, dest, calling_ae, dest.transfer_syntax, dest.timeout_s)
    return [r.status for r in results]


class Sender:
    """Sends due deliveries; one thread per destination at a time.

    Parameters
    ----------
    cfg:
        Destinations and the node's AE title (the calling AE).
    ledger:
        The durable outbox.
    data_dir:
        Where result paths are relative to (default ``cfg.data_dir``).
    send:
        Replaces the network send (tests of the retry bookkeeping).
    rng:
        Source of the backoff jitter.
    """

    def __init__(self, cfg: Config, ledger: Ledger, data_dir: str | Path | None = None, *,
                 send: SendFn | None = None, rng: random.Random | None = None) -> None:
        self.cfg, self.ledger = cfg, ledger
        self.data_dir = Path(data_dir if data_dir is not None else cfg.data_dir)
        self._send = send or (lambda dest, paths: scu_send(dest, paths, cfg.node.ae_title))
        self.rng = rng or random.Random()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def run_once(self, now: float | None = None, *, wait: bool = False) -> dict[str, int]:
        """Start sending every due delivery; returns ``{"started": n, "busy": m}`` destinations.

        With ``wait`` the call returns only when those sends are finished (CLI, tests).
        """
        now = time.time() if now is None else now
        by_dest: dict[str, list[Delivery]] = {}
        for delivery in self.ledger.due_deliveries(now):
            by_dest.setdefault(delivery.destination, []).append(delivery)
        started = busy = 0
        for name, deliveries in by_dest.items():
            with self._lock:
                thread = self._threads.get(name)
                if thread is not None and thread.is_alive():
                    busy += 1
                    continue
                thread = threading.Thread(target=self._drain, args=(name, deliveries), name=f"send-{name}",
                                          daemon=True)
                self._threads[name] = thread
                thread.start()
                started += 1
        if wait:
            self.wait()
        return {"started": started, "busy": busy}

    def wait(self, timeout: float | None = None) -> None:
        """Join the sending threads (each is bounded by its destination's timeouts)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    close = wait

    def _drain(self, name: str, deliveries: list[Delivery]) -> None:
        try:
            for delivery in deliveries:
                self.attempt(delivery)
        except Exception:
            logger.exception("sender thread failed", extra={"destination": name})
        finally:
            self.ledger.close()  # this thread's SQLite connection

    def attempt(self, delivery: Delivery, now: float | None = None) -> bool:
        """Send one job's files to one destination (or one notification) once and record the
        attempt; True when sent."""
        if delivery.kind != "dicom":
            return self._notify(delivery, now)
        try:
            dest = self.cfg.destination(delivery.destination)
        except Exception:
            self.ledger.delivery_attempted(delivery.id, ok=False, dead=True, now=now,
                                           error=f"destination {delivery.destination!r} is no longer configured")
            observed.delivery_attempted(delivery.job_id, delivery.destination, delivery.kind, "dead",
                                        delivery.attempts + 1, "destination no longer configured")
            logger.error("delivery dead: destination not configured", extra={"job": delivery.job_id,
                                                                             "destination": delivery.destination})
            return False
        job = self.ledger.job(delivery.job_id)
        files = files_for(job.files, dest)
        log = {"job": job.id, "destination": dest.name, "files": len(files), "attempt": delivery.attempts + 1}
        error: str | None = None
        started = time.time()
        if files:
            try:
                statuses = self._send(dest, [self.data_dir / f["path"] for f in files])
                failed = [(f["type"], s) for f, s in zip(files, statuses) if s not in STORED_STATUSES]
                if failed:
                    error = "; ".join(f"{kind}: {'no response' if s is None else f'status 0x{s:04X}'}"
                                      for kind, s in failed[:5])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
        now = time.time() if now is None else now
        if error is None:
            self.ledger.delivery_attempted(delivery.id, ok=True, now=now)
            logger.info("results delivered", extra={**log, "seconds": round(time.time() - started, 3)})
            observed.delivery_attempted(job.id, dest.name, delivery.kind, "sent", delivery.attempts + 1)
            return True
        return self._failed(delivery, dest, error, log, now)

    def _notify(self, delivery: Delivery, now: float | None) -> bool:
        """One attempt at an HL7 or webhook notification (``dicom_node.notify.send``)."""
        result = notify_once(self.cfg, self.ledger, delivery, self.data_dir, now)
        now = time.time() if now is None else now
        if result.error is None:
            self.ledger.delivery_attempted(delivery.id, ok=True, now=now)
            observed.delivery_attempted(delivery.job_id, delivery.destination, delivery.kind, "sent",
                                        delivery.attempts + 1)
            return True
        log = {"job": delivery.job_id, "destination": delivery.destination, "attempt": delivery.attempts + 1}
        try:
            receiver = receiver_for(self.cfg, delivery.destination)
        except KeyError:
            receiver = None
        if result.permanent or receiver is None:
            self.ledger.delivery_attempted(delivery.id, ok=False, error=result.error, dead=True, now=now)
            observed.delivery_attempted(delivery.job_id, delivery.destination, delivery.kind, "dead",
                                        delivery.attempts + 1, result.error)
            logger.error("notification dead: retrying cannot help; fix, then `dicom-node retry`",
                         extra={**log, "error": result.error})
            return False
        return self._failed(delivery, receiver, result.error or "", log, now)

    def _failed(self, delivery: Delivery, dest: Retrying, error: str, log: dict[str, Any], now: float) -> bool:
        """Record a failed attempt: retry after a backoff, or dead after the last attempt."""
        attempt = delivery.attempts + 1
        observed.delivery_attempted(delivery.job_id, delivery.destination, delivery.kind,
                                    "dead" if attempt >= dest.max_attempts else "retry", attempt, error)
        if attempt >= dest.max_attempts:
            self.ledger.delivery_attempted(delivery.id, ok=False, error=error, dead=True, now=now)
            logger.error("delivery dead after the last attempt; `dicom-node retry` requeues it",
                         extra={**log, "error": error})
        else:
            retry_at = now + backoff_s(attempt, dest, self.rng)
            self.ledger.delivery_attempted(delivery.id, ok=False, error=error, next_attempt_at=retry_at, now=now)
            logger.warning("delivery failed; will retry", extra={**log, "error": error,
                                                                 "retry_in_s": round(retry_at - now, 1)})
        return False


def make_sender(cfg: Config, ledger: Ledger) -> Sender:
    """The sender the node's loop runs (``dicom_node.node`` calls this)."""
    return Sender(cfg, ledger)
