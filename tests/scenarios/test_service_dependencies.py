"""The service-dependencies scenario: judging (pure, on hand-built tables) and traffic against the reference server.

Timing is controlled, never hoped for: the reference server's `agent_step_ms`
sets how long a healthy run takes (5 steps), and the scenario's
`receive_timeout_s` is the deadline after which a request counts as silent;
each test picks the two far apart.
"""

from __future__ import annotations

import contextlib
import json
import os

import pandas as pd
import pytest

from gp_lib.checks import Check
from gp_lib.scenarios import service_dependencies as sd
from gp_lib.scenarios.common import Credentials, Observation, ParameterError, ScenarioResult, Target
from gp_lib.refserver import running_server
from gp_lib.trace import AttemptRecord, frame_row

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
#: The silence deadline of the integration tests: a healthy run of 5 steps of STEP_MS ends 20 times sooner.
DEADLINE_S = 0.5 * SCALE
STEP_MS = 5.0
CHECK_NAMES = list(sd.CHECK_NAMES)
DEGRADED = {"flag_agent_unavailable", "message_agent_unavailable", "agent_supervisor_down", "llm_service_down"}


def small(**changes) -> sd.Params:
    values = dict(requests_per_condition=1, receive_timeout_s=DEADLINE_S, agent_step_ms=STEP_MS,
                  outages=["agent_supervisor", "llm_service"], open_timeout_s=5 * SCALE, ready_timeout_s=5 * SCALE)
    return sd.Params(**{**values, **changes})


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# -- classifying one answer ------------------------------------------------------------------

STARTED = {"type": "agent_started", "data": {"run_id": "r1"}}
RECEIVED = {"type": "message_received", "data": {"thread_id": "t1"}}
ANSWER = {"type": "agent_completed", "data": {"result": "Rightsize 12 idle instances."}}
FALLBACK = {"type": "agent_completed", "data": {"result": "A fallback answered: the agent service is "
                                                          "temporarily unavailable.", "fallback": True}}
GRACEFUL = {"type": "error", "message": "The agent service is temporarily unavailable. Please try again."}
GRACEFUL_FLAT = {"type": "error_message", "error_code": "SERVICE_UNAVAILABLE", "error_message": "LLM down",
                 "recovery_suggestions": ["Try again in a moment."]}
UNFRIENDLY = {"type": "error", "message": "Processing error", "error_code": "INTERNAL"}


@pytest.mark.parametrize("messages, closed, expected", [
    ([], False, "silent"),
    ([STARTED], False, "silent"),
    ([RECEIVED, STARTED, {"type": "agent_thinking"}], False, "silent"),
    ([STARTED, ANSWER], False, "complete"),
    ([STARTED, GRACEFUL, FALLBACK], False, "graceful"),
    ([GRACEFUL], False, "graceful"),
    ([GRACEFUL_FLAT], False, "graceful"),
    ([UNFRIENDLY], False, "unfriendly_error"),
    ([], True, "crashed"),
    ([RECEIVED], True, "crashed"),
    ([STARTED, GRACEFUL], True, "crashed"),
    ([STARTED, ANSWER], True, "complete"),
])
def test_classify_gives_each_answer_exactly_one_outcome(messages, closed, expected):
    assert sd.classify(messages, closed=closed) == expected


def _record(frames: list[tuple[float, str, dict | None]], *, close_ms: float = 900.0, closed_by: str = "client",
            close_code: int = 1000, close_reason: str = "") -> AttemptRecord:
    record = AttemptRecord("a1", user_id="u1", condition="agent_supervisor_down", t_open_ms=2.0, t_close_ms=close_ms,
                           closed_by=closed_by, close_code=close_code, close_reason=close_reason)
    record.frames = [frame_row("a1", t, direction, message, raw=json.dumps(message) if message else None)
                     for t, direction, message in frames]
    return record


def test_request_summary_times_answers_from_the_send_and_ignores_what_came_after_the_deadline():
    record = _record([(3.0, "received", {"type": "connection_established"}),
                      (10.0, "sent", {"type": "agent_request"}),
                      (11.5, "received", STARTED),
                      (1510.0, "received", ANSWER)], close_ms=1600.0)
    summary = sd.request_summary(record, deadline_s=1.0)
    assert summary["request_outcome"] == "silent"
    assert summary["first_message_ms"] == summary["last_message_ms"] == 1.5
    assert summary["agent_started"] and not summary["completed"]
    assert summary["text_shown"] == "[agent_started, then nothing for 1 s]"
    assert sd.request_summary(record, deadline_s=2.0)["request_outcome"] == "complete"


