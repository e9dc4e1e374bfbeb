"""The factory-initialization scenario: judged on hand-built tables, and driven against the reference server.

The integration tests control the timing they are about: the reference
server's setup delay is injected so that a message sent at once lands well
inside setup, and the deadlines scale with GP_TIME_SCALE.
"""

from __future__ import annotations

import asyncio
import os

import matplotlib
import pandas as pd
import pytest

from gp_lib.plots import factory as plots_factory
from gp_lib.scenarios import factory_initialization as fi
from gp_lib.scenarios.common import Credentials, Observation, ParameterError, Target
from gp_lib.refserver import running_server
from gp_lib.trace import AttemptRecord, frame_row

matplotlib.use("Agg")

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_FACTORY_TEST_SECRET"
FACTORY_REASON = "Factory initialization failed"


# -- hand-built tables ------------------------------------------------------------------------------

def _attempt(n, condition, *, ready=True, reason=None, user=None, connection_id=None, since_ms=None,
             outcome=None, received=()):
    """One attempts row and its frames, as the client would have recorded them."""
    user = user or f"u{n:03d}"
    refused = outcome == "refused"
    closed = reason is not None
    record = AttemptRecord(
        attempt_id=f"a{n:03d}", user_id=user, scenario=fi.NAME, arm="live", condition=condition,
        t_open_ms=None if refused else 2.0, t_ready_ms=17.0 if ready and not closed else None,
        t_close_ms=3.0 if refused else 40.0, close_code=None if refused else 1011 if closed else 1000,
        close_reason=reason if closed else "", closed_by=None if refused else "server" if closed else "client",
        outcome=outcome or ("closed_1011" if closed else "ok"), frames_received=len(received) + int(ready),
        extra={"connection_id": connection_id if connection_id is not None else (f"c{n:03d}" if ready and not closed
                                                                                    else None),
               "t_since_start_ms": since_ms})
    if ready and not closed:
        marker = {"type": "connection_established", "data": {"connection_id": record.extra["connection_id"],
                                                              "user_id": user}}
        record.frames.append(frame_row(record.attempt_id, 17.0, "received", marker))
    for k, message in enumerate(received):
        record.frames.append(frame_row(record.attempt_id, 20.0 + k, "received", message))
    return record


def _events(user):
    return [{"type": kind, "data": {"run_id": "r1", "user_id": user}}
            for kind in ("agent_started", "agent_thinking", "agent_completed")]


def _batch(count=4, **kwargs):
    return [_attempt(n, fi.BATCH[n % 2], received=_events(f"u{n:03d}"), **kwargs) for n in range(count)]


def _health(count=2, status="ok", errors=""):
    rows = [{"attempt_id": f"h{n}", "user_id": "h", "answered": status is not None, "factory_status": status,
             "services": "agent_supervisor: up", "errors": errors} for n in range(count)]
    return pd.DataFrame(rows, columns=list(fi.HEALTH_COLUMNS))


def _recovered(start=100):
    return [_attempt(start, fi.RESTARTED, outcome="refused", ready=False, since_ms=0.0),
            _attempt(start + 1, fi.RESTARTED, since_ms=120.0)]


def _evaluate(records, health=None, processes=None, **params):
    tables = {"health": _health() if health is None else health}
    if processes is not None:
        tables["processes"] = processes
    observation = Observation.from_records("live", records, tables)
    checks, metrics = fi.evaluate(observation, fi.Params(**params))
    return {c.name: c for c in checks}, metrics


CHECK_NAMES = ["no_factory_errors", "health_reports_ok", "recovers_after_restart", "unique_connection_ids",
               "own_messages_only"]


# -- evaluate: pure ---------------------------------------------------------------------------------

