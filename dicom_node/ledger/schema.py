"""The ledger's tables and their migrations, versioned with ``PRAGMA user_version``.

Version 0 is the layout of ledgers written before the schema carried a version. A new file starts
there too and runs every migration in order, so a new ledger and an upgraded one always end with
the same tables. Each migration runs in one transaction with the version bump: a crash leaves
the old version, never a half-upgraded file. A ledger newer than this code is refused rather
than written with a layout the code does not know.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

__all__ = ["SCHEMA_VERSION", "SchemaError", "migrate", "schema_version"]

_V0 = (
    """CREATE TABLE IF NOT EXISTS associations (
        id TEXT PRIMARY KEY, calling_ae TEXT, opened_at REAL NOT NULL, closed_at REAL)""",
    """CREATE TABLE IF NOT EXISTS instances (
        sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, assoc_id TEXT, received_at REAL NOT NULL,
        job_id INTEGER)""",
    "CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid)",
    "CREATE INDEX IF NOT EXISTS instances_job ON instances(job_id)",
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
        state TEXT NOT NULL, outcome TEXT, fail_stage TEXT, reason TEXT, lane TEXT,
        submissions INTEGER NOT NULL DEFAULT 0, task_id TEXT, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, last_instance_at REAL NOT NULL, superseded_by INTEGER,
        result_json TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    "CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_uid)",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, state TEXT NOT NULL,
        at REAL NOT NULL, detail TEXT)""",
    "CREATE INDEX IF NOT EXISTS events_job ON events(job_id)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, destination TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
        last_error TEXT, updated_at REAL NOT NULL, UNIQUE(job_id, destination))""",
    """CREATE TABLE IF NOT EXISTS instance_headers (
        sop_uid TEXT PRIMARY KEY, read_at REAL NOT NULL, error TEXT, summary_json TEXT NOT NULL)""",
)

#: Keys of the version-0 ``result_json`` that version 1 gives columns of their own.
_V0_KEYS = ("series_kind", "status_report", "instances", "files", "report_error")

_V1 = (
    # The assembler's assessment of a series it did not pass on.
    "ALTER TABLE jobs ADD COLUMN series_kind TEXT",
    "ALTER TABLE jobs ADD COLUMN status_report INTEGER",
    "ALTER TABLE jobs ADD COLUMN assessed_instances INTEGER",
    # What the worker or the status report produced; NULL files: not settled yet.
    "ALTER TABLE jobs ADD COLUMN files_json TEXT",
    "ALTER TABLE jobs ADD COLUMN worker_outcome_json TEXT",
    "ALTER TABLE jobs ADD COLUMN report_error TEXT",
    # Status-report tasks sent, so that a lost one is retried a bounded number of times.
    "ALTER TABLE jobs ADD COLUMN report_attempts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN report_task_id TEXT",
    "UPDATE jobs SET series_kind = json_extract(result_json, '$.series_kind'), "
    "status_report = json_extract(result_json, '$.status_report'), "
    "assessed_instances = json_extract(result_json, '$.instances'), "
    "files_json = json_extract(result_json, '$.files'), "
    "report_error = json_extract(result_json, '$.report_error'), "
    "worker_outcome_json = NULLIF(json_remove(result_json, "
    + ", ".join(f"'$.{key}'" for key in _V0_KEYS) + "), '{}') "
    "WHERE result_json IS NOT NULL",
    "ALTER TABLE jobs DROP COLUMN result_json",
)


_V2 = (
    # Worklist triage (dicom_node.lanes, dicom_node.triage): the lane rules read the called AE
    # title, and each job keeps the triage category of its result.
    "ALTER TABLE associations ADD COLUMN called_ae TEXT",
    "ALTER TABLE jobs ADD COLUMN triage TEXT",
    # Notifications share the outbox with DICOM destinations. ``kind`` says which sender
    # handles a row (dicom, hl7, webhook); ``payload_json`` freezes what a notification says
    # when it is queued, so every retry sends the same message.
    "ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'dicom'",
    "ALTER TABLE deliveries ADD COLUMN payload_json TEXT",
)


_V3 = (
    # dicom-node reprocess: one row per run (its parameters are its key, so that a rerun after an
    # interruption finds it) and one per series it found, with that series' progress.
    """CREATE TABLE reprocess_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, source TEXT NOT NULL,
        params_json TEXT NOT NULL, state TEXT NOT NULL, studies_done INTEGER NOT NULL DEFAULT 0,
        started_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL)""",
    "CREATE INDEX reprocess_runs_key ON reprocess_runs(key)",
    """CREATE TABLE reprocess_series (
        run_id INTEGER NOT NULL REFERENCES reprocess_runs(id), series_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL, ordinal INTEGER NOT NULL, instances INTEGER, action TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT, job_id INTEGER, previous_job_id INTEGER, method TEXT,
        updated_at REAL NOT NULL, PRIMARY KEY (run_id, series_uid))""",
    "CREATE INDEX reprocess_series_uid ON reprocess_series(series_uid, state)",
)


_V4 = (
    # Retention (dicom_node.retention): when a job's spool and result files were purged and how
    # many bytes that freed; the rows stay, so the ledger keeps the record of every job.
    "ALTER TABLE jobs ADD COLUMN purged_at REAL",
    "ALTER TABLE jobs ADD COLUMN purged_bytes INTEGER",
    "ALTER TABLE instances ADD COLUMN purged_at REAL",
)


_V5 = (
    # The operator console (dicom_node.console): API tokens by name, of which only a SHA-256 of
    # the token is kept, and browser sessions opened with one (also kept as a SHA-256 of the
    # cookie), which end when they expire or their token is revoked.
    """CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
        last_used_at REAL, revoked_at REAL)""",
    """CREATE TABLE console_sessions (
        sha256 TEXT PRIMARY KEY, token_name TEXT NOT NULL, created_at REAL NOT NULL,
        expires_at REAL NOT NULL)""",
)


_V6 = (
    # An association that ended without a release (the peer aborted, the network timed out, the
    # node restarted): the series it carried may be incomplete, and its result says so.
    "ALTER TABLE associations ADD COLUMN aborted INTEGER NOT NULL DEFAULT 0",
)


def _statements(statements: Sequence[str]) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return run


#: (version reached, step); applied in order to databases below that version.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _statements(_V1)),
    (2, _statements(_V2)),
    (3, _statements(_V3)),
    (4, _statements(_V4)),
    (5, _statements(_V5)),
    (6, _statements(_V6)),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The ledger file was written by a newer version of the node."""


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, source: str = "ledger") -> int:
    """Bring the database on ``db`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    Returns
    -------
    int
        The version the database was at before.

    Raises
    ------
    SchemaError
        When the file's version is newer than :data:`SCHEMA_VERSION`.
    """
    db.execute("BEGIN IMMEDIATE")  # a second process opening the ledger waits, then finds it current
    try:
        before = schema_version(db)
        if before > SCHEMA_VERSION:
            raise SchemaError(f"{source}: schema version must be at most {SCHEMA_VERSION}; got {before} "
                              "(written by a newer dicom-node; upgrade this one)")
        if before == 0:
            _statements(_V0)(db)
        for version, step in MIGRATIONS:
            if version > before:
                step(db)
                db.execute(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return before
