"""notebooks/01_websocket_race_conditions.ipynb executed with papermill, small parameters; judged by its scraps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gp_lib.scenarios import race_conditions as rc
from gp_lib.refserver import running_server

NOTEBOOK = "01_websocket_race_conditions.ipynb"
SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_RACE_NOTEBOOK_SECRET"
#: Setup 50 ms in the reference server; first sends at 0 ms (inside it) and 150 ms (well after it).
SMALL = {"concurrency_levels": [1, 3], "send_delays_ms": [0, 150 * SCALE], "sweep_repeats": 1,
         "burst_connections": 1, "rapid_cycles": 2, "reference_setup_ms": 50 * SCALE,
         "reference_setup_ms_per_concurrent": 0, "receive_timeout_s": 3 * SCALE}
TIMEOUT_S = int(120 * SCALE)


@pytest.mark.notebook
def test_reference_mode_reproduces_the_race_and_verifies_the_fix(run_notebook):
    scraps = run_notebook(NOTEBOOK, SMALL, timeout_s=TIMEOUT_S)
    assert scraps["verdict"] == "pass" and scraps["mode"] == "reference" and scraps["scenario"] == rc.NAME
    checks = {(c["name"], c.get("arm")): c for c in scraps["checks"]}
    assert checks[("issue_reproduced", "faulty")]["passed"]
    assert "no_1011_closes" in checks[("issue_reproduced", "faulty")]["evidence"]
    assert all(c["passed"] for (name, arm), c in checks.items() if arm == "fixed")
    metrics = scraps["metrics"]
    assert metrics["faulty.closed_1011"] > 0 and metrics["fixed.closed_1011"] == 0
    assert metrics["faulty.race_window_ms"] == 0 and metrics["fixed.race_window_ms"] is None
    assert metrics["faulty.closed_1011_not_sent_before_ready"] == 0
    assert len(scraps["figures"]) == 4 and all(Path(p).stat().st_size > 10_000 for p in scraps["figures"])
    assert sorted(Path(p).name for p in scraps["traces"]) == ["race_conditions-faulty.jsonl",
                                                               "race_conditions-fixed.jsonl"]
    assert all(Path(p).stat().st_size > 0 for p in scraps["traces"])


@pytest.mark.notebook
def test_live_mode_against_the_race_fault_fails_with_the_checks_it_breaks(run_notebook, monkeypatch):
    with running_server({"race": True, "setup_ms": 50 * SCALE, "setup_ms_per_concurrent": 0}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        scraps = run_notebook(NOTEBOOK, {**SMALL, "target_url": server.url, "jwt_secret_env": SECRET_ENV},
                              timeout_s=TIMEOUT_S)
    assert scraps["verdict"] == "fail" and scraps["mode"] == "live" and scraps["target"] == server.url
    failed = {c["name"]: c["evidence"] for c in scraps["checks"] if not c["passed"]}
    assert set(failed) == {"no_1011_closes", "success_rate", "early_messages_answered", "rapid_cycles_complete"}
    assert " attempts closed 1011: " in failed["no_1011_closes"] and "0 of 3 messages" in failed["early_messages_answered"]
    assert scraps["diagnosis"][0]["root_cause"] == rc.NAME
    assert server.secret not in scraps["_executed"].read_text()


@pytest.mark.notebook
def test_a_parameter_typo_injected_by_papermill_stops_the_notebook_naming_it(run_notebook):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as raised:
        run_notebook(NOTEBOOK, {**SMALL, "sweep_repeat": 1}, timeout_s=TIMEOUT_S)
    assert raised.value.ename == "ParameterError"
    assert "unknown parameter sweep_repeat (did you mean sweep_repeats?)" in raised.value.evalue
