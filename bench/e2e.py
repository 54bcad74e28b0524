"""End-to-end latency: Orthanc sends a 40-slice 512x512 synthetic head CT to the node; time from
the last instance the node acknowledged to the last result object stored back in Orthanc.

Real parts, each its own process on 127.0.0.1: Orthanc (Lua forwards the stable CT series),
``dicom-node serve`` (series.quiet_seconds 2), Redis (our own, on a free port) and one warm
``dicom-node worker`` (or ``--embedded``: the node runs jobs itself). One warm-up run, then
``--runs`` measured ones; the table shows each stage per run and the median. Stages come from
the ledger's event timestamps (node clock) and the worker's outcome timings:

- completion wait: last instance stored -> series complete (assembler)
- queue: submitted -> worker started the job (broker, pick-up)
- load: reading the series (+ model load, 0 when warm)
- inference: the model run incl. pre/post-processing
- objects: building and writing SEG/SR/SC/KOS (+ PNG preview)
- collect: worker finished -> node recorded the outcome (the node's polling)
- sending: recorded -> every object acknowledged by Orthanc (C-STORE)

Usage: ``python bench/e2e.py [--runs 5] [--weights PATH] [--embedded] [--json bench/results/e2e.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = """
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    RestApiPost('/modalities/node/store', seriesId)
  end
