"""``worker.pipeline``: every way a job can end writes an outcome, and a status SR when a CT
header is readable; outcomes are idempotent and the written objects pass dciodvfy.

``Planted`` is a segmenter whose prediction is fixed, so that the result objects of a positive
series can be checked without trained weights; one test runs the real ``Segmenter`` on a tiny
random-weight model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.atomic import write_json_atomic
from dicom_node.config import parse_config
from dicom_node.contract import Manifest, heartbeat, job_dir, read_outcome
from dicom_node.names import HEARTBEAT_FILE
from segmenter.csr_unet import CSRUNet, CSRUNetConfig
from segmenter.dicom_io import make_test_series
from segmenter.findings import EDH, SDH, Finding, ModelInfo, Prediction
from segmenter.weights import sha256_file
from worker.pipeline import MAX_KEY_IMAGES, PREVIEW_FILE, analyse_series, run_job

MODEL = ModelInfo("planted", "0.0-test", "ab" * 32)
DCIODVFY = Path(sys.executable).parent / "dciodvfy"


class Planted:
    """Predicts an SDH slab on slices 3-7 (or raises ``error``)."""

    info = MODEL

    def __init__(self, error: Exception | None = None, delay_s: float = 0.0, shape: tuple | None = None,
                 slices: slice = slice(3, 8), excluded: list | None = None):
        self.error, self.delay_s, self.shape, self.slices, self.calls = error, delay_s, shape, slices, 0
        self.excluded = excluded or []

    def predict_series(self, series) -> Prediction:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.error:
            raise self.error
        labels = np.zeros(self.shape or series.volume_hu.shape, np.uint8)
        labels[self.slices, 20:44, 8:12] = SDH
        findings = {"SDH": Finding("SDH", SDH, True, 2.8, 4.0, "right", 0.9, int((labels == SDH).sum())),
                    "EDH": Finding("EDH", EDH, False, 0.0, 0.0, None, 0.0, 0)}
        return Prediction(labels, findings, MODEL, {"total_s": 0.01}, self.excluded)


@pytest.fixture
def cfg(tmp_path):
    return parse_config({"node": {"data_dir": str(tmp_path / "data")}})


def make_job(cfg, job_id: int = 1, n: int = 12, mode: str = "analyse", **kw) -> tuple[str, list[Path]]:
    paths = make_test_series(cfg.data_dir / "spool" / str(job_id), n_slices=n, rows=64, cols=64, seed=job_id)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    manifest = Manifest(job_id=job_id, series_uid=ds.SeriesInstanceUID, study_uid=ds.StudyInstanceUID,
                        instances=tuple(str(p.relative_to(cfg.data_dir)) for p in paths), mode=mode, **kw)
    write_json_atomic(job_dir(cfg.data_dir, job_id) / "job.json", manifest.to_dict())
    return f"results/{job_id}/job.json", paths


def dciodvfy_errors(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} is missing: install the test extras (pip install -e '.[test]')")
    run = subprocess.run([str(DCIODVFY), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_positive_series_writes_all_objects_then_outcome(tmp_path):
    cfg = parse_config({"node": {"data_dir": str(tmp_path / "data")}, "results": {"preview_png": True}})
    rel, paths = make_job(cfg)
    outcome = run_job(rel, cfg.data_dir, cfg, Planted())
    assert outcome["state"] == "done" and outcome["fail_stage"] is None
    assert [f["type"] for f in outcome["files"]][:2] == ["seg", "sr"]
    assert {f["type"] for f in outcome["files"]} == {"seg", "sr", "sc", "kos"}
    ct_study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    for f in outcome["files"]:
        path = cfg.data_dir / f["path"]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == f["sop_instance_uid"] and ds.SOPClassUID == f["sop_class_uid"]
        assert ds.StudyInstanceUID == ct_study
        assert dciodvfy_errors(path) == [], f["type"]
        assert path.stat().st_mtime <= (job_dir(cfg.data_dir, 1) / "outcome.json").stat().st_mtime
    assert outcome["findings"]["SDH"]["present"] and not outcome["findings"]["EDH"]["present"]
    assert set(outcome["timings"]) >= {"read", "model_load", "inference", "build", "write", "total"}
    assert (cfg.data_dir / outcome["preview"]).read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((job_dir(cfg.data_dir, 1) / "outcome.json").read_text())
    assert on_disk == json.loads(json.dumps(outcome))


def test_components_excluded_by_rule_are_in_the_outcome(cfg):
    rel, _ = make_job(cfg)
    assert run_job(rel, cfg.data_dir, cfg, Planted())["excluded_components"] == []
    dropped = {"label": "EDH", "volume_ml": 8.3, "attached_share": 0.09,
               "reason": "not against the skull (within 2 mm of bone on slices holding 9% of it): not epidural"}
    rel, _ = make_job(cfg, job_id=2)
    outcome = run_job(rel, cfg.data_dir, cfg, Planted(excluded=[dropped]))
    assert outcome["state"] == "done" and outcome["excluded_components"] == [dropped]
    on_disk = json.loads((job_dir(cfg.data_dir, 2) / "outcome.json").read_text())
    assert on_disk["excluded_components"] == [dropped]


def test_no_preview_png_unless_configured(cfg):
    """The preview is for people (the demo, ``process``); by default a job does not spend time on it."""
    rel, _ = make_job(cfg)
    outcome = run_job(rel, cfg.data_dir, cfg, Planted())
    assert outcome["state"] == "done" and "preview" not in outcome and "preview" not in outcome["timings"]
    assert not (job_dir(cfg.data_dir, 1) / PREVIEW_FILE).exists()


def test_rerun_returns_existing_outcome_without_running(cfg):
    rel, _ = make_job(cfg)
    planted = Planted()
    first = run_job(rel, cfg.data_dir, cfg, planted)
    second = run_job(rel, cfg.data_dir, cfg, planted)
    assert planted.calls == 1 and second == json.loads(json.dumps(first))


def test_same_input_same_uids_in_a_fresh_folder(cfg, tmp_path):
    rel, paths = make_job(cfg)
    first = run_job(rel, cfg.data_dir, cfg, Planted())
    again = analyse_series(paths, tmp_path / "again", cfg, Planted(), rel_to=tmp_path, preview=False)
    assert [f["sop_instance_uid"] for f in again["files"]] == [f["sop_instance_uid"] for f in first["files"]]


@pytest.mark.parametrize("segmenter, state, stage, words", [
    (lambda: (_ for _ in ()).throw(FileNotFoundError("weights missing")), "failed", "load", "could not be loaded"),
    (Planted(error=RuntimeError("out of memory")), "failed", "inference", "out of memory"),
    (Planted(shape=(3, 64, 64)), "failed", "results", "building the result objects failed"),
])
def test_each_failing_stage_is_named_and_reported(cfg, segmenter, state, stage, words):
    rel, _ = make_job(cfg)
    outcome = run_job(rel, cfg.data_dir, cfg, segmenter)
    assert (outcome["state"], outcome["fail_stage"]) == (state, stage)
    assert words in outcome["reason"]
    [report] = outcome["files"]
    assert report["type"] == "sr"
    assert dciodvfy_errors(cfg.data_dir / report["path"]) == []


def test_unusable_series_is_not_analysed_with_reason_and_report(cfg):
    rel, paths = make_job(cfg)
    paths[5].unlink()  # a gap in the stack
    manifest = json.loads((cfg.data_dir / rel).read_text())
    manifest["instances"] = [p for p in manifest["instances"] if not (cfg.data_dir / p).name == paths[5].name]
    (cfg.data_dir / rel).write_text(json.dumps(manifest))
    planted = Planted()
    outcome = run_job(rel, cfg.data_dir, cfg, planted)
    assert outcome["state"] == "not_analysed" and outcome["fail_stage"] is None
    assert outcome["reason"].startswith("gap: 1 slice(s) missing")
    assert [f["type"] for f in outcome["files"]] == ["sr"] and planted.calls == 0
    assert b"gap: 1 slice(s) missing" in (cfg.data_dir / outcome["files"][0]["path"]).read_bytes()  # in the SR


@pytest.mark.parametrize("field, value, words", [
    ("PixelRepresentation", 0, "above 4000 HU"),  # signed HU read as unsigned: air at +64536
    ("RescaleSlope", 0, "almost constant"),  # every pixel maps to the intercept
])
def test_broken_pixel_values_are_not_analysed_never_negative(cfg, field, value, words):
    """A bleed study with broken HU must not come out as a (negative) result."""
    import pydicom

    rel, paths = make_job(cfg)
    for path in paths:
        ds = pydicom.dcmread(path)
        setattr(ds, field, value)
        ds.save_as(path)
    planted = Planted()
    outcome = run_job(rel, cfg.data_dir, cfg, planted)
    assert outcome["state"] == "not_analysed" and planted.calls == 0
    assert words in outcome["reason"] and "RescaleSlope" in outcome["reason"]
    [report] = outcome["files"]
    assert report["type"] == "sr" and words.encode() in (cfg.data_dir / report["path"]).read_bytes()
    assert dciodvfy_errors(cfg.data_dir / report["path"]) == []


def test_tilted_series_with_two_spacings_is_analysed(cfg, tmp_path, tilted_series, oracle_segmenter):
    """18.5 degrees of gantry tilt, 4 mm then 7 mm slices: analysed as acquired, every object valid,
    and the planted lesion's volume within 3 % of the truth."""
    outcome = analyse_series(tilted_series.paths, tmp_path / "out", cfg, oracle_segmenter, rel_to=tmp_path)
    assert outcome["state"] == "done", outcome["reason"]
    sdh = outcome["findings"]["SDH"]
    assert sdh["present"] and sdh["laterality"] == "left"
    assert sdh["volume_ml"] == pytest.approx(tilted_series.truth_ml, rel=0.03)
    assert {f["type"] for f in outcome["files"]} == {"seg", "sr", "sc", "kos"}
    for f in outcome["files"]:
        assert dciodvfy_errors(tmp_path / f["path"]) == [], f["type"]


