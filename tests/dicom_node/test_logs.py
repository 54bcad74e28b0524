"""Logging: logfmt lines, and pynetdicom's identifier logging switched off."""
from __future__ import annotations

import logging
import re

import pytest

from dicom_node.logs import LogfmtFormatter, setup_logging, short_uid


def fmt(msg: str, *args, exc=None, **extra) -> str:
    record = logging.LogRecord("dicom_node.x", logging.WARNING, __file__, 1, msg, args, exc)
    for key, value in extra.items():
        setattr(record, key, value)
    return LogfmtFormatter().format(record)


def test_logfmt_fields_and_quoting():
    line = fmt("series %s", "complete", job=7, why='quiet "5 s"', empty="", uid="1.2.3")
    assert re.match(r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warning logger=dicom_node.x ", line)
    assert 'msg="series complete"' in line
    assert "job=7" in line and "uid=1.2.3" in line
    assert 'why="quiet \\"5 s\\""' in line and 'empty=""' in line
    assert "\n" not in line


def test_logfmt_exception_on_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        line = fmt("failed", exc=sys.exc_info())
    assert "\n" not in line and 'exc="Traceback' in line and "ValueError: bad\\nthing" in line


def test_short_uid_is_stable_and_short():
    assert short_uid("1.2.840.1") == short_uid("1.2.840.1") != short_uid("1.2.840.2")
    assert re.fullmatch(r"[0-9a-f]{10}", short_uid("1.2.840.1"))


@pytest.fixture
def restore_logging():
    from pynetdicom import _config

    saved = (_config.LOG_REQUEST_IDENTIFIERS, _config.LOG_RESPONSE_IDENTIFIERS,
             logging.getLogger().level, list(logging.getLogger().handlers), logging.getLogger("pynetdicom").level)
    yield
    _config.LOG_REQUEST_IDENTIFIERS, _config.LOG_RESPONSE_IDENTIFIERS = saved[:2]
    root = logging.getLogger()
    root.setLevel(saved[2])
    root.handlers[:] = saved[3]
    logging.getLogger("pynetdicom").setLevel(saved[4])


@pytest.mark.parametrize("debug,pynetdicom_level", [(False, logging.WARNING), (True, logging.DEBUG)])
def test_setup_logging_silences_pynetdicom_identifiers(restore_logging, debug, pynetdicom_level):
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = True  # pynetdicom's default
    setup_logging("INFO", debug=debug)
    assert _config.LOG_REQUEST_IDENTIFIERS is False and _config.LOG_RESPONSE_IDENTIFIERS is False
    assert logging.getLogger("pynetdicom").level == pynetdicom_level
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, LogfmtFormatter)
    setup_logging("INFO", debug=debug)  # idempotent: still one handler
    assert len(root.handlers) == 1


def test_pynetdicom_info_lines_are_dropped(restore_logging, capsys):
    setup_logging("INFO")
    logging.getLogger("pynetdicom.assoc").info("Patient Name: Doe^Jane")
    logging.getLogger("dicom_node.test").info("kept", extra={"job": 1})
    err = capsys.readouterr().err
    assert "Doe^Jane" not in err and 'msg=kept job=1' in err
