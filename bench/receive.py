"""Receive throughput: the node (``dicom-node serve``) against dcmtk ``storescp``, same sender.

Sends synthetic 512x512 CT series over loopback with dcmtk ``storescu`` (``TCP_NODELAY=1``, so
dcmtk's Nagle stalls do not distort either side) to

* the node, started as ``dicom-node --config <tmp> serve`` with a fresh data folder per run
  (each instance flushed to disk before its acknowledgement, series assembly running, as in
  production, with a Redis broker of its own that no worker consumes: status reports and jobs
  are queued, nothing is analysed on the benchmark's cores). A sender's association is
  released only once its instances are in the spool and the ledger, so the wall time covers the
  journal mover's work too;
* dcmtk ``storescp --fork`` (``TCP_NODELAY=1``), writing plain files, no fsync.

``--receiver`` picks the node's receive path: ``processes`` (as in the shipped ``config.yaml``:
``node.receive_processes: 2``, :mod:`dicom_node.receive_pool`, concurrent associations spread
over the node's process and a helper), ``tuned`` (one receive process: the receive journal,
:mod:`dicom_node.journal`, while one association is open and direct spool writes while several
are, with pynetdicom patched by :mod:`dicom_node.netfast` and C-STORE requests taken by
:mod:`dicom_node.store_path`), ``direct`` (one process without the journal: each instance's
spool file and folder fsynced and its ledger row committed before the acknowledgement) or
``stock`` (pynetdicom as released, its own DIMSE layer, journal on); give it several times to
measure several (default: ``processes`` and ``tuned``).

Cases: one association with 200 slices (512x512 CT, 526 kB each) and 8 concurrent associations
sharing those 200 slices (8 senders x 25 slices). Each case runs ``--repeats`` times per
receiver, interleaved (every receiver once, then the next repeat) so that all see the same
machine load; the median wall time (first sender started to last sender finished) gives
images/s. Prints a markdown table and writes JSON, with the 1-minute load average before every
run, and the node's user and system CPU time per instance during each run (all its processes). Before
each repeat a probe times what every acknowledgement of the node waits for on this
disk at that moment: 526 kB written into a zero-filled file, then ``fdatasync`` (median of 50).
Each node starts on a fresh data folder whose receive journal already has the segments a node
keeps after its first bursts (4 x 32 MiB, zero-filled); ``--cold-journal`` starts it with the
single segment of a new installation instead, so that its first burst also writes the journal's
new segments. ``--diagnose-fsync`` adds each node receiver again with ``os.fsync`` and ``os.fdatasync`` made
no-ops (diagnostic only: what the receive path costs without the disk's flush latency).

    .venv/bin/python bench/receive.py [--repeats 3] [--receiver processes --receiver tuned]
                                      [--json bench/results/receive.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.journal import Journal  # noqa: E402
from dicom_node.names import JOURNAL_DIR  # noqa: E402

NODE_EXE = Path(sys.executable).parent / "dicom-node"
ENV = {**os.environ, "TCP_NODELAY": "1"}
#: Journal segments a warm node has (see ``Receiver``): enough for a 105 MB burst.
WARM_SEGMENTS = 4
CASES = [("1 assoc x 200 slices", "ct200", 1, 200), ("8 assocs x 25 slices (200 split)", "split8", 8, 200)]


def dcmtk(name: str) -> str:
    """dcmtk's binary (pynetdicom installs apps of the same names into the virtualenv)."""
    venv = Path(sys.executable).parent.resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        path = Path(folder) / name
        if folder and Path(folder).resolve() != venv and path.is_file():
            return str(path)
    raise SystemExit(f"dcmtk's {name} is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"receiver did not listen on {port} within {timeout} s")


def wait_helpers(log: Path, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the node's ``count`` helper receive processes have said they are ready."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("receive process ready") < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the node's {count} receive processes did not start (see {log})")
        time.sleep(0.1)


def make_series(work: Path) -> dict[str, Path]:
    from segmenter.dicom_io import make_test_series

    series = work / "series-200"
    dirs = {"ct200": series / "ct200", "split8": series / "split8"}
    if not (series / "done").exists():
        shutil.rmtree(series, ignore_errors=True)
        print("writing a synthetic CT series (200 slices, 512x512) ...", file=sys.stderr)
        files = make_test_series(dirs["ct200"], n_slices=200, rows=512, cols=512, seed=2)
        for i, path in enumerate(sorted(files)):
            target = dirs["split8"] / str(i % 8) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
        (series / "done").write_text("ok")
    return dirs


class Receiver:
    def __init__(self, kind: str, work: Path, warm_journal: bool = True, processes: int = 2) -> None:
        self.kind, self.port = kind, free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
        log = open(self.root / "receiver.log", "wb")
        env = ENV
        self.redis: subprocess.Popen | None = None
        if kind.startswith("node"):
            # Receiving only: series too short to analyse, queued to a Redis no worker consumes, so
            # no analysis competes with the receiver for the CPU (an unreachable broker instead
            # would make every pass of the node's loop retry and log the submission).
            redis_port = free_port()
            self.redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                           "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            config = {"node": {"ae_title": "DURAL_AI", "bind": "127.0.0.1", "port": self.port, "data_dir": "var",
                               "min_free_disk_gb": 1, "max_associations": 16},
                      "series": {"quiet_seconds": 3600, "min_slices": 100000},
                      "queue": {"broker_url": f"redis://127.0.0.1:{redis_port}/0"}, "http": {"enabled": False}}
            helpers = processes - 1 if kind.startswith("node-processes") else 0
            config["node"]["receive_processes"] = helpers + 1
            (self.root / "config.yaml").write_text(yaml.safe_dump(config))
            if warm_journal and kind != "node-direct":
                # The journal at the size it keeps after a node's first bursts (segments stay
                # across restarts), so that the run measures receiving, not the journal's growth.
                Journal(self.root / "var" / JOURNAL_DIR, initial_segments=WARM_SEGMENTS).release()
            argv = [str(NODE_EXE), "--config", str(self.root / "config.yaml"), "serve"]
            if kind in ("node-stock", "node-direct"):
                # dicom-node serve with the receiver built by start_receiver(..., tuned=False) or
                # start_receiver(..., journalled=False).
                option = "tuned=False" if kind == "node-stock" else "journalled=False"
                argv = [sys.executable, "-c", "import functools, sys; from dicom_node import scp; "
                        f"scp.start_receiver = functools.partial(scp.start_receiver, {option}); "
                        "from dicom_node.cli import main; sys.exit(main(sys.argv[1:]))", *argv[1:]]
            elif kind.endswith("-nofsync"):
                # Diagnostic only: the same node with os.fsync and os.fdatasync no-ops (in every
                # process: a sitecustomize module on its path), to show how much of its time is
                # the disk's flush latency rather than the receive path.
                patch = self.root / "nofsync"
                patch.mkdir()
                (patch / "sitecustomize.py").write_text("import os\nos.fsync = os.fdatasync = lambda fd: None\n")
                env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(patch), ENV.get("PYTHONPATH")]))}
            self.out = self.root / "var" / "spool"
        else:
            self.out = self.root / "out"
            self.out.mkdir()
            argv = [dcmtk("storescp"), "--fork", "--aetitle", "DURAL_AI", "-od", str(self.out), str(self.port)]
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_port(self.port, self.proc)
        if kind.startswith("node"):
            wait_helpers(self.root / "receiver.log", helpers, self.proc)

    def received(self) -> int:
        return sum(1 for p in self.out.rglob("*") if p.is_file())

    def stop(self) -> None:
        # The whole process group: storescp --fork leaves a child per association.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


