"""The analysis of one job, in plain Python: Celery tasks, the embedded runner and
``dicom-node process`` all call the same functions.

Stages: read the series (``segmenter.dicom_io``), load the model, run it, build the result
objects (``worker.results``) and write them as files, then write ``outcome.json`` last and
atomically. A job that is not analysed, or fails at any stage, still gets a status SR whenever
one CT header can be read, so nobody reads silence as "negative".
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import pydicom

from dicom_node.atomic import write_atomic
from dicom_node.config import Config
from dicom_node.contract import (
    CT_FAMILY, Manifest, Outcome, heartbeat, job_dir, read_manifest, read_outcome, write_outcome,
)
from dicom_node.logs import short_uid

__all__ = ["PREVIEW_FILE", "HeartbeatFactory", "analyse_series", "file_heartbeat", "run_job"]

logger = logging.getLogger(__name__)

PREVIEW_FILE = "preview.png"
#: Key images per series: the slices with the largest bleed area. Every bleed slice would be up
#: to the whole stack (27 of 40 on a large SDH), slow to build and send and no longer "key";
#: the SEG carries the full extent.
MAX_KEY_IMAGES = 8
#: Reasons end up in a DICOM report and the ledger; keep them readable and bounded.
_MAX_REASON = 400

SegmenterSource = Any  # a loaded Segmenter, or a zero-argument callable returning one
#: Makes what keeps a job's heartbeat while it runs, from (job folder, job id): the Celery task
#: passes a Redis key (``dicom_node.heartbeats.redis_heartbeat``); the default is the file.
HeartbeatFactory = Callable[[Path, int], ContextManager[Any]]


def file_heartbeat(folder: Path, job_id: int) -> ContextManager[Any]:
    """The embedded queue's heartbeat: ``folder/heartbeat``, touched while the job runs."""
    return heartbeat(folder)


def _reason(prefix: str, exc: BaseException) -> str:
    text = f"{prefix}: {type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _save(ds: pydicom.Dataset, path: Path) -> None:
    """Write a DICOM file via a temporary name, fsynced, so a reader never sees half of it.

    The folder is not fsynced here: ``outcome.json`` is written last into the same folder by
    ``write_outcome``, whose folder fsync makes these earlier renames durable as well, and
    nothing reads the objects before the outcome exists.
    """
    write_atomic(path, lambda handle: ds.save_as(handle, enforce_file_format=True), sync_folder=False)


def _ct_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """Every readable CT header among ``paths`` (pixel data not read)."""
    headers = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("SOPClassUID", "")) in CT_FAMILY or ds.get("Modality") == "CT":
            headers.append(ds)
    return headers


class _Run:
    """Collects the files and timings of one analysis (``folder`` holds the objects)."""

    def __init__(self, folder: Path, rel_to: Path) -> None:
        self.folder, self.rel_to = folder, rel_to
        self.files: list[dict[str, str]] = []
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        self.started = time.time()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._t, 4)
        self._t = now

    def write(self, kind: str, name: str, ds: pydicom.Dataset) -> None:
        path = self.folder / name
        _save(ds, path)
        self.files.append({"type": kind, "path": os.path.relpath(path, self.rel_to),
                           "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
                           "series_uid": str(ds.SeriesInstanceUID)})

    def outcome(self, state: str, *, reason: str | None = None, fail_stage: str | None = None,
                findings: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                **extra: Any) -> Outcome:
        self.timings["total"] = round(sum(v for k, v in self.timings.items() if k != "total"), 4)
        return Outcome(state=state, reason=reason, fail_stage=fail_stage, findings=findings or {}, model=model,
                       files=tuple(self.files), timings=dict(self.timings), started_at=self.started,
                       finished_at=time.time(), worker=f"{socket.gethostname()}:{os.getpid()}", **extra)


def _status(run: _Run, cfg: Config, sources: Sequence[Path], state: str, reason: str,
            fail_stage: str | None, headers: Sequence[pydicom.Dataset] | None = None,
            model: Any = None) -> Outcome:
    """Outcome for a series without a result, with a status SR when a CT header is readable."""
    from worker.model_cache import fallback_model_info
    from worker.results.sr import build_status_sr

    info = model if model is not None else fallback_model_info(cfg)
    headers = list(headers) if headers else _ct_headers(sources)
    if headers:
        try:
            run.write("sr", f"status_{state}.dcm", build_status_sr(headers, state=state, reason=reason, model=info))
        except Exception as exc:
            logger.exception("status SR could not be built")
            reason = f"{reason} (and the status report could not be built: {type(exc).__name__})"
    else:
        logger.warning("no readable CT header: no status report for this series")
    run.lap("report")
    return run.outcome(state, reason=reason, fail_stage=fail_stage, model=info.to_dict())