def test_a_healthy_run_passes_every_check():
    checks, metrics = _evaluate(_batch() + _recovered())
    assert list(checks) == CHECK_NAMES
    assert all(c.passed for c in checks.values()), [c.evidence for c in checks.values() if not c.passed]
    assert checks["unique_connection_ids"].evidence.startswith("4 of 4 connections got a connection id")
    assert checks["own_messages_only"].evidence.startswith("0 of 16 user-tagged messages")
    assert checks["recovers_after_restart"].evidence.startswith("first readiness 137 ms after the restart")
    assert metrics["connections"] == 4 and metrics["ready"] == 4 and metrics["factory_closes"] == 0
    assert metrics["restart_time_to_ready_ms"] == 137.0 and metrics["restart_refused"] == 1
    assert metrics["ready_p50_ms"] == 17.0


def test_factory_closes_and_health_errors_fail_with_numbers():
    records = _batch(4, reason=FACTORY_REASON, ready=False)
    records += [_attempt(100 + k, fi.RESTARTED, reason=FACTORY_REASON, ready=False, since_ms=300.0 * k)
                for k in range(3)]
    health = _health(2, "error", "invalid factory configuration: max_connections must not be negative, not -1")
    checks, metrics = _evaluate(records, health)
    assert not any(c.passed for c in checks.values())
    assert checks["no_factory_errors"].evidence.startswith(
        "7 of 7 connection attempts closed naming the factory or initialization "
        "(7 × 1011 'Factory initialization failed'; 7 before readiness); 2 of 2 health checks")
    assert "0 of 2 system_health_check answers said factory_status 'ok'" in checks["health_reports_ok"].evidence
    assert "max_connections must not be negative" in checks["health_reports_ok"].evidence
    assert checks["recovers_after_restart"].evidence.startswith("no readiness within 5 s after the restart: 3 attempts")
    assert checks["unique_connection_ids"].evidence.startswith("0 of 4 connections got a connection id")
    assert metrics["factory_closes_send_at_once"] == 2 and metrics["factory_closes_send_after_ready"] == 2
    assert metrics["closed_before_ready"] == 4 and metrics["restart_time_to_ready_ms"] is None


def test_a_close_that_names_initialization_counts_too():
    checks, _ = _evaluate(_batch(2) + [_attempt(9, fi.SEND_AT_ONCE, reason="Service initialization failed",
                                                ready=False)] + _recovered())
    assert not checks["no_factory_errors"].passed
    assert checks["no_factory_errors"].evidence.startswith("1 of 5 connection attempts")


def test_the_deliberately_faulty_start_is_not_held_against_the_arm():
    control = [_attempt(50, fi.FAULTY_START, outcome="refused", ready=False, since_ms=0.0),
               _attempt(51, fi.FAULTY_START, reason=FACTORY_REASON, ready=False, since_ms=90.0)]
    checks, metrics = _evaluate(_batch() + control + _recovered())
    assert checks["no_factory_errors"].passed, checks["no_factory_errors"].evidence
    assert metrics["attempts"] == 6


def test_race_closes_do_not_look_like_a_factory_failure():
    records = [_attempt(n, fi.SEND_AT_ONCE, reason="Internal error: message handled before connection setup",
                        ready=False) if n % 2 == 0 else _attempt(n, fi.SEND_AFTER_READY, received=_events(f"u{n:03d}"))
               for n in range(4)]
    checks, metrics = _evaluate(records + _recovered())
    assert checks["no_factory_errors"].passed
    assert not checks["unique_connection_ids"].passed
    assert metrics["closed_1011"] == 2 and metrics["factory_closes"] == 0


def test_another_users_message_fails_isolation():
    records = _batch(3)
    records.append(_attempt(3, fi.SEND_AFTER_READY, received=_events("u003") + _events("u000")[:1]))
    checks, metrics = _evaluate(records + _recovered())
    assert not checks["own_messages_only"].passed
    assert checks["own_messages_only"].evidence.startswith("1 of 17 user-tagged messages on 4 ready connections")
    assert metrics["foreign_messages"] == 1


def test_a_shared_connection_id_fails_uniqueness():
    records = _batch(3) + [_attempt(3, fi.SEND_AFTER_READY, connection_id="c000", received=_events("u003"))]
    checks, _ = _evaluate(records + _recovered())
    assert not checks["unique_connection_ids"].passed
    assert checks["unique_connection_ids"].evidence.startswith("4 of 4 connections got a connection id "
                                                               "in their readiness marker, 3 distinct")


