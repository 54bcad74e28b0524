"""Lane rules, the ``triage:``/``notify:`` config sections, and the assembler choosing a lane."""
from __future__ import annotations

import time
import typing

import pydicom
import pytest
import yaml

from dicom_node.assembler import Assembler
from dicom_node.config import ConfigError, parse_config
from dicom_node.contract import LANES
from dicom_node.lanes import SeriesFacts, choose_lane
from dicom_node.ledger import JobState, Ledger
from dicom_node.worklist_config import Category, Lane, TriageConfig, missing_secrets
from dicom_node.triage import RESULT_CATEGORIES
from segmenter.dicom_io import make_test_series

ISSUE_YAML = """
triage:
  default_lane: routine
  rules:                          # first match wins
    - lane: stat
      calling_aets: [ED_CT]
  critical:
    sdh_thickness_mm: 10
    edh_volume_ml: 30
notify:
  hl7:
    - name: ris
      host: 127.0.0.1
      port: 2575
      on: [critical, positive, not_analysed, failed]
  webhooks:
    - name: oncall
      url: http://127.0.0.1:9000/hook
      secret_env: DURAL_WEBHOOK_SECRET
      on: [critical, positive, not_analysed, failed]
"""


def triage(*rules: dict, default: str = "routine") -> TriageConfig:
    return TriageConfig.model_validate({"default_lane": default, "rules": list(rules)})


def test_literals_follow_the_contract():
    assert typing.get_args(Lane) == LANES and typing.get_args(Category) == RESULT_CATEGORIES


def test_issue_example_parses(tmp_path, monkeypatch):
    cfg = parse_config({**yaml.safe_load(ISSUE_YAML), "node": {"data_dir": str(tmp_path)}})
    assert cfg.triage.rules[0].calling_aets == ["ED_CT"] and cfg.triage.critical.edh_volume_ml == 30
    assert cfg.notify.hl7[0].on == ["critical", "positive", "not_analysed", "failed"]  # YAML 1.1 reads `on` as true
    assert cfg.notify.hl7[0].priority["critical"] == "S"
    monkeypatch.delenv("DURAL_WEBHOOK_SECRET", raising=False)
    assert "DURAL_WEBHOOK_SECRET" in missing_secrets(cfg.notify)[0]


@pytest.mark.parametrize("rules, facts, lane", [
    ([{"lane": "stat", "calling_aets": ["ED_CT"]}], {"calling_ae": "ED_CT"}, "stat"),
    ([{"lane": "stat", "calling_aets": ["ED_CT"]}], {"calling_ae": "OPD_CT"}, "routine"),
    ([{"lane": "stat", "called_aets": ["DURAL_STAT"]}], {"called_ae": "DURAL_STAT"}, "stat"),
    ([{"lane": "batch", "study_description": ["follow.?up"]}], {"study_description": "CT HEAD FOLLOW-UP"}, "batch"),
    ([{"lane": "stat", "series_description": ["^trauma"]}], {"series_description": "brain trauma"}, "routine"),
    ([{"lane": "stat", "body_part": ["head|brain"]}], {"body_part": "HEAD"}, "stat"),
    ([{"lane": "stat", "station_name": ["ER"]}], {"station_name": "CTER01"}, "stat"),
    ([{"lane": "stat", "hours": "22-07"}], {"hour": 23}, "stat"),
    ([{"lane": "stat", "hours": "22-07"}], {"hour": 6}, "stat"),
    ([{"lane": "stat", "hours": "22-07"}], {"hour": 7}, "routine"),
    ([{"lane": "stat", "hours": "08-17"}], {"hour": 16}, "stat"),
    # every condition of a rule must hold
    ([{"lane": "stat", "calling_aets": ["ED_CT"], "hours": "08-17"}], {"calling_ae": "ED_CT", "hour": 20}, "routine"),
    # first match wins
    ([{"lane": "batch", "station_name": ["RESEARCH"]}, {"lane": "stat", "calling_aets": ["ED_CT"]}],
     {"calling_ae": "ED_CT", "station_name": "RESEARCH1"}, "batch"),
])
def test_rules(rules, facts, lane):
    assert choose_lane(triage(*rules), SeriesFacts(**facts))[0] == lane