def analyse_series(sources: Sequence[Path], folder: Path, cfg: Config, segmenter: SegmenterSource, *,
                   rel_to: Path, mode: str = "analyse", state: str | None = None, reason: str | None = None,
                   fail_stage: str | None = None, preview: bool = True) -> dict[str, Any]:
    """Analyse one series from its files and write the result objects into ``folder``.

    Parameters
    ----------
    sources:
        The series' files.
    folder:
        Where the objects (and the PNG preview) are written; created if missing.
    cfg:
        Node configuration (``series.max_axial_angle_deg``, ``series.spacing_tolerance_mm``,
        ``model``).
    segmenter:
        A loaded ``segmenter.inference.Segmenter`` or a zero-argument callable returning one
        (called after the series was read, so a load failure is reported as stage ``load``).
    rel_to:
        File paths in the outcome are relative to this folder (``data_dir`` for jobs).
    mode, state, reason, fail_stage:
        ``"report"`` writes only a status SR stating ``state`` and ``reason``.
    preview:
        Also write a PNG preview of the largest finding.

    Returns
    -------
    dict
        The outcome document (``dicom_node.contract.Outcome.to_dict``); never raises for a bad
        series or model.
    """
    return _analyse(sources, folder, cfg, segmenter, rel_to=rel_to, mode=mode, state=state, reason=reason,
                    fail_stage=fail_stage, preview=preview).to_dict()


def _analyse(sources: Sequence[Path], folder: Path, cfg: Config, segmenter: SegmenterSource, *,
             rel_to: Path, mode: str = "analyse", state: str | None = None, reason: str | None = None,
             fail_stage: str | None = None, preview: bool = True, caveat: str | None = None) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    run = _Run(folder, rel_to)
    if mode == "report":
        return _status(run, cfg, sources, str(state), reason or "not analysed", fail_stage)
    from segmenter.dicom_io import SeriesError, read_series

    try:
        # The HU volume goes to an unnamed scratch file in the job folder and is read a slab at
        # a time, so a long thin series does not need memory in proportion to its length.
        series = read_series(list(sources), max_axial_angle_deg=cfg.series.max_axial_angle_deg,
                             tolerance_mm=cfg.series.spacing_tolerance_mm, scratch_dir=folder)
    except SeriesError as exc:
        run.lap("read")
        return _status(run, cfg, sources, "not_analysed", exc.reason, None)
    except Exception as exc:
        logger.exception("reading the series failed")
        run.lap("read")
        return _status(run, cfg, sources, "failed", _reason("reading the series failed", exc), "load")
    run.lap("read")
    try:
        return _analyse_read(run, sources, series, cfg, segmenter, preview, caveat)
    finally:
        series.close()


def _analyse_read(run: _Run, sources: Sequence[Path], series: Any, cfg: Config, segmenter: SegmenterSource,
                  preview: bool, caveat: str | None) -> Outcome:
    """The stages after the series was read: model, inference, result objects."""
    folder, rel_to = run.folder, run.rel_to
    try:
        model = segmenter() if callable(segmenter) and not hasattr(segmenter, "predict") else segmenter
    except Exception as exc:
        logger.exception("the model could not be loaded")
        run.lap("model_load")
        return _status(run, cfg, sources, "failed", _reason("the model could not be loaded", exc), "load",
                       headers=series.datasets)
    run.lap("model_load")
    try:
        prediction = model.predict_series(series)
    except Exception as exc:
        logger.exception("inference failed")
        run.lap("inference")
        return _status(run, cfg, sources, "failed", _reason("inference failed", exc), "inference",
                       headers=series.datasets, model=model.info)
    run.lap("inference")
    try:
        _build(run, series.datasets, series.volume_hu, prediction, preview, cfg, caveat)
    except Exception as exc:
        logger.exception("building the result objects failed")
        run.files.clear()
        run.lap("build")
        return _status(run, cfg, sources, "failed", _reason("building the result objects failed", exc),
                       "results", headers=series.datasets, model=prediction.model)
    findings = {name: f.to_dict() for name, f in prediction.findings.items()}
    # Components the decision rule removed (e.g. a hyperdense blob away from the skull, not an
    # EDH): kept in the outcome so a reviewer can see what the model saw and why it is not reported.
    shown = os.path.relpath(folder / PREVIEW_FILE, rel_to) if (folder / PREVIEW_FILE).is_file() else None
    return run.outcome("done", findings=findings, model=prediction.model.to_dict(),
                       inference_timings=dict(prediction.timings_s),
                       excluded_components=tuple(dict(e) for e in prediction.excluded), preview=shown,
                       caveat=caveat)


