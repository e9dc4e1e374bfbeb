"""notebooks/00_triage.ipynb executed with papermill, small parameters; judged by its scraps."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from gp_lib import triage
from gp_lib.scenarios.common import ParameterError
from gp_lib.refserver import running_server

NOTEBOOK = "00_triage.ipynb"
SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_TRIAGE_NOTEBOOK_SECRET"
TIMEOUT_S = int(120 * SCALE)


def test_the_parameters_cell_holds_exactly_the_triage_params_fields():
    cells = json.loads((Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK).read_text())["cells"]
    source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    names = [node.targets[0].id for node in ast.parse(source).body]
    assert sorted(names) == sorted(triage.TriageParams.names()) and len(names) == len(set(names))


def test_the_diagnosis_comes_before_everything_else():
    cells = json.loads((Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK).read_text())["cells"]
    tagged = [c["metadata"]["tags"][0] for c in cells if c["metadata"].get("tags")]
    assert tagged[:2] == ["parameters", "section-root-cause"]


@pytest.mark.parametrize("values, named", [
    ({"scenarios": ["race_conditions", "nope"]}, "scenarios: unknown scenario 'nope'"),
    ({"scenarios": []}, "scenarios must be a non-empty list"),
    ({"scenarios": [["race_conditions"]]}, "scenarios: unknown scenario ['race_conditions']"),
    ({"max_concurrency": 5}, "race_conditions (with the triage's quick counts): concurrency_levels holds 10"),
    ({"receive_timeout_s": 0}, "receive_timeout_s must be greater than zero"),
])
def test_bad_parameters_are_named_before_any_traffic(values, named):
    with pytest.raises(ParameterError, match=re.escape(named)):
        triage.TriageParams.from_mapping(values)


def test_the_reproduce_command_carries_only_what_changed():
    params = triage.TriageParams(target_url="ws://example.test/ws", receive_timeout_s=1.5, out_dir="/elsewhere")
    assert triage.reproduce_command(params) == (
        "papermill notebooks/00_triage.ipynb reports/interactive/00_triage.ipynb --cwd notebooks "
        """-y '{"target_url": "ws://example.test/ws", "receive_timeout_s": 1.5}'""")


@pytest.mark.notebook
def test_reference_mode_ranks_each_fault_and_finds_the_fixed_servers_clean(run_notebook):
    scraps = run_notebook(NOTEBOOK, {"scenarios": ["race_conditions", "missing_events"]}, timeout_s=TIMEOUT_S)
    assert scraps["verdict"] == "pass" and scraps["mode"] == "reference" and scraps["scenario"] == "triage"
    assert {d["root_cause"] for d in scraps["diagnosis"]} == {"race_conditions", "missing_events"}
    assert scraps["fixed_diagnosis"] == []
    assert {c["name"] for c in scraps["checks"]} >= {"race_conditions.issue_reproduced",
                                                      "missing_events.issue_reproduced"}
    assert len(scraps["figures"]) >= 2 and all(Path(p).stat().st_size > 10_000 for p in scraps["figures"])
    assert sorted(Path(p).name for p in scraps["traces"]) == [
        "missing_events-faulty.jsonl", "missing_events-fixed.jsonl",
        "race_conditions-faulty.jsonl", "race_conditions-fixed.jsonl"]
    assert all(Path(p).parent.parent.name == "triage" for p in scraps["traces"])


@pytest.mark.notebook
def test_live_mode_puts_the_factory_first_and_rules_out_the_race(run_notebook, monkeypatch):
    with running_server({"factory": "config"}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        scraps = run_notebook(NOTEBOOK, {"target_url": server.url, "jwt_secret_env": SECRET_ENV,
                                         "receive_timeout_s": 0.5 * SCALE,
                                         "scenarios": ["race_conditions", "factory_initialization"]},
                              timeout_s=TIMEOUT_S)
    assert scraps["verdict"] == "fail" and scraps["mode"] == "live" and scraps["target"] == server.url
    assert [d["root_cause"] for d in scraps["diagnosis"]] == ["factory_initialization"]
    assert any(e.startswith("race ruled out: 1011 as often after waiting for readiness")
               for e in scraps["diagnosis"][0]["evidence"])
    assert scraps["fixed_diagnosis"] == []
    assert {Path(p).name for p in scraps["figures"]} == {"factory_initialization-triage-close-reasons.png",
                                                         "factory_initialization-triage-time-to-ready.png"}
    assert server.secret not in scraps["_executed"].read_text()