def test_request_summary_of_a_1011_close_shows_the_reason_and_when_it_came():
    record = _record([(10.0, "sent", {"type": "agent_request"})], close_ms=12.25, closed_by="server",
                     close_code=1011, close_reason="Service not ready: agent_supervisor")
    summary = sd.request_summary(record, deadline_s=1.0)
    assert summary["request_outcome"] == "crashed"
    assert summary["closed_ms"] == 2.25 and summary["first_message_ms"] is None
    assert summary["text_shown"] == "[connection closed 1011: Service not ready: agent_supervisor]"


def test_request_summary_shows_the_texts_a_user_saw_once_each():
    record = _record([(10.0, "sent", {"type": "agent_request"}), (11.0, "received", STARTED),
                      (12.0, "received", GRACEFUL), (13.0, "received", FALLBACK)])
    summary = sd.request_summary(record, deadline_s=1.0)
    assert summary["request_outcome"] == "graceful" and summary["fallback"] and summary["last_message_ms"] == 3.0
    assert summary["text_shown"] == (GRACEFUL["message"] + " / " + FALLBACK["data"]["result"])


def test_an_attempt_that_never_opened_is_not_a_request():
    record = AttemptRecord("a1", outcome="refused", t_close_ms=1.0)
    assert sd.request_summary(record, deadline_s=1.0)["request_outcome"] == sd.NOT_SENT


# -- judging the tables ------------------------------------------------------------------------

def _row(condition: str, outcome: str, *, request: str = "agent_request", started: bool = False,
         completed: bool = False, fallback: bool = False, first: float | None = 1.0, last: float | None = 1.0,
         close_code: int = 1000) -> dict:
    return {"attempt_id": f"a-{condition}-{outcome}", "condition": condition, "request": request, "flags": "",
            "outcome": "ok", "t_open_ms": 2.0, "frames_sent": 1, "frames_received": 3, "close_code": close_code,
            "close_reason": "", "request_outcome": outcome, "agent_started": started, "completed": completed,
            "fallback": fallback, "first_message_ms": first, "last_message_ms": last, "text_shown": ""}


def _observation(rows: list[dict], probes: list[dict] | None = None) -> Observation:
    tables = {"health_probes": pd.DataFrame(probes or [], columns=sd.PROBE_COLUMNS)}
    return Observation("live", pd.DataFrame(rows), pd.DataFrame(), tables)


HEALTHY = _row("healthy", "complete", started=True, completed=True, first=0.5, last=100.0)


def test_evaluate_passes_a_backend_that_degrades_gracefully():
    rows = [HEALTHY, _row("agent_supervisor_down", "graceful", started=True, completed=True, fallback=True, last=40.0),
            _row("message_agent_unavailable", "graceful", request="message", first=2.0, last=2.0)]
    probes = [{"condition": "healthy", "path": "/health", "url": "http://h/health", "status": 200, "answer": "ok"},
              {"condition": "healthy", "path": "/ws/health", "url": "http://h/ws/health", "status": None,
               "answer": "no answer: refused"}]
    checks, metrics = sd.evaluate(_observation(rows, probes), small())
    assert [c.name for c in checks] == CHECK_NAMES and all(c.passed for c in checks)
    assert by_name(checks)["graceful_message_in_every_failure"].evidence.startswith(
        "2 of 2 failure cases showed a user-facing")
    assert by_name(checks)["completion_or_fallback_notice"].evidence == (
        "2 of 2 agent requests ended with agent_completed (1 of them a fallback notice)")
    assert metrics["requests"] == 3 and metrics["complete"] == 1 and metrics["graceful"] == 2
    assert metrics["silent"] == metrics["crashed"] == metrics["unfriendly_error"] == 0
    assert metrics["time_to_first_message_p50_ms"] == 1.0 and metrics["time_to_last_message_p50_ms"] == 40.0
    assert metrics["health_probes"] == 2 and metrics["health_probes_answered"] == 1