def _build(run: _Run, sources: list[pydicom.Dataset], volume_hu: Any, prediction: Any, preview: bool,
           cfg: Config, caveat: str | None = None) -> None:
    from worker.results.keyimages import build_key_images
    from worker.results.preview import render_preview_png
    from worker.results.seg import build_seg, prepare_sources
    from worker.results.sr import build_sr

    headers = prepare_sources(sources)  # once for SEG and SR
    seg = build_seg(headers, prediction)
    critical = cfg.triage.critical
    sr = build_sr(headers, prediction, seg, sdh_thickness_mm=critical.sdh_thickness_mm,
                  edh_volume_ml=critical.edh_volume_ml, caveat=caveat)
    keys = build_key_images(sources, prediction, max_images=MAX_KEY_IMAGES, volume_hu=volume_hu)
    run.lap("build")
    if seg is not None:
        run.write("seg", "seg.dcm", seg)
    run.write("sr", "sr.dcm", sr)
    if keys is not None:
        images, kos = keys
        for number, image in enumerate(images, start=1):
            run.write("sc", f"sc_{number:03d}.dcm", image)
        run.write("kos", "kos.dcm", kos)
    run.lap("write")
    if preview:
        render_preview_png(volume_hu, prediction.labels, prediction.findings, run.folder / PREVIEW_FILE)
        run.lap("preview")


def run_job(manifest_path: str | Path, data_dir: str | Path, cfg: Config,
            segmenter: SegmenterSource, beat: HeartbeatFactory = file_heartbeat) -> dict[str, Any]:
    """Run the job described by a manifest and write its outcome; idempotent.

    Parameters
    ----------
    manifest_path:
        ``results/<job id>/job.json``, relative to ``data_dir`` (or absolute).
    data_dir:
        This host's mount of the node's ``data_dir`` (the worker's own ``node.data_dir``).
    cfg:
        Configuration.
    segmenter:
        As for :func:`analyse_series`.
    beat:
        Keeps the job's heartbeat while the analysis runs (:data:`HeartbeatFactory`).

    Returns
    -------
    dict
        The outcome written to ``results/<job id>/outcome.json``. When a valid outcome for the
        same manifest is already there (a redelivered or resubmitted task), it is returned
        unchanged and nothing is recomputed.

    Raises
    ------
    dicom_node.contract.ManifestError
        When the manifest cannot be read: there is no job to report on.
    """
    data_dir = Path(data_dir)
    path = Path(manifest_path)
    manifest: Manifest = read_manifest(path if path.is_absolute() else data_dir / path)
    folder = job_dir(data_dir, manifest.job_id)
    existing = read_outcome(folder, manifest)
    if existing is not None:
        logger.info("job already has an outcome; not run again", extra={"job": manifest.job_id})
        return existing.to_dict()
    sources = [data_dir / p for p in manifest.instances]
    log = {"job": manifest.job_id, "series": short_uid(manifest.series_uid), "mode": manifest.mode}
    logger.info("job started", extra=log)
    with beat(folder, manifest.job_id):
        outcome = _analyse(sources, folder, cfg, segmenter, rel_to=data_dir, mode=manifest.mode,
                           state=manifest.state, reason=manifest.reason, fail_stage=manifest.fail_stage,
                           preview=cfg.results.preview_png, caveat=manifest.caveat)
    outcome = replace(outcome, job_id=manifest.job_id, manifest_digest=manifest.digest)
    write_outcome(folder, outcome)
    logger.info("job finished", extra={**log, "state": outcome.state, "fail_stage": outcome.fail_stage,
                                       "files": len(outcome.files), "seconds": outcome.timings["total"]})
    return outcome.to_dict()


def failed_outcome(manifest_path: str | Path, data_dir: str | Path, cfg: Config, reason: str,
                   fail_stage: str, beat: HeartbeatFactory = file_heartbeat) -> dict[str, Any]:
    """Write a failed outcome (with a status SR) without running the model.

    Used by the task when a job keeps killing its worker: the outcome makes the failure
    visible and stops the redelivery loop.
    """
    data_dir = Path(data_dir)
    path = Path(manifest_path)
    manifest = read_manifest(path if path.is_absolute() else data_dir / path)
    folder = job_dir(data_dir, manifest.job_id)
    existing = read_outcome(folder, manifest)
    if existing is not None:
        return existing.to_dict()
    with beat(folder, manifest.job_id):  # the node looks for an outcome only where a heartbeat is
        outcome = _analyse([data_dir / p for p in manifest.instances], folder, cfg, None, rel_to=data_dir,
                           mode="report", state="failed", reason=reason, fail_stage=fail_stage)
    outcome = replace(outcome, job_id=manifest.job_id, manifest_digest=manifest.digest)
    write_outcome(folder, outcome)
    return outcome.to_dict()
