"""Prometheus metrics of the node, served at ``GET /metrics``.

All metrics live in :data:`REGISTRY`, a registry of our own rather than prometheus_client's global
default, so that tests can read it in isolation and nothing imported by accident is exported.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["REGISTRY", "exposition"]

REGISTRY = CollectorRegistry(auto_describe=True)


def exposition() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format.

    Returns
    -------
    tuple[bytes, str]
        The body and its ``Content-Type`` header value.
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
