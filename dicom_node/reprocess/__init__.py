"""Batch reprocessing (``dicom-node reprocess``): find head CTs in the PACS, retrieve them and
have the running node analyse them in the ``batch`` lane, resumably.

=========  ==================================================================================
``plan``   run parameters, eligibility from C-FIND attributes, skip/redo decisions, hours
``run``    the run: query, rate-limited retrieval (C-MOVE, C-GET fallback), outcomes, summary
=========  ==================================================================================
"""
from __future__ import annotations

from dicom_node.reprocess.plan import ModelIdentity, Params, header_problem, in_hours
from dicom_node.reprocess.run import Reprocessor, Summary

__all__ = ["ModelIdentity", "Params", "Reprocessor", "Summary", "header_problem", "in_hours"]
