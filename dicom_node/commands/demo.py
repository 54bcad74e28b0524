"""``dicom-node demo``: the whole loop on one machine, no Redis and no PACS needed.

Starts the node (embedded queue, a temporary data folder, free ports) and a small receiving PACS
(``dicom_node.demo_pacs``), writes a synthetic head CT with a hematoma, sends it to the node,
waits until the node has delivered its results to the PACS, and prints the findings next to the
phantom's truth, where the result files and the PNG preview are, and what the PACS received.
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.config import Config, Destination, parse_config

TERMINAL = {"delivered"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("sdh", "edh", "both", "negative"), default="sdh",
                        help="what the synthetic CT shows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed (default: %(default)s)")
    parser.add_argument("--weights", help="model weights (default: model.weights of the config)")
    parser.add_argument("--dir", help="keep everything in this folder (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the results")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(cfg: Config, root: Path, weights: str | None) -> Config:
    """The user's model and logging settings; everything else local to ``root``."""
    model = cfg.model.model_dump(mode="json")
    if weights:
        model["weights"] = str(Path(weights).resolve())
    return parse_config({
        "node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": _free_port(), "data_dir": str(root / "node")},
        "series": {"quiet_seconds": 2},
        "destinations": [{"name": "demo_pacs", "ae_title": "DEMO_PACS", "host": "127.0.0.1", "port": _free_port(),
                          "backoff_base_s": 1, "max_attempts": 5}],
        "queue": {"broker_url": "embedded"},
        "model": model,
        "results": {"preview_png": True},
        "http": {"bind": "127.0.0.1", "port": _free_port()},
        "logging": {"level": "WARNING"},
    }, "<demo>")


def make_ct(root: Path, kind: str, seed: int) -> tuple[list[Path], dict[str, float], str]:
    """Write the phantom; returns its files, the true volume per class (mL) and its series UID."""
    import pydicom

    from segmenter.findings import CLASS_NAMES
    from segmenter.synthetic import make_phantom, write_phantom_series

    phantom = make_phantom(seed, kind=kind)
    written = write_phantom_series(phantom, root / "ct", series_description="DEMO HEAD 5mm")
    voxel_ml = float(np.prod(phantom.spacing_mm)) / 1000.0
    truth = {name: float((phantom.labels == label).sum()) * voxel_ml for label, name in CLASS_NAMES.items()}
    series_uid = str(pydicom.dcmread(written["dicom"][0], stop_before_pixels=True).SeriesInstanceUID)
    return list(written["dicom"]), truth, series_uid


def wait_for_job(node: Any, series_uid: str, timeout: float) -> Any:
    """Poll the ledger until the series' job is delivered or ends without results; print each state."""
    deadline, seen = time.time() + timeout, None
    while time.time() < deadline:
        jobs = [j for j in node.ledger.jobs() if j.series_uid == series_uid and j.state != "superseded"]
        job = jobs[-1] if jobs else None
        if job is not None and job.state != seen:
            seen = job.state
            extra = f" ({job.reason})" if job.reason else ""
            print(f"  {time.strftime('%H:%M:%S')}  job {job.id}: {job.state}{extra}", flush=True)
        if job is not None and (job.state in TERMINAL or _stuck(node, job)):
            return job
        time.sleep(0.25)
    return job if seen else None


def _stuck(node: Any, job: Any) -> bool:
    deliveries = node.ledger.deliveries(job.id)
    return job.files is not None and (not job.files or any(d.state == "dead" for d in deliveries))


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dicom_node.commands.process import format_table
    from dicom_node.commands.serve import embedded_runner
    from dicom_node.demo_pacs import start_demo_pacs
    from dicom_node.node import Node
    from dicom_node.scu import send_files

    if not getattr(args, "debug", False):
        logging.getLogger().setLevel("WARNING")  # the progress lines below tell the story
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dural-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(cfg, root, args.weights)
    pacs_dest = cfg.destinations[0]
    print(f"dural-node demo in {root}")
    pacs = start_demo_pacs(root / "pacs", pacs_dest.port, pacs_dest.ae_title)
    node = Node(cfg, runner=embedded_runner(cfg))
    node.start()
    try:
        print(f"  node {cfg.node.ae_title} on 127.0.0.1:{cfg.node.port} (embedded queue), status at "
              f"http://127.0.0.1:{cfg.http.port}/; PACS {pacs_dest.ae_title} on 127.0.0.1:{pacs_dest.port}")
        files, truth, series_uid = make_ct(root, args.kind, args.seed)
        print(f"  synthetic head CT ({args.kind}, seed {args.seed}): {len(files)} slices; truth "
              + ", ".join(f"{k} {v:.1f} mL" for k, v in truth.items()))
        to_node = Destination(name="node", ae_title=cfg.node.ae_title, host="127.0.0.1", port=cfg.node.port)
        results = send_files(files, to_node, "DEMO_SCANNER")
        print(f"  sent {sum(r.ok for r in results)}/{len(files)} slices to the node", flush=True)
        job = wait_for_job(node, series_uid, args.timeout)
    finally:
        node.stop()
        pacs.shutdown()
    if job is None:
        print("no job was created for the series; see the node log above", file=sys.stderr)
        return 1
    result = job.worker_outcome or {}
    row = {"folder": f"job {job.id}", "instances": len(files), "state": result.get("state", job.state),
           "reason": job.reason, "findings": result.get("findings"), "files": job.files or []}
    print("\n" + format_table([row]))
    data_dir = cfg.data_dir
    print(f"\nresult files:  {data_dir / 'results' / str(job.id)}")
    if result.get("preview"):
        print(f"preview PNG:   {data_dir / result['preview']}")
    received = sorted((root / "pacs").glob("*.dcm"))
    print(f"PACS received: {len(received)} object(s) in {root / 'pacs'}")
    for delivery in node.ledger.deliveries(job.id):
        print(f"delivery to {delivery.destination}: {delivery.state}"
              + (f" ({delivery.last_error})" if delivery.last_error else ""))
    return 0 if job.state == "delivered" else 1
