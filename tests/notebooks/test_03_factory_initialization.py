"""Execute notebooks/03_factory_initialization.ipynb with papermill and read its scraps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gp_lib.refserver import running_server

NOTEBOOK = "03_factory_initialization.ipynb"
SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_FACTORY_NOTEBOOK_SECRET"
CHECKS = {"no_factory_errors", "health_reports_ok", "recovers_after_restart", "unique_connection_ids",
          "own_messages_only"}
SMALL = {"health_checks": 1, "connections": 4, "recovery_deadline_s": 3.0 * SCALE, "reconnect_wait_s": 0.2}


@pytest.mark.notebook
def test_reference_mode_shows_the_fault_and_the_fix(run_notebook):
    scraps = run_notebook(NOTEBOOK, SMALL, timeout_s=int(120 * SCALE))
    assert scraps["scenario"] == "factory_initialization" and scraps["mode"] == "reference"
    assert scraps["verdict"] == "pass", scraps["checks"]
    assert scraps["checks"][0]["name"] == "issue_reproduced" and scraps["checks"][0]["passed"]
    assert {c["name"] for c in scraps["arm_checks"]["fixed"]} == CHECKS
    assert not any(c["passed"] for c in scraps["arm_checks"]["faulty"])
    metrics = scraps["metrics"]
    assert metrics["faulty.factory_closes"] >= 4 + 1 and metrics["fixed.factory_closes"] == 0
    assert metrics["faulty.ready"] == 0 and metrics["fixed.ready"] == 4
    assert metrics["faulty.restart_time_to_ready_ms"] is None and metrics["fixed.restart_time_to_ready_ms"] > 0
    assert len(scraps["figures"]) == 3 and all(Path(p).stat().st_size > 0 for p in scraps["figures"])
    assert len(scraps["traces"]) == 2 and all(Path(p).exists() for p in scraps["traces"])
    assert scraps["diagnosis"][0]["root_cause"] == "factory_initialization"


@pytest.mark.notebook
def test_live_mode_against_a_broken_factory_fails(run_notebook, monkeypatch):
    with running_server({"factory": "config"}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        scraps = run_notebook(NOTEBOOK, {**SMALL, "target_url": server.url, "jwt_secret_env": SECRET_ENV,
                                         "recovery_deadline_s": 1.0 * SCALE}, timeout_s=int(120 * SCALE))
    assert scraps["mode"] == "live" and scraps["verdict"] == "fail"
    assert {c["name"] for c in scraps["checks"] if not c["passed"]} == CHECKS
    evidence = {c["name"]: c["evidence"] for c in scraps["checks"]}
    assert "1011 'Factory initialization failed'" in evidence["no_factory_errors"]
    assert evidence["unique_connection_ids"].startswith("0 of 4 connections got a connection id")
    assert scraps["params"]["jwt_secret_env"] == SECRET_ENV and server.secret not in str(scraps)
