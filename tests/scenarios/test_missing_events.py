"""The missing-events scenario: its judgement on hand-built tables, and its traffic against the reference server.

The integration tests control the timing they are about: the reference
server's pace between agent events is injected (10 ms), and the client's
silence and settle windows are chosen far above it (scaled by GP_TIME_SCALE),
so a healthy run is never cut short and a stalled one is given up quickly.
"""

from __future__ import annotations

import os
import time

import pytest

from gp_lib.scenarios import missing_events as me
from gp_lib.scenarios.common import Observation, ParameterError
from gp_lib.refserver import running_server
from gp_lib.trace import AttemptRecord, frame_row

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_EVENTS_TEST_SECRET"
STEP_MS = 10.0
HEALTHY = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking", "agent_completed")
OMIT_TOOLS = ("agent_started", "agent_thinking", "agent_thinking", "agent_completed")
OUT_OF_ORDER = ("agent_started", "agent_thinking", "tool_executing", "agent_completed", "tool_completed",
                "agent_thinking")


# -- hand-built tables ------------------------------------------------------------------------

def _event(kind, run_id, user_id, thread_id):
    fields = {"run_id": run_id, "user_id": user_id, "thread_id": thread_id}
    if kind.startswith("tool_"):
        fields["tool_name"] = "cost_analyzer"
    return {"type": kind, "data": fields, "timestamp": 1_790_000_000.0}


def _attempt(attempt_id, user_id, condition, frames, *, trial=None):
    """An attempts row and its frames, as the client would have recorded them."""
    record = AttemptRecord(attempt_id=attempt_id, user_id=user_id, scenario=me.NAME, arm="live", condition=condition,
                           t_open_ms=2.0, t_ready_ms=18.0, t_close_ms=400.0, close_code=1000, closed_by="client",
                           outcome="ok", extra={} if trial is None else {"trial": trial})
    for t_ms, direction, message in frames:
        record.frames.append(frame_row(attempt_id, t_ms, direction, message))
    record.frames_sent = sum(d == "sent" for _, d, _ in frames)
    record.frames_received = sum(d == "received" for _, d, _ in frames)
    return record


def _runs(user_id, plans, *, t0=20.0, deliver_to=None):
    """Frames of runs requested by `user_id`: `(sent, received)`; `deliver_to` collects events sent elsewhere."""
    frames = []
    for n, plan in enumerate(plans):
        thread, run_id, t = f"t-{user_id}-{n}", f"r-{user_id}-{n}", t0 + n * 100
        frames.append((t, "sent", {"type": "agent_request", "thread_id": thread, "user_id": user_id}))
        for k, kind in enumerate(plan):
            target = frames if deliver_to is None or k == 0 else deliver_to
            target.append((t + 1 + 10 * k, "received", _event(kind, run_id, user_id, thread)))
    return frames


def _reconnect(trial, state="running", answer=True):
    thread = f"t-reconnect-{trial}"
    drop = [(20.0, "sent", {"type": "agent_request", "thread_id": thread}),
            (21.0, "received", _event("agent_started", f"r-re-{trial}", "ur", thread))]
    status = [(20.0, "sent", {"type": "status_request", "thread_id": thread})]
    if answer:
        status.append((22.0, "received", {"type": "status_update", "data": {"thread_id": thread, "state": state}}))
    return [_attempt(f"re{trial}-drop", "ur", "reconnect_drop", drop, trial=trial),
            _attempt(f"re{trial}-status", "ur", "reconnect_status", status, trial=trial)]


def _records(plan=HEALTHY, *, misroute=False, state="running", answer=True, sequential=3):
    """One sequential user, two concurrent users (one of whose runs may go to the other), one reconnect trial."""
    leaked = []
    return [
        *_reconnect(0, state, answer),
        _attempt("c1", "u1", "concurrent", _runs("u1", [plan, plan], deliver_to=leaked if misroute else None)),
        _attempt("c2", "u2", "concurrent", _runs("u2", [plan, plan]) + leaked),
        _attempt("s1", "us", "sequential", _runs("us", [plan] * sequential)),
    ]


def _evaluate(records, **params):
    checks, metrics = me.evaluate(Observation.from_records("live", records), me.Params(**params))
    return {c.name: c for c in checks}, metrics


CHECKS = ["all_five_events", "started_first_completed_last", "tool_calls_closed", "no_cross_user_events",
          "status_after_reconnect"]