def test_evaluate_fails_silence_with_counts_per_condition():
    rows = [HEALTHY,
            _row("agent_supervisor_down", "silent", started=True),
            _row("agent_supervisor_down", "silent", started=True),
            _row("llm_service_down", "silent", first=None, last=None),
            _row("database_down", "graceful", started=True, completed=True, fallback=True)]
    checks = by_name(sd.evaluate(_observation(rows), small(receive_timeout_s=2.0))[0])
    assert not checks["no_silent_failure"].passed
    assert checks["no_silent_failure"].evidence == (
        "3 of 5 requests got no answer within 2 s (2 after agent_started, 1 with nothing at all): "
        "agent_supervisor_down (2), llm_service_down (1)")
    assert not checks["graceful_message_in_every_failure"].passed
    assert checks["graceful_message_in_every_failure"].evidence.startswith("1 of 4 failure cases")
    assert not checks["agent_started_when_degraded"].passed
    assert "3 of 4 degraded agent requests got agent_started" in checks["agent_started_when_degraded"].evidence
    assert checks["completion_or_fallback_notice"].evidence.startswith("2 of 5 agent requests ended with")


def test_evaluate_fails_crashes_and_unfriendly_errors_but_not_for_silence():
    rows = [HEALTHY, _row("flag_agent_unavailable", "crashed", first=None, last=None, close_code=1011),
            _row("llm_service_down", "unfriendly_error", started=True)]
    checks, metrics = sd.evaluate(_observation(rows), small())
    checks = by_name(checks)
    assert checks["no_silent_failure"].passed
    assert checks["graceful_message_in_every_failure"].evidence == (
        "0 of 2 failure cases showed a user-facing 'temporarily unavailable / try again' message (need 100%); "
        "the others: crashed 1, unfriendly_error 1, in flag_agent_unavailable (1), llm_service_down (1)")
    assert not checks["agent_started_when_degraded"].passed
    assert metrics["crashed"] == metrics["unfriendly_error"] == metrics["closed_1011"] == 1


def test_evaluate_without_any_failure_leaves_the_degraded_checks_undecided():
    checks, _ = sd.evaluate(_observation([HEALTHY, HEALTHY]), small())
    assert [c.status for c in checks] == ["pass", "inconclusive", "inconclusive", "pass"]
    assert "no failure to judge: all 2 requests completed normally" in checks[1].evidence


def test_evaluate_decides_nothing_when_no_request_could_be_sent():
    rows = [{**_row("healthy", sd.NOT_SENT), "outcome": "refused", "t_open_ms": None}] * 3
    checks, metrics = sd.evaluate(_observation(rows), small())
    assert [c.name for c in checks] == CHECK_NAMES and all(c.inconclusive for c in checks)
    assert checks[0].evidence == "no request was sent: 3 attempts could not connect (refused 3)"
    assert metrics["requests"] == 0 and metrics["not_sent"] == 3


def test_user_messages_counts_what_each_condition_showed_in_traffic_order():
    rows = [{**HEALTHY, "text_shown": "answer"}, {**HEALTHY, "text_shown": "answer"},
            {**_row("llm_service_down", "silent"), "flags": "require_llm", "text_shown": "[nothing for 1 s]"}]
    table = sd.user_messages(pd.DataFrame(rows), ["llm_service_down", "healthy"])
    assert table.to_dict("records") == [
        {"condition": "llm_service_down", "request": "agent_request (require_llm)", "outcome": "silent",
         "text_shown": "[nothing for 1 s]", "count": 1},
        {"condition": "healthy", "request": "agent_request", "outcome": "complete", "text_shown": "answer",
         "count": 2}]


# -- parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, name", [
    ({"requests_per_condition": 0}, "requests_per_condition"),
    ({"requests_per_condition": 1.5}, "requests_per_condition"),
    ({"outages": ["agent_supervisor", "redis"]}, "outages"),
    ({"outages": ["database", "database"]}, "outages"),
    ({"reference_fault": "crash"}, "reference_fault"),
    ({"agent_step_ms": 200.0, "receive_timeout_s": 1.0}, "agent_step_ms"),
    ({"receive_timeout_s": 0}, "receive_timeout_s"),
])
async def test_bad_parameters_fail_before_any_traffic_naming_the_parameter(changes, name):
    with pytest.raises(ParameterError, match=name):
        await sd.run(sd.Params(**changes))