def test_no_readable_ct_header_means_no_report_but_an_outcome(cfg):
    rel, paths = make_job(cfg)
    for path in paths:
        path.write_bytes(b"not dicom at all")
    outcome = run_job(rel, cfg.data_dir, cfg, Planted())
    assert outcome["state"] == "not_analysed" and outcome["files"] == []


def test_report_mode_writes_only_the_status_sr(cfg):
    rel, _ = make_job(cfg, mode="report", state="failed", reason="the analysis task was lost 3 times",
                      fail_stage="queue")
    planted = Planted()
    outcome = run_job(rel, cfg.data_dir, cfg, planted)
    assert (outcome["state"], outcome["fail_stage"], planted.calls) == ("failed", "queue", 0)
    [report] = outcome["files"]
    assert dciodvfy_errors(cfg.data_dir / report["path"]) == []


def test_heartbeat_is_touched_while_running(cfg):
    rel, _ = make_job(cfg)
    beat = job_dir(cfg.data_dir, 1) / HEARTBEAT_FILE
    seen: list[float] = []

    def watch():
        deadline = time.time() + 8
        while time.time() < deadline and not (job_dir(cfg.data_dir, 1) / "outcome.json").exists():
            if beat.exists():
                seen.append(beat.stat().st_mtime)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    run_job(rel, cfg.data_dir, cfg, Planted(delay_s=4.5))
    watcher.join()
    assert len(set(seen)) >= 2, "the heartbeat was not refreshed during a 4.5 s inference"


