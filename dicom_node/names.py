"""Folder names, file suffixes and DIMSE status codes shared by every stage."""
from __future__ import annotations

# Folders under node.data_dir.
SPOOL_DIR = "spool"  # spool/<study uid>/<series uid>/<sop uid>.dcm, written by the SCP
TMP_DIR = "tmp"  # partial writes; emptied at start (same filesystem as spool so rename is atomic)
JOURNAL_DIR = "journal"  # receive journal segments: acknowledged instances not yet moved into spool/
RESULTS_DIR = "results"  # results/<job id>/ : objects and outcome.json written by the worker
LEDGER_FILE = "ledger.sqlite3"

DICOM_SUFFIX = ".dcm"
OUTCOME_FILE = "outcome.json"  # written last, atomically, by a worker: the job's result
HEARTBEAT_FILE = "heartbeat"  # touched by a worker while it runs a job
NODE_STATE_FILE = "node-state.json"  # written by `serve` every few seconds; read by `status`

# DIMSE C-STORE statuses (PS3.4 Annex B.2.3).
STATUS_SUCCESS = 0x0000
#: Out of resources: disk full or below node.min_free_disk_gb; the sender should retry later.
STATUS_OUT_OF_RESOURCES = 0xA700
#: Data set does not match SOP class: the bytes could not be parsed as the announced object.
STATUS_DATASET_MISMATCH = 0xA900
#: Cannot understand: unexpected failure while storing (logged with the exception).
STATUS_CANNOT_UNDERSTAND = 0xC000
