"""notebooks/02_service_dependencies.ipynb run with papermill: reference mode, and live mode against a faulty server.

Small parameters keep each run well under the notebook budget: one request per
condition, two outages, and a 0.5 s silence deadline against a healthy run of
5 steps of 5 ms.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gp_lib.refserver import running_server

NOTEBOOK = "02_service_dependencies.ipynb"
SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SMALL = {"requests_per_condition": 1, "receive_timeout_s": 0.5 * SCALE, "agent_step_ms": 5.0,
         "outages": ["agent_supervisor", "llm_service"]}
CHECKS = ["no_silent_failure", "graceful_message_in_every_failure", "agent_started_when_degraded",
          "completion_or_fallback_notice"]

pytestmark = pytest.mark.notebook


def test_reference_mode_reproduces_silence_and_verifies_the_fix(run_notebook):
    scraps = run_notebook(NOTEBOOK, SMALL)
    assert scraps["scenario"] == "service_dependencies" and scraps["mode"] == "reference"
    assert scraps["verdict"] == "pass"
    assert [c["name"] for c in scraps["checks"]] == ["issue_reproduced", *CHECKS]
    assert all(c["passed"] for c in scraps["checks"])
    faulty = {c["name"]: c for c in scraps["arm_checks"]["faulty"]}
    assert not faulty["no_silent_failure"]["passed"]
    assert faulty["no_silent_failure"]["evidence"].startswith("4 of 6 requests got no answer within 0.5 s")
    metrics = scraps["metrics"]
    assert metrics["faulty.silent"] == 4 and metrics["fixed.silent"] == 0
    assert metrics["fixed.graceful"] == 4 and metrics["fixed.fallback_completions"] == 4
    assert [Path(f).name for f in scraps["figures"]] == ["service_dependencies-outcome-matrix.png",
                                                          "service_dependencies-message-timings.png"]
    assert all(Path(f).stat().st_size > 10_000 for f in scraps["figures"])
    assert sorted(Path(t).name for t in scraps["traces"]) == ["service_dependencies-faulty.jsonl",
                                                              "service_dependencies-fixed.jsonl"]
    assert all(Path(t).stat().st_size > 0 for t in scraps["traces"])


def test_live_mode_against_a_server_closing_1011_fails_the_checks_it_breaks(run_notebook, monkeypatch):
    with running_server({"dependencies": "close", "agent_step_ms": 5.0}) as server:
        monkeypatch.setenv("GP_TEST_NB02_SECRET", server.secret)
        scraps = run_notebook(NOTEBOOK, {**SMALL, "target_url": server.url, "jwt_secret_env": "GP_TEST_NB02_SECRET"})
    assert scraps["mode"] == "live" and scraps["target"] == server.url
    assert scraps["verdict"] == "fail"
    failed = {c["name"]: c["evidence"] for c in scraps["checks"] if not c["passed"]}
    assert set(failed) == {"graceful_message_in_every_failure", "agent_started_when_degraded",
                           "completion_or_fallback_notice"}
    assert failed["graceful_message_in_every_failure"].startswith("0 of 2 failure cases")
    assert scraps["metrics"]["crashed"] == 2 and scraps["metrics"]["closed_1011"] == 2
    assert scraps["diagnosis"][0]["root_cause"] == "service_dependencies"
    assert "GP_TEST_NB02_SECRET" in scraps["params"].values() and server.secret not in str(scraps)