def flush_probe(work: Path, size: int = 526 * 1024, count: int = 50) -> float:
    """Median ms of one journal append on this disk right now: ``size`` bytes written into a
    zero-filled file, then ``fdatasync``. Every acknowledgement of the node waits for one.

    The file is created once and kept: creating and deleting 26 MB before every repeat left the
    file system freeing its blocks during the receiver run that followed."""
    path = work / "flush-probe.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size != size * count:
            os.ftruncate(fd, 0)
            os.write(fd, bytes(size * count))
            os.fsync(fd)
        data, took = os.urandom(size), []
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(fd, data, i * size)
            os.fdatasync(fd)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
    return round(statistics.median(took), 2)


def wait_senders(senders: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """The senders' exit codes, each read the moment it exits. ``Popen.wait()`` without a
    timeout blocks in ``waitpid``; with one, it polls at up to 50 ms intervals, about a tenth of
    a one-association run. A timer kills senders still running after ``timeout`` seconds."""
    guard = threading.Timer(timeout, lambda: [s.kill() for s in senders])
    guard.start()
    try:
        return [s.wait() for s in senders]
    finally:
        guard.cancel()


def run_case(receiver: Receiver, folders: list[Path], expected: int) -> float:
    started = time.perf_counter()
    senders = [subprocess.Popen([dcmtk("storescu"), "+sd", "-aec", "DURAL_AI", "127.0.0.1", str(receiver.port),
                                 str(folder)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for folder in folders]
    codes = wait_senders(senders)
    elapsed = time.perf_counter() - started
    if any(codes):
        errors = b"".join(s.stderr.read() for s in senders if s.stderr).decode(errors="replace")[-2000:]
        raise SystemExit(f"storescu failed against {receiver.kind}: {codes}\n{errors}")
    deadline = time.monotonic() + 10
    while receiver.received() < expected and time.monotonic() < deadline:
        time.sleep(0.05)  # dcmtk's forked children may still be writing their last file
    if receiver.received() != expected:
        raise SystemExit(f"{receiver.kind} holds {receiver.received()} files; expected {expected}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--receiver", action="append", choices=["tuned", "direct", "stock", "processes"],
                        help="the node's receive path; repeat to measure several (default: processes, tuned)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dural-bench-receive",
                        help="series cache and receiver folders (same disk as a real data_dir)")
    parser.add_argument("--receive-processes", type=int, default=2,
                        help="node.receive_processes of the 'processes' receiver (default 2)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "receive.json")
    parser.add_argument("--cold-journal", action="store_true",
                        help="start each node with the single journal segment of a new data folder (its first "
                             "burst then grows the journal) instead of the segments a node keeps after its first bursts")
    parser.add_argument("--diagnose-fsync", action="store_true",
                        help="also run the node with os.fsync and os.fdatasync disabled (diagnostic column, "
                             "never a setting)")
    args = parser.parse_args(argv)
    receivers = list(dict.fromkeys(args.receiver or ["processes", "tuned"]))
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = make_series(args.work)
    load_start = os.getloadavg()
    nodes = ["node" if r == "tuned" else f"node-{r}" for r in receivers]
    kinds = nodes + ["dcmtk"] + ([f"{n}-nofsync" for n in nodes if n in ("node", "node-processes")]
                                 if args.diagnose_fsync else [])
    label = {"node": "node (one receive process)", "node-stock": "node (stock pynetdicom)", "dcmtk": "dcmtk storescp",
             "node-direct": "node (direct spool writes only)",
             "node-processes": f"node (receive_processes: {args.receive_processes}"
                               + (", as shipped)" if args.receive_processes == 2 else ")")}
    label.update({f"{k}-nofsync": f"{label[k]}, flushes disabled (diagnostic)" for k in ("node", "node-processes")})
    times: dict[str, dict[str, list[float]]] = {name: {k: [] for k in kinds} for name, *_ in CASES}
    loads: dict[str, dict[str, list[float]]] = {name: {k: [] for k in kinds} for name, *_ in CASES}
    cpu_ms: dict[str, dict[str, list[list[float]]]] = {name: {k: [] for k in kinds} for name, *_ in CASES}
    flush_ms: list[float] = []
    for repeat in range(args.repeats):
        flush_ms.append(flush_probe(args.work))
        print(f"run {repeat + 1}: disk flush probe (526 kB + fdatasync) median {flush_ms[-1]} ms", file=sys.stderr)
        for name, key, senders, count in CASES:
            folders = sorted(dirs[key].iterdir()) if senders > 1 else [dirs[key]]
            for kind in kinds:
                loads[name][kind].append(round(os.getloadavg()[0], 2))
                receiver = Receiver(kind, args.work, warm_journal=not args.cold_journal,
                                    processes=args.receive_processes)
                try:
                    before = cpu_seconds(receiver.proc.pid)
                    seconds = run_case(receiver, folders, count)
                    used = [round((a - b) * 1000 / count, 2) for a, b in zip(cpu_seconds(receiver.proc.pid), before)]
                finally:
                    receiver.stop()
                times[name][kind].append(seconds)
                cpu = ""
                if kind.startswith("node"):  # storescp --fork works in children this cannot see
                    cpu_ms[name][kind].append(used)
                    cpu = f"; receiver CPU per instance: user {used[0]} ms, system {used[1]} ms"
                print(f"run {repeat + 1}: {name}: {kind} {count / seconds:.0f} images/s "
                      f"(load {loads[name][kind][-1]}{cpu})", file=sys.stderr)
    rows, results = [], []
    rates: dict[str, dict[str, float]] = {}
    for name, _, senders, count in CASES:
        rate = rates[name] = {kind: count / statistics.median(times[name][kind]) for kind in kinds}
        result: dict[str, object] = {"case": name, "associations": senders, "images": count}
        row = f"| {name} |"
        for kind in kinds:
            per_run = sorted(count / t for t in times[name][kind])
            result[f"{kind.replace('-', '_')}_images_per_s"] = round(rate[kind], 1)
            result[f"{kind.replace('-', '_')}_images_per_s_runs"] = [round(r, 1) for r in per_run]
            row += f" {rate[kind]:.0f} ({per_run[0]:.0f}-{per_run[-1]:.0f}) |"
        if "node-stock" in kinds and "node" in kinds:
            result["tuned_over_stock"] = round(rate["node"] / rate["node-stock"], 3)
            row += f" {rate['node'] / rate['node-stock']:.2f} |"
        for kind in nodes:
            result[f"{kind.replace('-', '_')}_over_dcmtk"] = round(rate[kind] / rate["dcmtk"], 3)
            row += f" {rate[kind] / rate['dcmtk']:.2f} |"
        result["seconds"] = times[name]
        result["receiver_cpu_ms_per_instance_user_system"] = cpu_ms[name]
        result["load_average_1min_before_run"] = loads[name]
        results.append(result)
        rows.append(row)
    header = "| case |" + "".join(f" {label[k]} images/s (min-max) |" for k in kinds)
    if "node-stock" in kinds and "node" in kinds:
        header += " tuned/stock |"
    header += "".join(f" {label[k]}/dcmtk |" for k in nodes)
    print(header)
    print("|" + "---|" * header.count(" |"))
    print("\n".join(rows))
    single, concurrent = (name for name, *_ in CASES)
    targets = {}
    for kind in nodes:
        targets[kind.replace("-", "_")] = {
            "single_over_dcmtk": round(rates[single][kind] / rates[single]["dcmtk"], 3),
            "concurrent_over_single": round(rates[concurrent][kind] / rates[single][kind], 3)}
        print(f"{label[kind]}: one association {targets[kind.replace('-', '_')]['single_over_dcmtk']:.2f}x dcmtk "
              f"(target >= 0.5); 8 associations together "
              f"{targets[kind.replace('-', '_')]['concurrent_over_single']:.2f}x its one association (target >= 1)")
    print(f"disk flush probe, median ms per run: {flush_ms}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "receive", "sender": "dcmtk storescu, TCP_NODELAY=1", "repeats": args.repeats,
        "statistic": "median wall time, first sender start to last sender exit",
        "node": "dicom-node serve (the receive journal while one association is open, fdatasync before each "
                "acknowledgement, group commit; direct spool writes while several are, in the node's process and, "
                "with receive_processes above 1, its helpers; direct only: fsync file + folder and ledger commit "
                "per instance)",
        "receivers": {k: label[k] for k in kinds},
        "dcmtk": "storescp --fork, TCP_NODELAY=1, no fsync", "machine": platform.node(),
        "processor": _cpu_model(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "flush_probe_ms_per_run": flush_ms,
        "journal": "cold: one segment, grown during the run" if args.cold_journal else
                   f"warm: {WARM_SEGMENTS} segments of 32 MiB present at start",
        "results": results, "targets": targets}, indent=2) + "\n")
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds so far of the processes in ``pid``'s process group
    (``/proc/<pid>/stat``): the node and its helper receive processes."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pid:  # process group id
            user, system = user + int(fields[11]) / tick, system + int(fields[12]) / tick
    return user, system


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