def test_readiness_after_the_deadline_is_not_recovery():
    late = [_attempt(100, fi.RESTARTED, since_ms=1900.0)]
    checks, metrics = _evaluate(_batch() + late, recovery_deadline_s=1.0)
    assert not checks["recovers_after_restart"].passed
    assert metrics["restart_time_to_ready_ms"] == 1917.0


def test_a_process_that_did_not_start_is_named_in_the_evidence():
    processes = pd.DataFrame([{"phase": fi.RESTARTED, "faults": "none", "started": False, "listening_ms": None,
                               "error": "reference server exited with code 1 before listening"}],
                             columns=list(fi.PROCESS_COLUMNS))
    refused = [_attempt(100 + k, fi.RESTARTED, outcome="refused", ready=False, since_ms=100.0 * k) for k in range(3)]
    checks, _ = _evaluate(_batch() + refused, processes=processes)
    evidence = checks["recovers_after_restart"].evidence
    assert "3 attempts" in evidence and "3 refused" in evidence and "did not start: reference server exited" in evidence


def test_unanswered_health_checks_fail():
    checks, _ = _evaluate(_batch() + _recovered(), _health(2, None))
    assert not checks["health_reports_ok"].passed
    assert "2 got no system_status" in checks["health_reports_ok"].evidence


def test_attempts_that_never_upgraded_cannot_pass_the_factory_check():
    refused = [_attempt(n, fi.BATCH[n % 2], outcome="refused", ready=False) for n in range(4)]
    checks, _ = _evaluate(refused, _health(2, None))
    assert not checks["no_factory_errors"].passed
    assert checks["no_factory_errors"].evidence == ("none of 4 connection attempts upgraded (4 refused): "
                                                    "no factory failure to judge")


def test_a_health_answer_that_echoes_a_secret_is_redacted():
    from gp_lib.redact import register_secret

    secret = "factory-health-test-secret-0123456789"
    register_secret(secret)
    status = {"type": "system_status", "factory_status": "error",
              "services": {"database": f"down (dsn postgres://app:{secret}@db)"}, "errors": [f"bad key {secret}"]}
    row = fi._health_row(AttemptRecord("h1", user_id="h"), status)
    assert secret not in str(row) and row["factory_status"] == "error"
    assert row["errors"] == "bad key <redacted>"


def test_the_reading_claims_no_health_it_did_not_see():
    rejected = [_attempt(n, fi.BATCH[n % 2], outcome="auth_rejected", ready=False) for n in range(4)]
    _, metrics = _evaluate(rejected, _health(1, None))
    text = fi._reading(metrics)
    assert text.startswith("None of 4 fresh connections reached readiness, yet none closed naming the factory")
    assert "factory ok" not in text and "no sign of a factory" not in text
    _, metrics = _evaluate(_batch() + _recovered(), _health(1, None))
    assert "4 of 4 fresh connections reached readiness" in fi._reading(metrics)
    assert "health reports the factory ok" not in fi._reading(metrics)


def test_nothing_to_judge_fails_without_raising():
    checks, metrics = _evaluate([], _health(0))
    assert not any(c.passed for c in checks.values())
    assert metrics["connections"] == 0 and metrics["ready_p50_ms"] is None


def test_the_factory_rejects_every_invalid_configuration_of_the_test_plan():
    table = fi.config_validation_table()
    assert table["valid"].tolist() == [False] * 5 + [True]
    assert "websocket_port must be an integer" in table.loc[2, "errors"]
    assert table.loc[5, "errors"] == ""


# -- parameters --------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, named", [
    ({"connections": 0}, "connections"),
    ({"health_checks": 0}, "health_checks"),
    ({"recovery_deadline_s": 0}, "recovery_deadline_s"),
    ({"retry_backoff_ms": 50.0, "retry_backoff_max_ms": 10.0}, "retry_backoff_max_ms"),
    ({"reference_factory_config": {"max_connections": 10}}, "reference_factory_config"),
    ({"reference_factory_config": ["max_connections"]}, "reference_factory_config"),
    ({"early_send_ms": -1.0}, "early_send_ms"),
])
def test_bad_parameters_are_named(changes, named):
    with pytest.raises(ParameterError, match=named):
        fi.Params(**changes).validate()


