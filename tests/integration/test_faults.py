"""Faults on the real stack: every result still arrives in Orthanc exactly once.

- the worker's pool process is killed with SIGKILL mid-inference (Celery hands the message back);
- the whole worker is killed (its heartbeat key in Redis expires; the node resubmits to a new one);
- Redis restarts empty while a job is queued (the node sees the task gone and resubmits);
- Orthanc is down for 30 s while results are waiting (the outbox retries with backoff).

Each test leaves Redis and Orthanc running and no worker behind.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _beat(stack, job) -> str | None:
    """The job's heartbeat key in Redis (``host pid``), or None while no worker runs it."""
    import redis

    from dicom_node.heartbeats import heartbeat_key

    with redis.Redis(host="127.0.0.1", port=stack.redis_port) as client:
        value = client.get(heartbeat_key(job.id))
    return None if value is None else value.decode()


def _running_pid(stack, job) -> int:
    """The pid of the process running the job, from its heartbeat."""
    return int(_beat(stack, job).split()[1])


def _details(stack, job) -> list[str]:
    return [d or "" for _, _, d in stack.ledger.events(job.id)]


def test_pool_process_killed_mid_inference(stack, make_ct):
    worker = stack.start_worker("prefork")
    try:
        files, uids = make_ct("sdh", slices=96)
        stack.orthanc.upload(files)
        job = stack.wait_state(uids["series"], {"queued", "running"}, timeout=120)
        deadline = time.time() + 120
        while _beat(stack, job) is None:  # watched directly: the node's loop would add up to 0.5 s
            assert time.time() < deadline, "the job never started"
            time.sleep(0.05)
        pid = _running_pid(stack, job)
        assert pid != worker.pid, "the job must run in a pool process, not the worker's main process"
        time.sleep(0.5)  # past reading the series, into the model run
        outcome = stack.data_dir / "results" / str(job.id) / "outcome.json"
        assert not outcome.exists(), "the job finished before it could be killed; the test proves nothing"
        os.kill(pid, signal.SIGKILL)
        job = stack.wait_state(uids["series"], {"delivered"}, timeout=180)
    finally:
        worker.stop()
    starts = (stack.data_dir / "results" / str(job.id) / "starts").read_text().splitlines()
    assert len(starts) == 2, starts  # killed once, run again by a new pool process
    assert job.submissions == 1  # the broker redelivered it; the node had nothing to do
    stack.assert_delivered_once(job, uids["study"], len(files))


def test_whole_worker_killed_node_resubmits_to_a_new_worker(stack, make_ct):
    first = stack.start_worker("prefork")
    try:
        files, uids = make_ct("edh", slices=96)
        stack.orthanc.upload(files)
        job = stack.wait_state(uids["series"], {"running"}, timeout=120)
        time.sleep(1.0)
        first.kill()  # SIGKILL to the worker's whole process group: nobody hands the task back
        killed_at = time.time()
        stack.start_worker("prefork")
        job = stack.wait_state(uids["series"], {"delivered"}, timeout=180)
    finally:
        first.kill()
        stack.workers[-1].stop()
    assert job.submissions == 2
    assert any("heartbeat stale" in d for d in _details(stack, job)), _details(stack, job)
    requeued = [at for state, at, d in stack.ledger.events(job.id) if (d or "").startswith("requeued")]
    # Not before queue.heartbeat_timeout_s (15 s) after the last beat, at most 2 s before the kill.
    assert requeued and requeued[0] - killed_at >= 15 - 2.5
    stack.assert_delivered_once(job, uids["study"], len(files))
    assert job.result["worker"].split(":")[1] != str(first.pid)


def test_redis_restarted_empty_with_a_job_queued(stack, make_ct):
    files, uids = make_ct("sdh")
    stack.orthanc.upload(files)  # no worker runs: the job waits in Redis
    job = stack.wait_state(uids["series"], {"queued"}, timeout=120)
    assert job.submissions == 1
    stack.redis.kill()
    stack.start_redis()  # --save "" and no AOF: it comes back empty
    deadline = time.time() + 60
    while True:
        job = stack.job_for(uids["series"])
        if job.submissions == 2 and job.state == "queued":
            break
        assert time.time() < deadline, (job, _details(stack, job), stack.node.log())
        time.sleep(0.2)
    assert any("no longer in the queue" in d for d in _details(stack, job)), _details(stack, job)
    worker = stack.start_worker("prefork")
    try:
        job = stack.wait_state(uids["series"], {"delivered"}, timeout=180)
    finally:
        worker.stop()
    assert job.submissions == 2
    stack.assert_delivered_once(job, uids["study"], len(files))


def test_orthanc_down_for_30_s_while_results_wait(stack, make_ct):
    files, uids = make_ct("sdh")
    stack.orthanc.upload(files)
    # No worker yet, so the job waits in the queue until Orthanc is down: a fast worker could
    # otherwise deliver the results while Orthanc is still shutting down.
    stack.wait_state(uids["series"], {"queued"}, timeout=120)
    stack.orthanc.stop()
    stopped_at = time.time()
    worker = stack.start_worker("prefork")
    try:
        job = stack.wait_state(uids["series"], {"done"}, timeout=120)
        # Down for at least 30 s, and long enough after the analysis for two failed attempts
        # however slowly the analysis ran.
        deadline = time.time() + 90
        while True:
            [delivery] = stack.ledger.deliveries(job.id)
            if (time.time() - stopped_at >= 30 and delivery.attempts >= 2) or time.time() > deadline:
                break
            time.sleep(0.5)
        assert delivery.state == "pending" and delivery.attempts >= 2 and delivery.last_error, delivery
        stack.orthanc.start()
        job = stack.wait_state(uids["series"], {"delivered"}, timeout=60)
    finally:
        worker.stop()
        if stack.orthanc.proc is None or not stack.orthanc.proc.alive():
            stack.orthanc.start()
    stack.assert_delivered_once(job, uids["study"], len(files))
