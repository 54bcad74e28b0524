"""Logging for entry points: one logfmt line per event, and no PHI at INFO and above.

Library modules only call ``logging.getLogger(__name__)``; ``setup_logging`` is called by the CLI.
UIDs are not PHI and may be logged (use ``short_uid`` to keep lines readable); patient names, IDs,
birth dates and accession numbers never are. pynetdicom logs C-FIND/C-MOVE identifiers at INFO by
default, so that is switched off and its logger capped at WARNING unless debugging.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def short_uid(uid: str) -> str:
    """A stable 10-hex-digit digest of a UID, for log lines that must stay short."""
    return hashlib.sha1(uid.encode()).hexdigest()[:10]


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value ...`` with extras from ``extra={...}``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={stamp}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "INFO", debug: bool = False) -> None:
    """Configure the root logger for an entry point (idempotent)."""
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel("DEBUG" if debug else level)
    # pynetdicom logs dataset contents (names, IDs) at INFO and DEBUG.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if debug else "WARNING")
    for noisy in ("celery", "kombu", "amqp", "PIL", "highdicom"):
        logging.getLogger(noisy).setLevel("WARNING")