async def test_bad_parameters_fail_before_any_traffic():
    with pytest.raises(ParameterError, match="connections"):
        await fi.run(fi.Params(connections=0, target_url="ws://127.0.0.1:9/ws"))


def test_reference_faults_differ_only_in_the_factory_switch():
    params = fi.Params(reference_setup_ms=40.0)
    faulty, fixed = fi.reference_faults("faulty", params), fi.reference_faults("fixed", params)
    assert faulty["factory"] == "config" and fixed["factory"] is None
    assert {k: v for k, v in faulty.items() if k != "factory"} == {k: v for k, v in fixed.items() if k != "factory"}


# -- against the reference server ------------------------------------------------------------------

def _small(**changes):
    values = dict(health_checks=2, connections=6, recovery_deadline_s=3.0 * SCALE, reconnect_wait_s=0.2,
                  open_timeout_s=5.0 * SCALE, ready_timeout_s=5.0 * SCALE, receive_timeout_s=5.0 * SCALE)
    return fi.Params(**{**values, **changes})


async def _drive(server, params, arm="faulty"):
    """The scenario's traffic against `server`, without the restart (live-style recovery)."""
    target = Target(server.url, arm, fi.NAME, params, Credentials(params, secret=server.secret))
    return await fi.drive(target)


async def test_the_factory_close_does_not_depend_on_send_timing():
    # setup takes 200 ms, so "send at once" lands deep inside setup; neither group ever becomes ready
    with running_server({"factory": "config", "setup_ms": 200.0 * SCALE}) as server:
        observation = await _drive(server, _small(recovery_deadline_s=0.5 * SCALE))
    batch = observation.attempts[observation.attempts["condition"].isin(fi.BATCH)]
    at_once = batch[batch["condition"] == fi.SEND_AT_ONCE]
    waited = batch[batch["condition"] == fi.SEND_AFTER_READY]
    for group in (at_once, waited):
        assert len(group) == 3
        assert (group["close_code"] == 1011).all() and (group["close_reason"] == FACTORY_REASON).all()
        assert group["t_ready_ms"].isna().all()
    assert (at_once["t_first_send_ms"] < at_once["t_close_ms"]).all()  # they did send inside the window
    assert waited["t_first_send_ms"].isna().all()                      # these never got to send
    _, metrics = fi.evaluate(observation, _small())
    assert metrics["factory_closes_send_at_once"] == metrics["factory_closes_send_after_ready"] == 3


async def test_the_handshake_race_is_told_apart_from_a_factory_failure():
    with running_server({"race": True, "setup_ms": 200.0 * SCALE}) as server:
        observation = await _drive(server, _small(recovery_deadline_s=1.0 * SCALE))
    checks, metrics = fi.evaluate(observation, _small())
    by_name = {c.name: c for c in checks}
    assert by_name["no_factory_errors"].passed, by_name["no_factory_errors"].evidence
    assert metrics["closed_1011"] == 3 and metrics["ready"] == 3  # only the early senders died


@pytest.fixture(scope="module")
def reference_result():
    return asyncio.run(fi.run(_small()))


def test_reference_mode_reproduces_the_fault_and_verifies_the_fix(reference_result):
    result = reference_result
    assert result.verdict == "pass", [(c.name, c.evidence) for c in result.checks if not c.passed]
    faulty = {c.name: c for c in result.arm_checks["faulty"]}
    assert not any(c.passed for c in faulty.values())
    assert faulty["unique_connection_ids"].evidence.startswith(
        "0 of 6 connections got a connection id in their readiness marker, 0 distinct; 6 never reached readiness "
        "(6 × 1011 'Factory initialization failed')")
    assert all(c.passed for c in result.arm_checks["fixed"])