def test_a_slow_agent_is_allowed_against_a_live_target():
    sd.Params(target_url="ws://127.0.0.1:1/ws", agent_step_ms=200.0, receive_timeout_s=1.0).validate()


def test_reference_faults_differ_only_in_the_dependencies_fault():
    params = small(reference_fault="close")
    assert sd.reference_faults("faulty", params) == {"agent_step_ms": STEP_MS, "dependencies": "close"}
    assert sd.reference_faults("fixed", params) == {"agent_step_ms": STEP_MS}


# -- against the reference server ------------------------------------------------------------------

def _requests(result, arm: str) -> pd.DataFrame:
    return sd.requests_of(result.observations[arm].attempts)


async def test_silent_fault_reproduced_and_fixed_server_answers_gracefully_with_a_fallback():
    result = await sd.run(small(reference_fault="silent"))
    assert result.verdict == "pass"
    faulty, fixed = _requests(result, "faulty"), _requests(result, "fixed")
    degraded = faulty["condition"].isin(DEGRADED)
    assert (faulty.loc[degraded, "request_outcome"] == "silent").all() and degraded.sum() == 4
    assert (faulty.loc[~degraded, "request_outcome"] == "complete").all()
    failed = {c.name: c for c in result.arm_checks["faulty"] if not c.passed}
    assert set(failed) == {"no_silent_failure", "graceful_message_in_every_failure", "completion_or_fallback_notice"}
    assert failed["no_silent_failure"].evidence.startswith(f"4 of 6 requests got no answer within {DEADLINE_S:g} s")
    fixed_degraded = fixed[fixed["condition"].isin(DEGRADED)]
    assert (fixed_degraded["request_outcome"] == "graceful").all() and fixed_degraded["fallback"].all()
    assert fixed_degraded["text_shown"].str.contains("temporarily unavailable").all()
    assert all(c.passed for c in result.arm_checks["fixed"])
    assert "**Silence is the worst outcome**" in sd.interpret(result)


async def test_close_fault_crashes_degraded_requests_with_1011_service_not_ready():
    result = await sd.run(small(reference_fault="close", health_probes=False))
    faulty = _requests(result, "faulty")
    crashed = faulty[faulty["condition"].isin(DEGRADED)]
    assert (crashed["request_outcome"] == "crashed").all() and len(crashed) == 4
    assert (crashed["close_code"] == 1011).all()
    assert crashed["close_reason"].str.startswith("Service not ready: ").all()
    assert set(crashed.loc[crashed["condition"] == "llm_service_down", "close_reason"]) == {
        "Service not ready: llm_service"}
    failed = {c.name for c in result.arm_checks["faulty"] if not c.passed}
    assert failed == {"graceful_message_in_every_failure", "agent_started_when_degraded",
                      "completion_or_fallback_notice"}
    assert result.arm_metrics["faulty"]["closed_1011"] == 4
    assert result.verdict == "pass" and result.table("health_probes").empty
    assert "`Service not ready: llm_service`" in sd.interpret(result)


async def test_drive_takes_each_service_down_probes_health_and_restores_it():
    params = small(outages=["thread_service", "database"])
    with running_server({"agent_step_ms": STEP_MS}) as server:
        target = Target(server.url, "fixed", sd.NAME, params, Credentials(params, secret=server.secret),
                        server=server)
        observation = await sd.drive(target)
        assert server.faults()["services_down"] == []
    probes = observation.tables["health_probes"]
    ws_health = probes[probes["path"] == "/ws/health"].set_index("condition")["answer"].to_dict()
    assert ws_health == {"healthy": "healthy", "thread_service_down": "degraded; down: thread_service",
                         "database_down": "degraded; down: database"}
    outages = observation.attempts[observation.attempts["service_down"].notna()]
    assert sorted(outages["condition"]) == ["database_down", "thread_service_down"]
    assert (outages["request_outcome"] == "graceful").all()
    assert list(observation.tables["user_messages"]["condition"])[-2:] == ["thread_service_down", "database_down"]


# -- live mode ------------------------------------------------------------------------------------------

