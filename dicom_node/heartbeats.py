"""Worker heartbeats: how the node knows that a job's worker is still alive.

- With a Redis broker, a worker keeps a key alive (:func:`redis_heartbeat`); the node judges
  the job running while the key exists. Redis alone decides when it expires, so liveness does
  not depend on the hosts' clocks or on a shared filesystem's attribute caching, and workers
  on several hosts need nothing but the broker for it.
- With the embedded queue (one process, one host), the worker thread touches
  ``results/<job id>/heartbeat`` (:func:`heartbeat`) and the node reads its mtime
  (:func:`heartbeat_age`).

Either way the ledger stays the record of every job: a heartbeat only says "still running".
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from dicom_node.names import HEARTBEAT_FILE

__all__ = ["HEARTBEAT_INTERVAL_S", "HEARTBEAT_KEY_PREFIX", "heartbeat", "heartbeat_age", "heartbeat_interval",
           "heartbeat_key", "redis_heartbeat"]

logger = logging.getLogger(__name__)

#: Redis keys a worker keeps alive while it runs a job: ``<prefix><job id>``, value ``host pid``.
HEARTBEAT_KEY_PREFIX = "dicom-node:heartbeat:"
#: Seconds between two heartbeats at most.
HEARTBEAT_INTERVAL_S = 2.0


@contextlib.contextmanager
def _beating(touch: Callable[[], None], interval_s: float) -> Iterator[None]:
    """Call ``touch`` now and every ``interval_s`` on a thread until the block ends; a failing
    touch (full disk, broker unreachable) never stops the job: the node then sees no fresh beat."""
    stop = threading.Event()

    def beat() -> None:
        failed = False
        while not stop.wait(interval_s):
            try:
                touch()
                failed = False
            except Exception as exc:  # noqa: BLE001 - the job goes on; the node judges liveness
                if not failed:
                    logger.warning("heartbeat not written", extra={"error": str(exc)[:200]})
                failed = True

    try:
        touch()
    except Exception as exc:  # noqa: BLE001 - as above
        logger.warning("heartbeat not written", extra={"error": str(exc)[:200]})
    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 1)


def _stamp() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


@contextlib.contextmanager
def heartbeat(folder: str | Path, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[Path]:
    """Touch ``folder/heartbeat`` now and every ``interval_s`` until the block ends.

    The embedded queue's liveness signal (one host, one clock): the node reads the file's
    mtime (:func:`heartbeat_age`): fresh means running, stale means the worker died.
    """
    path = Path(folder) / HEARTBEAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = _stamp() + "\n"
    staging = path.with_name(f".{HEARTBEAT_FILE}.{os.getpid()}.tmp")

    def touch() -> None:
        # Rename over the file rather than rewrite it: a reader (the node, a watchdog script)
        # must never catch it truncated and empty. No fsync: only the mtime matters, and only
        # while this process lives.
        staging.write_text(stamp, encoding="utf-8")
        os.replace(staging, path)

    with _beating(touch, interval_s):
        yield path


def heartbeat_key(job_id: int) -> str:
    """The Redis key a worker keeps alive while it runs job ``job_id``."""
    return f"{HEARTBEAT_KEY_PREFIX}{int(job_id)}"


def heartbeat_interval(ttl_s: float) -> float:
    """How often a worker renews a key that lives ``ttl_s``: several beats per lifetime, so one
    late beat (a busy CPU, a broker blip) does not let the key expire."""
    return min(HEARTBEAT_INTERVAL_S, ttl_s / 4)


@contextlib.contextmanager
def redis_heartbeat(client: Any, job_id: int, ttl_s: float) -> Iterator[str]:
    """Keep :func:`heartbeat_key` alive in Redis (value ``host pid``, expiring ``ttl_s`` after
    each renewal) until the block ends; then it is left to expire.

    The liveness signal with a Redis broker: the node judges a job's worker alive while the key
    exists. Redis alone decides the expiry, so the hosts' clocks and a shared filesystem's
    attribute caching play no part. Left to expire rather than deleted, the key still tells the
    node, for ``ttl_s``, that an outcome is there to read.

    Parameters
    ----------
    client:
        A ``redis.Redis`` client (anything with ``set(name, value, px=...)``).
    """
    key, value, ttl_ms = heartbeat_key(job_id), _stamp(), max(1, int(ttl_s * 1000))
    with _beating(lambda: client.set(key, value, px=ttl_ms), heartbeat_interval(ttl_s)):
        yield key


def heartbeat_age(folder: str | Path, now: float) -> float | None:
    """Seconds since the worker last touched ``folder/heartbeat``; None when there is none."""
    try:
        return now - (Path(folder) / HEARTBEAT_FILE).stat().st_mtime
    except OSError:
        return None