def test_health_says_error_under_the_fault_and_ok_without(reference_result):
    health = reference_result.table("health")
    assert health.groupby("arm")["factory_status"].agg(set).to_dict() == {"faulty": {"error"}, "fixed": {"ok"}}
    assert health[health["arm"] == "faulty"]["errors"].str.contains("max_connections").all()
    faulty = {c.name: c for c in reference_result.arm_checks["faulty"]}
    assert faulty["health_reports_ok"].evidence.startswith(
        "0 of 2 system_health_check answers said factory_status 'ok'")


def test_recovery_is_measured_in_the_fixed_arm_only(reference_result):
    faulty, fixed = reference_result.arm_metrics["faulty"], reference_result.arm_metrics["fixed"]
    assert faulty["restart_time_to_ready_ms"] is None and faulty["restart_attempts"] >= 2
    assert 0 < fixed["restart_time_to_ready_ms"] <= 3000.0 * SCALE
    processes = reference_result.table("processes")
    assert processes["started"].all()
    assert processes.set_index(["arm", "phase"])["faults"].to_dict() == {
        ("faulty", fi.FAULTY_START): "factory:config", ("faulty", fi.RESTARTED): "factory:config",
        ("fixed", fi.FAULTY_START): "factory:config", ("fixed", fi.RESTARTED): "none"}
    assert reference_result.arm_metrics["fixed"]["configs_rejected"] == 5


def test_the_figures_render_both_arms(reference_result):
    for figure in (plots_factory.startup_timeline(reference_result), plots_factory.close_reasons(reference_result),
                   plots_factory.time_to_ready(reference_result)):
        assert [ax.get_title() for ax in figure.axes[:2]] == ["fault injected", "fixed"]
        assert figure.axes[0].has_data() and figure.axes[1].has_data()


def test_the_close_reasons_plot_counts_what_the_text_and_the_diagnosis_count(reference_result):
    """The control start with the faulty configuration is drawn but not counted, as nowhere else counts it."""
    from gp_lib import diagnosis

    faulty = reference_result.arm_metrics["faulty"]
    figure = plots_factory.close_reasons(reference_result)
    labels = {text.get_position()[1]: text.get_text() for text in figure.axes[0].texts}
    rows = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    factory_row = rows.index("1011 Factory initialization failed")
    assert labels[factory_row].split()[0] == str(faulty["factory_closes"])
    assert "(+1 control)" in labels[factory_row]
    named = next(e for e in diagnosis.diagnose([reference_result])[0].evidence if "server closes named" in e)
    assert named.startswith(f"{faulty['factory_closes']} of ")
    assert "(table above)" not in fi.interpret(reference_result)


@pytest.mark.parametrize("faults, verdict", [({}, "pass"), ({"factory": "config"}, "fail")])
async def test_live_mode(monkeypatch, faults, verdict):
    with running_server(faults) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        result = await fi.run(_small(target_url=server.url, jwt_secret_env=SECRET_ENV,
                                     recovery_deadline_s=1.0 * SCALE))
    assert result.mode == "live" and result.verdict == verdict
    checks = {c.name: c for c in result.checks}
    if verdict == "pass":
        assert all(c.passed for c in checks.values())
        assert checks["recovers_after_restart"].evidence.startswith("first connection ok; first readiness")
        assert "on reconnect" in checks["recovers_after_restart"].evidence
    else:
        assert {n for n, c in checks.items() if not c.passed} == set(CHECK_NAMES)
        closes, attempts = result.metrics["factory_closes"], result.metrics["attempts"]
        assert closes == attempts >= 6 + 2 + 2  # fresh connections, health checks, first connect and a reconnect
        assert checks["no_factory_errors"].evidence.startswith(
            f"{closes} of {attempts} connection attempts closed naming the factory or initialization")
        assert checks["recovers_after_restart"].evidence.startswith(
            "first connection closed_1011 (1 × 1011 'Factory initialization failed'); "
            f"no readiness within {1.0 * SCALE:g} s on reconnect")