end
"""
STAGES = ["completion wait", "queue", "load", "inference", "objects", "collect", "sending"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.time() + timeout
    while not (value := predicate()):
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)
    return value


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TCP_NODELAY": "1"})


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, last started first; SIGKILL any still running after 30 s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def default_weights() -> Path:
    shipped = ROOT / "segmenter" / "weights" / "csr_unet.pt"
    if shipped.is_file():
        return shipped
    for candidate in sorted(ROOT.glob("runs/*/best.pt")):
        return candidate
    raise SystemExit("no weights: pass --weights PATH (no shipped weights and no runs/*/best.pt)")


def stages(ledger, job, outcome: dict) -> dict[str, float]:
    events: dict[str, float] = {}
    for state, at, _ in ledger.events(job.id):
        events.setdefault(state, at)
    last_ack = max(r["received_at"] for r in ledger.iter_instances() if r["job_id"] == job.id)
    t = outcome["timings"]
    out = {
        "completion wait": events["complete"] - last_ack,
        "queue": outcome["started_at"] - events["queued"],
        "load": t.get("read", 0) + t.get("model_load", 0),
        "inference": t.get("inference", 0),
        "objects": t.get("build", 0) + t.get("write", 0) + t.get("preview", 0),
        "collect": events["done"] - outcome["finished_at"],
        "sending": events["delivered"] - events["done"],
    }
    out["end to end"] = events["delivered"] - last_ack
    out["all but inference"] = out["end to end"] - out["inference"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--weights", type=Path)
    p.add_argument("--embedded", action="store_true", help="no Redis or worker: the node runs jobs itself")
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", type=Path, help="also write the runs and medians here (e.g. bench/results/e2e.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dicom_node.ledger import Ledger
    from segmenter.synthetic import PhantomRanges, make_phantom, write_phantom_series

    for name in ("Orthanc", "redis-server"):
        if not (shutil.which(name) or Path("/usr/sbin", name).exists()):
            raise SystemExit(f"{name} is not installed (make system-deps)")
    weights = (args.weights or default_weights()).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    procs: list[subprocess.Popen] = []
    node_port, redis_port, o_dicom, o_http = free_port(), free_port(), free_port(), free_port()
    broker = "embedded" if args.embedded else f"redis://127.0.0.1:{redis_port}/0"
    try:
        (tmp / "forward.lua").write_text(LUA)
        (tmp / "orthanc.json").write_text(json.dumps({
            "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": o_dicom, "HttpPort": o_http,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "StableAge": 1,
            "StorageDirectory": str(tmp / "orthanc"), "IndexDirectory": str(tmp / "orthanc"), "Plugins": [],
            "DicomModalities": {"node": ["DURAL_AI", "127.0.0.1", node_port]}, "LuaScripts": [str(tmp / "forward.lua")]}))
        (tmp / "node.yaml").write_text(yaml.safe_dump({
            "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": node_port, "data_dir": str(tmp / "node")},
            "series": {"quiet_seconds": 2},
            "destinations": [{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": o_dicom}],
            "queue": {"broker_url": broker}, "model": {"weights": str(weights), "device": "cpu", "threads": 2},
            "http": {"enabled": False}, "logging": {"level": "WARNING"}}))
        orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        procs.append(start([orthanc, str(tmp / "orthanc.json")], tmp / "orthanc.log"))
        if not args.embedded:
            procs.append(start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], tmp / "redis.log"))
            procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "worker"],
                               tmp / "worker.log"))
        procs.append(start([str(BIN / "dicom-node"), "--config", str(tmp / "node.yaml"), "serve"], tmp / "node.log"))
        url = f"http://127.0.0.1:{o_http}"

        def orthanc_up() -> bool:
            try:
                return requests.get(f"{url}/system", timeout=1).ok
            except requests.RequestException:
                return False

        wait(orthanc_up, 30, "Orthanc")
        wait(lambda: (tmp / "node" / "ledger.sqlite3").exists(), 60, "the node")
        time.sleep(8 if not args.embedded else 2)  # the worker loads its model before consuming
        ledger = Ledger(tmp / "node" / "ledger.sqlite3")
        ranges = replace(PhantomRanges.training(), n_slices=(args.slices, args.slices), size=(512, 512))
        rows: list[dict[str, float]] = []
        for run in range(args.runs + 1):
            written = write_phantom_series(make_phantom(500 + run, kind="sdh", ranges=ranges), tmp / f"ct{run}")
            import pydicom

            series_uid = str(pydicom.dcmread(written["dicom"][0], stop_before_pixels=True).SeriesInstanceUID)
            for path in written["dicom"]:
                requests.post(f"{url}/instances", data=Path(path).read_bytes(), timeout=30).raise_for_status()

            def delivered():
                jobs = [j for j in ledger.jobs() if j.series_uid == series_uid and j.state == "delivered"]
                return jobs[-1] if jobs else None

            job = wait(delivered, 600, f"run {run} to be delivered", step=0.2)
            row = stages(ledger, job, job.result)
            findings = job.result["findings"]
            label = "warm-up" if run == 0 else f"run {run}"
            print(f"{label}: {row['end to end']:.2f} s end to end, SDH {findings['SDH']['volume_ml']:.1f} mL "
                  f"(present={findings['SDH']['present']}), {len(job.result['files'])} objects", file=sys.stderr)
            if run:
                rows.append(row)
        keys = STAGES + ["end to end", "all but inference"]
        print(f"\nEnd-to-end latency, {args.slices}-slice 512x512 synthetic head CT, "
              f"{'embedded queue' if args.embedded else 'Redis + 1 prefork worker'}, weights {weights.name}, "
              f"{os.cpu_count()} CPU cores; seconds, median of {len(rows)}\n")
        print("| stage | " + " | ".join(f"run {i + 1}" for i in range(len(rows))) + " | median |")
        print("|---|" + "---:|" * (len(rows) + 1))
        for key in keys:
            values = [r[key] for r in rows]
            print(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + f" | **{statistics.median(values):.2f}** |")
        e2e = statistics.median(r["end to end"] for r in rows)
        inf = statistics.median(r["inference"] for r in rows)
        rest = statistics.median(r["all but inference"] for r in rows)
        print(f"\nTargets: end to end <= 10 s: {'met' if e2e <= 10 else 'NOT met'} ({e2e:.2f} s); "
              f"all but inference <= 0.5 x inference: {'met' if rest <= 0.5 * inf else 'NOT met'} "
              f"({rest:.2f} s vs {0.5 * inf:.2f} s)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "series": f"{args.slices} x 512 x 512 synthetic head CT (SDH)",
                "queue": "embedded" if args.embedded else "redis + 1 prefork worker",
                "weights": weights.name, "cpu_cores": os.cpu_count(), "runs": rows,
                "median": {key: round(statistics.median(r[key] for r in rows), 3) for key in keys},
            }, indent=1) + "\n")
        return 0
    finally:
        stop(procs)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