def test_healthy_runs_pass_every_check():
    checks, metrics = _evaluate(_records())
    assert list(checks) == CHECKS
    assert all(c.passed for c in checks.values()), checks
    assert checks["all_five_events"].evidence == "7 of 7 runs showed all five events (100%; need >= 100%)"
    assert checks["no_cross_user_events"].evidence == "0 of 43 agent events arrived on another user's socket"
    assert checks["status_after_reconnect"].evidence == \
        "1 of 1 reconnects got the thread's state back from status_request"
    assert metrics["runs"] == 7 and metrics["complete_runs"] == 7 and metrics["completeness_rate"] == 1.0
    assert metrics["runs_not_requested"] == 19 - 7  # the default Params plan 10 + 3 x 3 runs
    assert metrics["event_latency_p50_ms"] == 10.0 and metrics["time_to_first_event_p50_ms"] == 1.0
    assert metrics["tool_calls"] == 7 and metrics["cross_user_events"] == 0 and metrics["status_recovered"] == 1
    assert all(metrics[f"missing_{name}"] == 0 for name in me.EVENT_NAMES)
    assert set(me.HEADLINE) <= set(metrics)


def test_skipped_tool_events_fail_completeness_with_counts():
    checks, metrics = _evaluate(_records(OMIT_TOOLS))
    assert not checks["all_five_events"].passed
    assert checks["all_five_events"].evidence == ("0 of 7 runs showed all five events (0%; need >= 100%); "
                                                  "7 of 7 runs lacked tool_executing, tool_completed")
    assert checks["tool_calls_closed"].passed and "no tool_executing in 7 runs" in checks["tool_calls_closed"].evidence
    assert all(checks[name].passed for name in CHECKS[1:])
    assert metrics["missing_tool_executing"] == 7 and metrics["missing_agent_thinking"] == 0


def test_events_after_agent_completed_fail_the_order_check():
    checks, metrics = _evaluate(_records(OUT_OF_ORDER))
    assert checks["all_five_events"].passed
    assert not checks["started_first_completed_last"].passed
    assert checks["started_first_completed_last"].evidence.startswith("7 of 7 runs broke the order")
    assert "2 events after agent_completed (tool_completed, agent_thinking)" in \
        checks["started_first_completed_last"].evidence
    assert metrics["out_of_order_runs"] == 7


def test_an_unclosed_tool_call_fails_its_check():
    unclosed = ("agent_started", "tool_executing", "agent_thinking", "agent_completed")
    checks, metrics = _evaluate(_records(unclosed))
    assert not checks["tool_calls_closed"].passed
    assert checks["tool_calls_closed"].evidence == (
        "7 of 7 runs left a tool call unclosed or closed one never opened (7 tool calls in all); "
        "e.g. tool_executing of cost_analyzer never closed by a tool_completed")
    assert metrics["runs_with_open_tool_calls"] == 7


def test_events_on_another_users_socket_are_a_leak_and_missing_from_the_owner():
    checks, metrics = _evaluate(_records(misroute=True))
    assert not checks["no_cross_user_events"].passed
    assert checks["no_cross_user_events"].evidence == ("10 of 43 agent events arrived on another user's socket: "
                                                       "u2's socket got 10 of u1's (a cross-user leak)")
    assert not checks["all_five_events"].passed
    assert "2 of 7 runs lacked agent_thinking, tool_executing, tool_completed, agent_completed" in \
        checks["all_five_events"].evidence
    assert metrics["cross_user_events"] == 10 and metrics["runs"] == 7  # u1's runs on u2's socket are not u2's runs
    assert metrics["sockets_receiving_foreign_events"] == 1


def test_a_request_that_shows_no_event_counts_as_a_run_missing_all_five():
    records = _records()
    records[-1] = _attempt("s1", "us", "sequential", _runs("us", [HEALTHY, ()]))
    checks, metrics = _evaluate(records)
    assert metrics["runs"] == 6 and metrics["runs_without_events"] == 1 and metrics["missing_agent_started"] == 1
    assert "1 of 6 runs lacked agent_started, agent_thinking, tool_executing, tool_completed, agent_completed" in \
        checks["all_five_events"].evidence
    assert checks["started_first_completed_last"].evidence.startswith("0 of 5 runs")


@pytest.mark.parametrize("state, answer, evidence", [
    ("unknown", True, "0 of 1 reconnects got the thread's state back from status_request; trial 0: status_update "
                      "with state 'unknown', thread t-reconnect-0"),
    (None, False, "0 of 1 reconnects got the thread's state back from status_request; trial 0: no answer (ok)"),
])
def test_status_after_reconnect_needs_the_threads_state(state, answer, evidence):
    checks, _ = _evaluate(_records(state=state, answer=answer))
    assert not checks["status_after_reconnect"].passed
    assert checks["status_after_reconnect"].evidence == evidence


