"""What the console does rather than shows, shared by the pages and the API: retrying dead
deliveries, re-analysing a failed job and drawing a key image. Each action goes into the audit
trail with the token name."""
from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import Response

from dicom_node.console.context import Console
from dicom_node.console.keyimage import KeyImageError, render_key_image
from dicom_node.ledger import Job, ReanalysisRefused
from dicom_node.observability import audit
from dicom_node.reanalysis import reanalyse as reanalyse_job


def job_or_404(console: Console, job_id: int) -> Job:
    try:
        return console.ledger.job(job_id)
    except KeyError:
        raise HTTPException(404, f"job {job_id} is not in the ledger") from None


def retry(console: Console, job_id: int, user: str, delivery_id: int | None = None) -> int:
    """Requeue the job's dead-lettered deliveries (or one of them) as ``dicom-node retry`` does:
    the node's sender picks them up on its next pass with their full attempts again."""
    job_or_404(console, job_id)
    if delivery_id is not None and not any(d.id == delivery_id for d in console.ledger.deliveries(job_id)):
        raise HTTPException(404, f"delivery {delivery_id} is not a delivery of job {job_id}")
    count = console.ledger.retry_dead(job_id, console.clock(), delivery_id=delivery_id)
    audit.record("delivery_retry", token_name=user, job=job_id, delivery=delivery_id, requeued=count)
    return count


def reanalyse(console: Console, job_id: int, user: str) -> Job:
    """Run a failed job's analysis again as ``dicom-node retry --reanalyse`` does; 409 saying
    why when the job cannot be re-run (not failed, or its files purged)."""
    job_or_404(console, job_id)
    try:
        job = reanalyse_job(console.ledger, console.cfg.data_dir, job_id, user, console.clock())
    except ReanalysisRefused as exc:
        raise HTTPException(409, str(exc)) from None
    audit.record("job_reanalyse", token_name=user, job=job_id)
    return job


def key_image(console: Console, job_id: int, overlay: bool) -> Response:
    """The job's key image as PNG, or 404 saying why there is none."""
    job = job_or_404(console, job_id)
    seg = console.views.seg_path(job)
    if seg is None:
        raise HTTPException(404, f"job {job_id} has no segmentation (no bleed found, or no result yet)")
    try:
        png = render_key_image(seg, console.views.source_path, overlay=overlay)
    except KeyImageError as exc:
        raise HTTPException(404, f"job {job_id}: {exc}") from None
    return Response(png, media_type="image/png")