def test_heartbeat_is_never_seen_empty(tmp_path):
    """A reader polling the heartbeat (the node, the fault tests) always finds ``host pid``,
    never a file caught between truncate and write."""
    reads: list[str] = []
    with heartbeat(tmp_path, interval_s=0.0005) as beat:
        deadline = time.time() + 1.0
        while time.time() < deadline:
            reads.append(beat.read_text())
    assert len(reads) > 100
    assert {len(text.split()) for text in reads} == {2}, "a reader saw a partly written heartbeat"
    assert [p.name for p in tmp_path.iterdir()] == [HEARTBEAT_FILE]


def test_manifest_for_another_input_is_not_taken_for_done(cfg):
    rel, _ = make_job(cfg)
    run_job(rel, cfg.data_dir, cfg, Planted())
    manifest = json.loads((cfg.data_dir / rel).read_text())
    manifest["instances"] = manifest["instances"][:-1]  # the series was re-opened with fewer files
    changed = Manifest.from_dict(manifest)
    assert read_outcome(job_dir(cfg.data_dir, 1), changed) is None


def test_real_segmenter_on_tiny_random_weights(cfg, tmp_path):
    net_cfg = CSRUNetConfig(base_width=4, depth=2, input_size=64, windows=("brain",))
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save({"model": CSRUNet.from_config(net_cfg).state_dict(), "config": net_cfg.to_dict()}, weights)
    weights.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(weights), "version": "tiny-0"}))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": weights, "device": "cpu",
                                                                         "threads": 1})})
    from worker import model_cache

    rel, _ = make_job(cfg)
    outcome = run_job(rel, cfg.data_dir, cfg, lambda: model_cache.get_segmenter(cfg))
    assert outcome["state"] == "done" and set(outcome["findings"]) == {"SDH", "EDH"}
    assert outcome["model"]["version"] == "tiny-0" and outcome["model"]["weights_sha256"] == sha256_file(weights)
    assert "sr" in {f["type"] for f in outcome["files"]}


