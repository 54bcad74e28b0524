"""What DICOM TLS costs the receiver: the node and dcmtk storescp, each plain and with mutual TLS.

dcmtk ``storescu`` (``TCP_NODELAY=1``; with ``+tls KEY CERT +cf CA`` for TLS) sends the synthetic
512x512 CT series of ``bench/receive.py`` over loopback to ``dicom-node serve`` started with a
fresh data folder per run, once without ``node.tls`` and once with it (TLS 1.2+, client
certificate required, certificates from a throwaway CA made at start), and to dcmtk
``storescp --fork`` (plain files, no fsync) plain and with ``+tls`` as the reference for what
the same sender's TLS costs by itself. Cases: one association
with 200 slices, and 8 concurrent associations sharing them (25 each; a TLS handshake per
association). Each case runs ``--repeats`` times per receiver, interleaved; the median wall time
(first sender started to last sender finished, every instance in the spool) gives images/s.

    .venv/bin/python bench/receive_tls.py [--repeats 3] [--json bench/results/receive_tls.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.receive import (CASES, ENV, NODE_EXE, dcmtk, free_port, make_series, wait_port,  # noqa: E402
                           wait_senders)
from tests.tls_pki import Pki, make_pki  # noqa: E402


class Receiver:
    """``dicom-node serve`` receiving only (no analysis), or dcmtk ``storescp --fork`` for
    reference; plain or with mutual TLS."""

    def __init__(self, kind: str, tls: bool, pki: Pki, work: Path) -> None:
        self.kind, self.tls, self.pki, self.port = kind, tls, pki, free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"{kind}-{'tls' if tls else 'plain'}-", dir=work))
        if kind == "storescp":
            self.out = self.root / "out"
            self.out.mkdir()
            auth = ["+tls", str(pki.node.key), str(pki.node.cert), "+cf", str(pki.ca)] if tls else []
            self._start([dcmtk("storescp"), *auth, "--fork", "--aetitle", "DURAL_AI", "-od", str(self.out),
                         str(self.port)])
            return
        self.out = self.root / "var" / "spool"
        node = {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.port, "data_dir": "var",
                "min_free_disk_gb": 1, "max_associations": 16}
        if tls:
            node["tls"] = {"certificate": str(pki.node.cert), "private_key": str(pki.node.key),
                           "ca_certificates": str(pki.ca), "require_client_certificate": True}
        config = {"node": node, "series": {"quiet_seconds": 3600, "min_slices": 100000},
                  "queue": {"broker_url": f"redis://127.0.0.1:{free_port()}/0"}, "http": {"enabled": False}}
        (self.root / "config.yaml").write_text(yaml.safe_dump(config))
        self._start([str(NODE_EXE), "--config", str(self.root / "config.yaml"), "serve"])

    def _start(self, argv: list[str]) -> None:
        log = open(self.root / "receiver.log", "wb")
        self.proc = subprocess.Popen(argv, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_port(self.port, self.proc)

    def sender(self, folder: Path) -> list[str]:
        auth = ["+tls", str(self.pki.client.key), str(self.pki.client.cert), "+cf", str(self.pki.ca)] if self.tls else []
        return [dcmtk("storescu"), *auth, "+sd", "-aec", "DURAL_AI", "127.0.0.1", str(self.port), str(folder)]

    def received(self) -> int:
        return sum(1 for p in self.out.rglob("*") if p.is_file())

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def run_case(node: Receiver, folders: list[Path], expected: int) -> float:
    started = time.perf_counter()
    senders = [subprocess.Popen(node.sender(folder), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for folder in folders]
    codes = wait_senders(senders)
    if any(codes):
        errors = b"".join(s.stderr.read() for s in senders if s.stderr).decode(errors="replace")[-2000:]
        raise SystemExit(f"storescu failed against {node.kind} (tls={node.tls}): {codes}\n{errors}")
    deadline = time.monotonic() + 30
    while node.received() < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if node.received() != expected:
        raise SystemExit(f"{node.kind} (tls={node.tls}) holds {node.received()} files; expected {expected}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dural-bench-receive")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "receive_tls.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = make_series(args.work)
    pki = make_pki(Path(tempfile.mkdtemp(prefix="pki-", dir=args.work)))
    times: dict[tuple[str, str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for label, key, n_assocs, n_slices in CASES:
            folders = [dirs[key]] if n_assocs == 1 else sorted(p for p in dirs[key].iterdir() if p.is_dir())
            for kind in ("node", "storescp"):
                for tls in (False, True):
                    receiver = Receiver(kind, tls, pki, args.work)
                    try:
                        times.setdefault((label, kind, tls), []).append(run_case(receiver, folders, n_slices))
                    finally:
                        receiver.stop()
    rows = []
    print("| case | receiver | plain images/s | TLS images/s | TLS / plain |\n|---|---|---|---|---|")
    for label, _, _, n_slices in CASES:
        for kind in ("node", "storescp"):
            plain, tls = (n_slices / statistics.median(times[(label, kind, t)]) for t in (False, True))
            rows.append({"case": label, "receiver": kind, "plain_images_per_s": round(plain, 1),
                         "tls_images_per_s": round(tls, 1), "ratio": round(tls / plain, 2),
                         "seconds": {"plain": times[(label, kind, False)], "tls": times[(label, kind, True)]}})
            print(f"| {label} | {kind} | {plain:.0f} | {tls:.0f} | {tls / plain:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "repeats": args.repeats,
                                     "load_avg_1m_at_end": os.getloadavg()[0], "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
