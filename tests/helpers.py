"""Plain helpers shared by test modules and conftests: ``from tests.helpers import free_port``.

pytest (``--import-mode=importlib``) registers ``tests`` as a namespace package, so this module
imports by that name from any test folder. Fixtures live in the conftests instead.
"""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
