"""One attempt at one notification, for the outbox sender (``dicom_node.sender``).

Success is ACK AA (HL7) or a 2xx (webhook). Everything else is an error the sender retries
with backoff and dead-letters after the receiver's ``max_attempts``; an error that no retry can
fix (a 4xx, a receiver no longer configured, a secret that is not set) is dead at once.
Log lines carry the job, the destination and the category, never the PHI in the message.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config import Config
from dicom_node.ledger import Delivery, Ledger
from dicom_node.notify import hl7, webhook
from dicom_node.notify.notice import NoticeError, build_notice
from dicom_node.notify.queueing import destination_name
from dicom_node.worklist_config import Hl7Endpoint, Webhook

__all__ = ["Attempt", "api_url", "notify_once", "receiver_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: ``error`` None when delivered; ``permanent`` when retrying is
    pointless."""

    error: str | None = None
    permanent: bool = False


def receiver_for(cfg: Config, destination: str) -> Hl7Endpoint | Webhook:
    """The configured receiver behind an outbox destination; ``KeyError`` when there is none."""
    for kind, receiver in cfg.notify.receivers():
        if destination_name(kind, receiver.name) == destination:
            return receiver
    raise KeyError(f"notification receiver {destination!r} is no longer configured under notify:")


def api_url(cfg: Config) -> str:
    """``notify.api_url``, or the node's own HTTP address."""
    if cfg.notify.api_url:
        return cfg.notify.api_url
    host = cfg.http.bind if cfg.http.bind not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{cfg.http.port}"


def notify_once(cfg: Config, ledger: Ledger, delivery: Delivery, data_dir: str | Path,
                now: float | None = None) -> Attempt:
    """Send one notification once; never raises."""
    try:
        receiver = receiver_for(cfg, delivery.destination)
        notice = build_notice(ledger, delivery, data_dir)
    except (KeyError, NoticeError) as exc:
        return Attempt(str(exc.args[0] if exc.args else exc), permanent=True)
    try:
        if isinstance(receiver, Hl7Endpoint):
            message = hl7.build_oru(receiver, notice, now)
            reply = hl7.send_mllp(receiver.host, receiver.port, message, receiver.timeout_s)
            hl7.parse_ack(reply, notice.control_id)
        else:
            try:
                secret = receiver.secret()
            except KeyError as exc:
                return Attempt(str(exc.args[0]), permanent=True)
            raw = webhook.body(notice, api_url(cfg), time.time() if now is None else now)
            webhook.post(receiver.url, raw, webhook.sign(secret, raw), receiver.timeout_s)
    except webhook.HttpError as exc:
        return Attempt(str(exc)[:300], permanent=exc.permanent)
    except (OSError, hl7.AckError) as exc:
        return Attempt(f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # noqa: BLE001 - recorded on the delivery
        # Only the type: a library's message may quote a value of the message, i.e. PHI.
        logger.exception("notification could not be built or sent", extra={"job": delivery.job_id,
                                                                            "destination": delivery.destination})
        return Attempt(f"{type(exc).__name__} while building or sending the message")
    logger.info("notification delivered", extra={"job": delivery.job_id, "destination": delivery.destination,
                                                  "category": notice.category, "correction": notice.correction})
    return Attempt()