@pytest.mark.parametrize("section, message", [
    ({"triage": {"default_lane": "urgent"}}, "triage.default_lane"),
    ({"triage": {"rules": [{"lane": "stat"}]}}, "at least one condition"),
    ({"triage": {"rules": [{"lane": "stat", "hours": "7"}]}}, "HH-HH"),
    ({"triage": {"rules": [{"lane": "stat", "hours": "07-07"}]}}, "differ"),
    ({"triage": {"rules": [{"lane": "stat", "body_part": ["("]}]}}, "regular expression"),
    ({"triage": {"rules": [{"lane": "stat", "calling_aet": ["X"]}]}}, "unknown key"),
    ({"triage": {"critical": {"sdh_thickness_mm": 0}}}, "sdh_thickness_mm"),
    ({"notify": {"hl7": [{"name": "ris", "host": "h", "port": 1, "on": ["urgent"]}]}}, "notify.hl7.0.on"),
    ({"notify": {"hl7": [{"name": "ris", "host": "h", "port": 1, "priority": {"critical": "S T"}}]}}, "priority"),
    ({"notify": {"hl7": [{"name": "a", "host": "h", "port": 1}, {"name": "a", "host": "h", "port": 2}]}},
     "used twice"),
    ({"notify": {"webhooks": [{"name": "w", "url": "ftp://x", "secret_env": "S"}]}}, "http://"),
    ({"notify": {"webhooks": [{"name": "w", "url": "http://x", "secret_env": "has space"}]}}, "secret_env"),
])
def test_bad_config_fails_at_start_naming_the_key(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"node": {"data_dir": str(tmp_path)}, **section})


@pytest.fixture(scope="module")
def ct12(tmp_path_factory):
    return make_test_series(tmp_path_factory.mktemp("ct12"), n_slices=12,
                            extra={"StationName": "CTER01", "StudyDescription": "CT HEAD"})


def complete(tmp_path, ct12, rules: list[dict], calling: str, preset: str | None = None) -> str:
    cfg = parse_config({"node": {"data_dir": str(tmp_path / "var")}, "series": {"quiet_seconds": 30},
                        "triage": {"default_lane": "routine", "rules": rules}})
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    now = time.time()
    ledger.open_association("a1", calling, now=now, called_ae="DURAL_AI")
    for path in ct12:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID,
                               path, "a1", now=now)
    if preset:
        ledger._db().execute("UPDATE jobs SET lane=?", (preset,))
    ledger.close_association("a1", now=now)
    Assembler(cfg, ledger).run_once(now + 60)
    (job,) = ledger.jobs()
    assert job.state == JobState.COMPLETE
    return str(job.lane)


@pytest.mark.parametrize("rules, calling, preset, lane", [
    ([{"lane": "stat", "calling_aets": ["ED_CT"]}], "ED_CT", None, "stat"),
    ([{"lane": "stat", "calling_aets": ["ED_CT"]}], "OPD_CT", None, "routine"),
    ([{"lane": "stat", "station_name": ["^CTER"], "called_aets": ["DURAL_AI"]}], "X", None, "stat"),
    ([{"lane": "stat", "calling_aets": ["ED_CT"]}], "ED_CT", "batch", "batch"),  # reprocessing keeps batch
])
def test_assembler_puts_the_series_on_its_lane(tmp_path, ct12, rules, calling, preset, lane):
    assert complete(tmp_path, ct12, rules, calling, preset) == lane


def test_check_config_names_a_missing_secret(tmp_path, monkeypatch, capsys):
    from dicom_node.commands import check_config

    cfg = parse_config({**yaml.safe_load(ISSUE_YAML), "node": {"data_dir": str(tmp_path)}})
    monkeypatch.delenv("DURAL_WEBHOOK_SECRET", raising=False)
    assert check_config.run(None, cfg) == 1 and "DURAL_WEBHOOK_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("DURAL_WEBHOOK_SECRET", "x")
    assert check_config.run(None, cfg) == 0