def test_completeness_threshold_is_a_parameter():
    records = _records()
    records[-1] = _attempt("s1", "us", "sequential", _runs("us", [HEALTHY, HEALTHY, HEALTHY, OMIT_TOOLS]))
    strict, _ = _evaluate(records)
    lenient, _ = _evaluate(records, min_complete_rate=0.8)
    assert not strict["all_five_events"].passed and lenient["all_five_events"].passed
    assert lenient["all_five_events"].evidence.startswith("7 of 8 runs showed all five events (88%; need >= 80%)")


def test_nothing_to_judge_fails_every_check_without_raising():
    refused = AttemptRecord(attempt_id="x1", user_id="us", scenario=me.NAME, condition="sequential",
                            outcome="closed_1011", close_code=1011, closed_by="server", t_open_ms=2.0, t_close_ms=9.0)
    for records in ([], [refused]):
        checks, metrics = _evaluate(records)
        assert not any(c.passed for c in checks.values())
        assert all("nothing to judge" in c.evidence for c in checks.values())
        assert metrics["runs"] == 0 and metrics["completeness_rate"] is None
    assert metrics["connections_not_ready"] == 1 and metrics["closed_1011"] == 1


def test_drive_tables_are_built_from_the_attempts_and_frames():
    observation = Observation.from_records("live", _records(OMIT_TOOLS))
    runs = me.requested_runs(observation.attempts, observation.frames)
    assert list(runs["condition"]) == ["concurrent"] * 4 + ["sequential"] * 3
    assert runs["missing"].eq("tool_executing, tool_completed").all()
    status = me.reconnect_status(observation.attempts, observation.frames)
    assert status.to_dict(orient="records") == [{
        "trial": 0, "thread_id": "t-reconnect-0", "saw_agent_started": True, "answer_type": "status_update",
        "answer_thread_id": "t-reconnect-0", "state": "running", "recovered": True, "outcome": "ok"}]


# -- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("changes, name", [
    ({"sequential_runs": 0, "concurrent_users": 0}, "sequential_runs"),
    ({"sequential_runs": -1}, "sequential_runs"),
    ({"runs_per_user": 2.5}, "runs_per_user"),
    ({"reconnect_trials": 0}, "reconnect_trials"),
    ({"concurrent_users": 5, "max_concurrency": 4}, "concurrent_users"),
    ({"agent": " "}, "agent"),
    ({"event_timeout_s": 0}, "event_timeout_s"),
    ({"run_timeout_s": 0}, "run_timeout_s"),
    ({"deadline_s": 0}, "deadline_s"),
    ({"min_complete_rate": 1.5}, "min_complete_rate"),
    ({"reference_events_mode": "drop_all"}, "reference_events_mode"),
    ({"reference_agent_step_ms": -5}, "reference_agent_step_ms"),
    ({"target_url": "http://example.com"}, "target_url"),
])
def test_bad_parameters_fail_fast_naming_the_parameter(changes, name):
    with pytest.raises(ParameterError, match=name):
        me.Params(**changes).validate()


async def test_run_rejects_bad_parameters_before_any_traffic():
    with pytest.raises(ParameterError, match="reference_events_mode"):
        await me.run(me.Params(reference_events_mode="nope"))


def test_from_mapping_checks_types():
    with pytest.raises(ParameterError, match="sequential_runs"):
        me.Params.from_mapping({"sequential_runs": "ten"})
    assert me.Params.from_mapping({"sequential_runs": 4}).sequential_runs == 4


@pytest.mark.parametrize("mode", me.EVENTS_MODES)
def test_reference_faults_differ_only_in_the_fault(mode):
    params = me.Params(reference_events_mode=mode, reference_agent_step_ms=7.0)
    faulty, fixed = me.reference_faults("faulty", params), me.reference_faults("fixed", params)
    assert faulty == {"events": mode, "agent_step_ms": 7.0}
    assert fixed == {"events": None, "agent_step_ms": 7.0}


# -- against the reference server --------------------------------------------------------------

def _small(**changes):
    values = dict(sequential_runs=3, concurrent_users=2, runs_per_user=2, reconnect_trials=1,
                  event_timeout_s=0.5 * SCALE, settle_ms=150 * SCALE, reference_agent_step_ms=STEP_MS)
    return me.Params(**{**values, **changes})


async def _live(server, monkeypatch, **changes):
    monkeypatch.setenv(SECRET_ENV, server.secret)
    return await me.run(_small(target_url=server.url, jwt_secret_env=SECRET_ENV, **changes))


def _failed(checks):
    return {c.name for c in checks if c.failed}