@pytest.mark.parametrize("manifest_bf16", [False, True])
def test_model_bf16_setting_overrides_the_manifest(cfg, tmp_path, manifest_bf16):
    net_cfg = CSRUNetConfig(base_width=4, depth=2, input_size=64, windows=("brain",))
    weights = tmp_path / "tiny.pt"
    torch.save({"model": CSRUNet.from_config(net_cfg).state_dict(), "config": net_cfg.to_dict()}, weights)
    weights.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(weights), "version": "tiny-0",
                                                        "bf16_cpu": manifest_bf16}))
    from worker import model_cache

    chosen = {}
    for setting in (None, True, False):
        model = cfg.model.model_copy(update={"weights": weights, "device": "cpu", "threads": 1, "bf16": setting})
        chosen[setting] = model_cache.get_segmenter(cfg.model_copy(update={"model": model})).bf16
    assert chosen == {None: manifest_bf16, True: True, False: False}


def test_key_images_are_capped_to_the_largest_slices(cfg, tmp_path):
    _, paths = make_job(cfg)
    outcome = analyse_series(paths, tmp_path / "out", cfg, Planted(slices=slice(0, 12)), rel_to=tmp_path,
                             preview=False)
    assert [f["type"] for f in outcome["files"]].count("sc") == MAX_KEY_IMAGES < 12


def test_reopened_series_gets_new_uids_resend_keeps_them(cfg, tmp_path):
    _, paths = make_job(cfg)
    first = analyse_series(paths, tmp_path / "a", cfg, Planted(), rel_to=tmp_path, preview=False)
    same = analyse_series(list(reversed(paths)), tmp_path / "b", cfg, Planted(), rel_to=tmp_path, preview=False)
    assert [f["sop_instance_uid"] for f in same["files"]] == [f["sop_instance_uid"] for f in first["files"]]
    fewer = analyse_series(paths[:-1], tmp_path / "c", cfg, Planted(shape=(11, 64, 64)), rel_to=tmp_path,
                           preview=False)
    assert fewer["state"] == "done"
    old = {f["sop_instance_uid"] for f in first["files"]} | {f["series_uid"] for f in first["files"]}
    assert old.isdisjoint({f["sop_instance_uid"] for f in fewer["files"]} | {f["series_uid"] for f in fewer["files"]})


@pytest.mark.parametrize("charset, name", [
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # Japanese: first value empty
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),  # Korean
    ("GB18030", "Wang^XiaoDong=王^小东"),
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "Gröber^Έλλη"),
])
def test_international_character_sets_give_valid_results_with_names_intact(cfg, charset, name):
    import pydicom

    rel, paths = make_job(cfg)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path)
    outcome = run_job(rel, cfg.data_dir, cfg, Planted())
    assert outcome["state"] == "done", outcome["reason"]
    assert {f["type"] for f in outcome["files"]} >= {"seg", "sr"}
    for f in outcome["files"]:
        out = pydicom.dcmread(cfg.data_dir / f["path"])
        assert str(out.PatientName) == name, f["type"]
        assert dciodvfy_errors(cfg.data_dir / f["path"]) == [], f["type"]


def test_status_report_for_a_japanese_series_is_built(cfg):
    import pydicom

    rel, paths = make_job(cfg)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        ds.RescaleSlope = 0  # broken values: not analysed, with a status report
        ds.save_as(path)
    outcome = run_job(rel, cfg.data_dir, cfg, Planted())
    assert outcome["state"] == "not_analysed"
    [report] = outcome["files"]
    out = pydicom.dcmread(cfg.data_dir / report["path"])
    assert str(out.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert dciodvfy_errors(cfg.data_dir / report["path"]) == []