@pytest.fixture
def live(monkeypatch):
    """`start(faults, dialect, **changes)`: a reference server of our own, and live-mode Params aimed at it."""
    with contextlib.ExitStack() as stack:
        def start(faults: dict, dialect: str = "default", **changes) -> sd.Params:
            server = stack.enter_context(running_server(faults, dialect))
            monkeypatch.setenv("GP_TEST_SD_SECRET", server.secret)
            return small(target_url=server.url, jwt_secret_env="GP_TEST_SD_SECRET", **changes)

        yield start


async def test_live_target_without_fault_passes_every_check(live):
    result = await sd.run(live({"agent_step_ms": STEP_MS}))
    assert list(result.observations) == ["live"] and result.verdict == "pass"
    rows = _requests(result, "live")
    assert sorted(rows["condition"]) == sorted(r.condition for r in sd.NOTHING_DOWN_REQUESTS)
    assert result.metrics["graceful"] == 2 and result.metrics["health_probes_answered"] == 2
    assert sd.interpret(result).endswith("degradation is graceful.")


async def test_live_target_with_silent_fault_fails_with_numbers(live):
    result = await sd.run(live({"agent_step_ms": STEP_MS, "dependencies": "silent"}))
    assert result.verdict == "fail"
    checks = by_name(result.checks)
    assert checks["no_silent_failure"].evidence.startswith(
        f"2 of 4 requests got no answer within {DEADLINE_S:g} s (2 after agent_started, 0 with nothing at all): "
        "flag_agent_unavailable (1), message_agent_unavailable (1)")
    assert not checks["completion_or_fallback_notice"].passed


async def test_live_target_that_serves_no_http_routes_records_the_probes_and_still_passes(live):
    result = await sd.run(live({"agent_step_ms": STEP_MS}, "http_routes=false"))
    assert result.verdict == "pass"
    assert list(result.table("health_probes")["status"]) == [404, 404]
    assert sd.health_table(result).to_dict("records") == [
        {"arm": "live", "condition": "healthy", "/health": '404 {"error": "no route /health"}',
         "/ws/health": '404 {"error": "no route /ws/health"}'}]
    assert "gave no health answer (HTTP 404)" in sd.interpret(result)


async def test_a_run_slower_than_the_deadline_counts_as_silent(live):
    # 5 steps of 0.6 x deadline: agent_started and one agent_thinking arrive in time, the completion does not.
    result = await sd.run(live({"agent_step_ms": 600.0 * DEADLINE_S}, health_probes=False))
    healthy = _requests(result, "live").set_index("condition").loc["healthy"]
    assert healthy["request_outcome"] == "silent" and healthy["agent_started"]
    assert healthy["text_shown"] == f"[agent_started, agent_thinking, then nothing for {DEADLINE_S:g} s]"


# -- figures ---------------------------------------------------------------------------------------------

def test_figures_of_a_run_that_sent_nothing_say_so_on_each_arm():
    import matplotlib.pyplot as plt

    from gp_lib.plots import dependencies as plots

    record = AttemptRecord("a1", condition=sd.HEALTHY, outcome="refused", t_close_ms=1.0,
                           extra={"request": "agent_request", "flags": "", "service_down": None})
    record.extra.update(sd.request_summary(record, 1.0))
    result = ScenarioResult(sd.NAME, "reference", None, {"receive_timeout_s": 1.0},
                            {"faulty": Observation.from_records("faulty", [record]),
                             "fixed": Observation.from_records("fixed", [])}, {}, {}, [], {}, "", "")
    matrix, timings = plots.outcome_matrix(result), plots.message_timings(result)
    notes = [[t.get_text() for t in ax.texts] for ax in matrix.axes]
    assert notes[0][-1] == "1" and notes[1] == ["no requests"]
    assert [[t.get_text() for t in ax.texts] for ax in timings.axes] == [["no requests sent"]] * 2
    plt.close(matrix)
    plt.close(timings)


def test_the_outcome_matrix_labels_an_arm_whose_attempts_carry_no_request_columns():
    from gp_lib.plots import dependencies as plots

    bare = AttemptRecord("a1", condition=sd.HEALTHY, outcome="refused", t_close_ms=1.0)
    result = ScenarioResult(sd.NAME, "live", None, {"receive_timeout_s": 1.0},
                            {"live": Observation.from_records("live", [bare])}, {}, {}, [], {}, "", "")
    figure = plots.outcome_matrix(result)
    assert [t.get_text() for t in figure.axes[0].texts] == ["no requests"]