async def test_reference_mode_reproduces_skipped_tool_events_and_verifies_the_fix():
    result = await me.run(_small())
    assert result.verdict == "pass", result.checks
    assert _failed(result.arm_checks["faulty"]) == {"all_five_events"}
    faulty = {c.name: c for c in result.arm_checks["faulty"]}
    assert faulty["all_five_events"].evidence == ("0 of 7 runs showed all five events (0%; need >= 100%); "
                                                  "7 of 7 runs lacked tool_executing, tool_completed")
    assert not _failed(result.arm_checks["fixed"])
    assert result.metrics["faulty.complete_runs"] == 0 and result.metrics["fixed.complete_runs"] == 7
    runs = result.table("runs")
    assert len(runs) == 14 and set(runs["condition"]) == {"sequential", "concurrent"}
    assert set(result.attempts["condition"]) == {"sequential", "concurrent", "reconnect_drop", "reconnect_status"}
    assert result.attempts.groupby("arm")["condition"].apply(lambda c: (c == "sequential").sum()).eq(1).all()
    assert "lacked tool events" in me.interpret(result)
    summary = me.summary_table(result)
    assert summary[["arm", "phase", "runs", "complete"]].values.tolist() == [
        ["faulty", "concurrent", 4, 0], ["faulty", "sequential", 3, 0],
        ["fixed", "concurrent", 4, 4], ["fixed", "sequential", 3, 3]]
    assert summary["lacking"].tolist()[:2] == ["4 x tool_executing, tool_completed",
                                               "3 x tool_executing, tool_completed"]


@pytest.mark.parametrize("mode, broken, evidence", [
    ("omit_tools", {"all_five_events"}, "7 of 7 runs lacked tool_executing, tool_completed"),
    ("out_of_order", {"started_first_completed_last"},
     "7 of 7 runs broke the order (agent_started first and once, agent_completed last and once); "
     "e.g. 2 events after agent_completed (tool_completed, agent_thinking)"),
    ("misroute", {"all_five_events", "no_cross_user_events"},
     "7 of 7 runs lacked agent_thinking, tool_executing, tool_completed, agent_completed"),
])
async def test_live_mode_fails_exactly_the_checks_each_fault_breaks(mode, broken, evidence, monkeypatch):
    with running_server({"events": mode, "agent_step_ms": STEP_MS}) as server:
        result = await _live(server, monkeypatch)
    assert result.mode == "live" and result.verdict == "fail"
    assert _failed(result.checks) == broken
    assert any(evidence in c.evidence for c in result.checks if c.failed), result.checks
    if mode == "misroute":
        leak = next(c for c in result.checks if c.name == "no_cross_user_events")
        # each concurrent user's 2 runs lose 5 events each to the other connected user
        assert leak.evidence.startswith("20 of ")
        assert "u1_events_concurrent's socket got 10 of u2_events_concurrent's" in leak.evidence
        assert "u2_events_concurrent's socket got 10 of u1_events_concurrent's" in leak.evidence
        assert "cross-user data leak" in me.interpret(result)


@pytest.mark.parametrize("dialect", ["default", "mixed,timestamps=iso", "flat,ready=handshake"])
async def test_live_mode_passes_every_check_against_a_healthy_server_in_any_dialect(dialect, monkeypatch):
    with running_server({"agent_step_ms": STEP_MS}, dialect) as server:
        result = await _live(server, monkeypatch)
    assert result.verdict == "pass", result.checks
    assert result.metrics["runs"] == 7 and result.metrics["complete_runs"] == 7
    assert result.metrics["status_recovered"] == 1
    assert result.metrics["event_latency_p50_ms"] >= STEP_MS * 0.5
    assert "all 7 runs showed the five events" in me.interpret(result)


async def test_a_target_that_closes_every_connection_is_evidence_not_a_crash(monkeypatch):
    with running_server({"factory": "config"}) as server:
        result = await _live(server, monkeypatch)
    judged = [c for c in result.checks if c.name != "client_not_saturated"]  # the client's own load is no evidence
    assert result.verdict == "fail" and not any(c.passed for c in judged)
    assert all("nothing to judge" in c.evidence for c in result.checks[:4])
    assert result.checks[4].evidence.endswith("trial 0: no answer (closed_1011)")
    assert result.metrics["connections_not_ready"] == result.metrics["attempts"] > 0
    assert set(result.attempts["outcome"]) == {"closed_1011"}
    assert "never became ready" in me.interpret(result)


async def test_the_deadline_stops_new_runs(monkeypatch):
    with running_server({"agent_step_ms": STEP_MS}) as server:
        started = time.monotonic()
        result = await _live(server, monkeypatch, sequential_runs=500, concurrent_users=1, runs_per_user=1,
                             deadline_s=1.5 * SCALE)
        elapsed = time.monotonic() - started
    runs = result.observations["live"].tables["runs"]
    assert 0 < (runs["condition"] == "sequential").sum() < 100
    assert result.metrics["runs_not_requested"] == 501 - result.metrics["runs"]
    assert "planned runs were never requested (deadline_s reached" in me.interpret(result)
    assert elapsed < 1.5 * SCALE + 3.0 * SCALE
