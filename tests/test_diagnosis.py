"""gp_lib.diagnosis on hand-built tables: each root cause, each look-alike, and nothing wrong. No network."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from gp_lib import diagnosis
from gp_lib.checks import Check
from gp_lib.diagnosis import Finding, combine, diagnose, diagnose_tables, findings_table, merge
from gp_lib.scenarios.common import Observation, ScenarioResult
from gp_lib.trace import AttemptRecord, frame_row, save_jsonl, to_tables

RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking", "agent_completed"]
_ids = iter(range(1_000_000))


# -- building tables ------------------------------------------------------------------------------

def attempt(*, user: str = "u1", ready: float | None = 20.0, send: float | None = None, close: float = 400.0,
            code: int | None = 1000, reason: str = "", by: str | None = "client", status: int | None = 101,
            outcome: str = "ok", transport: str = "both", error: str | None = None, condition: str = "",
            received: list[tuple[float, dict[str, Any]]] = (), sent: list[tuple[float, dict[str, Any]]] = (),
            **extra: Any) -> AttemptRecord:
    """One attempt: upgraded at 5 ms unless `status` says otherwise; frames at the given times."""
    record = AttemptRecord(attempt_id=f"a{next(_ids)}", user_id=user, condition=condition, extra=extra,
                           t_open_ms=5.0 if status == 101 else None, t_ready_ms=ready if status == 101 else None,
                           t_first_send_ms=send, t_close_ms=close, close_code=code, close_reason=reason,
                           closed_by=by, handshake_status=status, outcome=outcome, auth_transport=transport,
                           error=error)
    rows = [frame_row(record.attempt_id, t, "received", m) for t, m in received]
    rows += [frame_row(record.attempt_id, t, "sent", m) for t, m in sent]
    if send is not None and not sent:
        rows.append(frame_row(record.attempt_id, send, "sent", {"type": "ping"}))
    record.frames = sorted(rows, key=lambda r: r["t_ms"])
    return record


def run_frames(user: str, types: list[str] = RUN, start: float = 30.0, run_id: str = "r1",
               **fields: Any) -> list[tuple[float, dict[str, Any]]]:
    frames = []
    for n, kind in enumerate(types):
        event = {"type": kind, "run_id": run_id, "user_id": user, **fields}
        if kind.startswith("tool_"):
            event["tool_name"] = "cost_analyzer"
        frames.append((start + n, event))
    return frames


def request(t: float = 25.0, **flags: Any) -> list[tuple[float, dict[str, Any]]]:
    return [(t, {"type": "agent_request", "message": "cut costs", **flags})]


def tables(*records: AttemptRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    return to_tables(records)


def causes(findings: list[Finding]) -> list[str]:
    return [f.root_cause for f in findings]


def text(finding: Finding) -> str:
    return " | ".join(finding.evidence)


def healthy(n: int = 4) -> list[AttemptRecord]:
    """Early pings answered, waiting clients, and complete agent runs: a fixed server."""
    records = [attempt(send=6.0, received=[(21.0, {"type": "pong"})]) for _ in range(n)]
    records += [attempt(user=f"u{k}", send=25.0, sent=request(), received=run_frames(f"u{k}"), close=60.0)
                for k in range(n)]
    return records


# -- nothing wrong ------------------------------------------------------------------------------------

def test_a_message_sent_before_readiness_then_a_normal_close_is_unanswered_whatever_the_marker():
    """A crashed message loop (the real backend's 1000 "main cleanup") after a request sent before the marker:
    the marker that follows the request is not its answer."""
    marker = {"type": "connection_established", "data": {"connection_id": "c1"}}
    crashed = [attempt(user=f"u{k}", send=3.0, sent=request(t=3.0), received=[(20.0, marker)], close=25.0,
                       by="server", reason="main cleanup") for k in range(4)]
    findings = diagnose_tables(*tables(*crashed))
    assert findings and findings[0].root_cause == "missing_events", [f.to_dict() for f in findings]
    assert "messages unanswered" in text(findings[0])


def test_a_healthy_run_gives_an_empty_diagnosis():
    assert diagnose_tables(*tables(*healthy())) == []


def test_no_attempts_gives_an_empty_diagnosis():
    empty_attempts, empty_frames = to_tables([])
    assert diagnose_tables(empty_attempts, empty_frames) == []


def test_graceful_degradation_is_the_fix_not_the_fault():
    answer = [(26.0, {"type": "agent_started", "run_id": "r1", "user_id": "u1"}),
              (27.0, {"type": "error", "message": "The agent service is temporarily unavailable. Please try again.",
                      "error_code": "SERVICE_UNAVAILABLE"}),
              (28.0, {"type": "agent_completed", "run_id": "r1", "user_id": "u1",
                      "data": {"result": "A fallback answered because the service is temporarily unavailable"}})]
    records = [attempt(send=25.0, sent=request(simulate_agent_unavailable=True), received=answer)]
    assert diagnose_tables(*tables(*records, *healthy())) == []


def test_deliberate_fault_controls_are_not_evidence():
    control = [attempt(ready=None, close=20.0, code=1011, reason="Factory initialization failed", by="server",
                       outcome="closed_1011", condition="faulty_start") for _ in range(3)]
    assert diagnose_tables(*tables(*control, *healthy())) == []


# -- race --------------------------------------------------------------------------------------------

def race_run(early: int = 10, waited: int = 10, **extra: Any) -> list[AttemptRecord]:
    records = [attempt(ready=None, send=6.0, close=12.0, code=1011, by="server", outcome="closed_1011",
                       reason="Internal error", **extra) for _ in range(early)]
    records += [attempt(send=25.0, received=[(26.0, {"type": "pong"})], **extra) for _ in range(waited)]
    return records


def test_race_1011s_that_vanish_after_waiting_for_readiness():
    findings = diagnose_tables(*tables(*race_run()))
    assert causes(findings) == ["race_conditions"]
    assert findings[0].confidence >= 0.9
    assert findings[0].evidence[0] == ("1011 before readiness in 10 of 10 attempts that sent before the readiness "
                                       "marker, 0 of 10 that did not")
    assert "went out 1.0 to 1.0 ms after the upgrade" in text(findings[0])


def test_race_rate_by_concurrency_when_the_column_is_there():
    records = race_run(2, 0, concurrency=1) + race_run(8, 0, concurrency=20)
    records += [attempt(send=6.0, received=[(21.0, {"type": "pong"})], concurrency=1) for _ in range(6)]
    records += race_run(0, 10, concurrency=20)
    evidence = text(diagnose_tables(*tables(*records))[0])
    assert "2 of 8 at 1, 8 of 8 at 20" in evidence


def test_race_without_any_waiting_client_is_less_certain():
    with_contrast = diagnose_tables(*tables(*race_run()))[0]
    without = diagnose_tables(*tables(*race_run(waited=0)))[0]
    assert without.root_cause == "race_conditions" and without.confidence < with_contrast.confidence
    assert "the contrast is missing" in without.evidence[0]


# -- factory (and the race look-alike it makes) ----------------------------------------------------------

def factory_run(n: int = 10, reason: str = "Factory initialization failed") -> list[AttemptRecord]:
    closed = dict(ready=None, close=18.0, code=1011, reason=reason, by="server", outcome="closed_1011")
    return [attempt(send=6.0, **closed) for _ in range(n)] + [attempt(**closed) for _ in range(n)]


def test_factory_first_and_the_race_ruled_out_even_when_the_race_checks_fail():
    checks = {"race_conditions": [Check("no_1011_closes", False, "20 of 20 attempts closed 1011"),
                                  Check("success_rate", False, "0 of 20")]}
    findings = diagnose_tables(*tables(*factory_run()), checks)
    assert causes(findings) == ["factory_initialization"]
    evidence = text(findings[0])
    assert "20 of 20 server closes named the factory or initialization" in evidence
    assert ("race ruled out: 1011 as often after waiting for readiness (10 of 10) as when sending before it "
            "(10 of 10) (so its failing checks no_1011_closes, success_rate follow from factory_initialization)"
            in evidence)


def test_factory_without_a_telling_reason_is_found_by_timing():
    findings = diagnose_tables(*tables(*factory_run(reason="")))
    assert causes(findings) == ["factory_initialization"]
    assert "independent of send timing: 1011 before readiness in 10 of 10" in text(findings[0])


def test_factory_status_error_alone_names_the_factory():
    status = {"type": "system_status", "data": {"factory_status": "error",
                                                "errors": ["invalid factory configuration: max_connections"]}}
    records = [attempt(send=6.0, sent=[(6.0, {"type": "system_health_check"})], received=[(7.0, status)])]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["factory_initialization"]
    assert "factory_status 'error' in 1 of 1" in text(findings[0]) and "max_connections" in text(findings[0])


# -- service dependencies -----------------------------------------------------------------------------

def test_service_not_ready_closes_after_readiness_are_dependencies_not_a_race():
    records = [attempt(send=25.0, sent=request(), close=30.0, code=1011, by="server", outcome="closed_1011",
                       reason="Service not ready: llm_service") for _ in range(2)]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["service_dependencies"]
    assert "2 of 2 server closes said a service was not ready (1011 'Service not ready: llm_service' x2)" \
        in text(findings[0])
    assert "race ruled out: all 2 1011 closes came after the readiness marker" in text(findings[0])


def test_silence_after_a_request_is_dependencies():
    records = [attempt(send=25.0, sent=request(simulate_agent_unavailable=True), close=3030.0,
                       outcome="receive_timeout") for _ in range(3)]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["service_dependencies"]
    assert "silence: 3 of 7 agent requests got no answer at all (3 sent with simulate_agent_unavailable" \
        in text(findings[0])


def test_a_quick_hang_up_is_not_silence():
    records = [attempt(send=25.0, sent=request(), close=40.0)]
    assert diagnose_tables(*tables(*records, *healthy())) == []


def test_agent_started_then_nothing_is_dependencies():
    records = [attempt(send=25.0, sent=request(), received=run_frames("u1", ["agent_started"]), close=3030.0,
                       outcome="receive_timeout")]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["service_dependencies"]
    assert "agent_started then nothing in 1 of 5 runs" in text(findings[0])


def test_an_unfriendly_service_error_is_dependencies():
    error = {"type": "error_message", "error_code": "INTERNAL", "error_message": "Service not ready: database"}
    records = [attempt(send=25.0, sent=request(), received=[(26.0, error)])]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["service_dependencies"]
    assert "1 error frames named an unavailable service" in text(findings[0])


# -- missing events -----------------------------------------------------------------------------------

def test_runs_that_finish_without_the_tool_events():
    skipped = ["agent_started", "agent_thinking", "agent_completed"]
    records = [attempt(send=25.0, sent=request(), received=run_frames("u1", skipped)) for _ in range(3)]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["missing_events"]
    assert "3 of 7 finished runs lacked events (tool_executing missing in 3, tool_completed missing in 3)" \
        in text(findings[0])


def test_events_out_of_order():
    shuffled = ["agent_started", "agent_thinking", "tool_executing", "agent_completed", "tool_completed"]
    records = [attempt(send=25.0, sent=request(), received=run_frames("u1", shuffled))]
    findings = diagnose_tables(*tables(*records, *healthy()))
    assert causes(findings) == ["missing_events"]
    assert "1 of 5 finished runs had their events out of order" in text(findings[0])


def test_misrouted_events_are_missing_events_not_a_stalled_service():
    alice = attempt(user="alice", send=25.0, sent=request(), received=run_frames("alice", ["agent_started"]),
                    close=3030.0, outcome="receive_timeout")
    bob = attempt(user="bob", received=run_frames("alice", RUN[1:], start=31.0), close=3030.0)
    checks = {"service_dependencies": [{"name": "no_silent_failure", "passed": False, "evidence": "1 of 1"}]}
    findings = diagnose_tables(*tables(alice, bob, *healthy()), checks)
    assert causes(findings) == ["missing_events"]
    evidence = text(findings[0])
    assert "cross-user delivery: 5 events of other users' runs reached 1 users' sockets (runs of alice)" in evidence
    assert "service_dependencies ruled out: the 1 runs that stopped after agent_started had their events " \
           "delivered to other users' sockets" in evidence


# -- authentication -------------------------------------------------------------------------------------

def rejected_by_close(message: str, n: int = 3, **kwargs: Any) -> list[AttemptRecord]:
    error = {"type": "error", "error_code": "AUTH_FAILED", "message": message}
    return [attempt(ready=None, close=8.0, code=1008, reason="Authentication failed", by="server",
                    outcome="auth_rejected", received=[(6.0, error)], **kwargs) for _ in range(n)]


def rejected_by_http(body: str, n: int = 3, **kwargs: Any) -> list[AttemptRecord]:
    return [attempt(status=401, code=None, by=None, outcome="auth_rejected",
                    error=f"HTTP 401 instead of the upgrade: {body}", **kwargs) for _ in range(n)]


def test_wrong_secret_is_authentication_with_the_reason():
    findings = diagnose_tables(*tables(*rejected_by_close("Authentication failed: bad signature: signed with "
                                                          "another secret")))
    assert causes(findings) == ["authentication"] and findings[0].confidence >= 0.9
    evidence = text(findings[0])
    assert "3 of 3 attempts were rejected by authentication: 0 HTTP 401/403 instead of the upgrade, 3 closed 1008" \
        in evidence
    assert "wrong secret (bad signature): 3 of 3 rejections" in evidence


@pytest.mark.parametrize("said, kind", [
    ('{"error": "invalid token: expired 3.0 h ago"}', "expired token"),
    ('{"error": "invalid token: malformed token: Not enough segments"}', "malformed token"),
    ('{"error": "invalid token: wrong issuer \'x\'"}', "wrong issuer"),
    ("", "no reason given"),
])
def test_the_kind_of_authentication_problem_is_named(said, kind):
    findings = diagnose_tables(*tables(*rejected_by_http(said)))
    assert causes(findings) == ["authentication"]
    assert f"{kind}: 3 of 3 rejections" in text(findings[0])


def test_header_stripped_by_a_proxy_is_named():
    stripped = rejected_by_http('{"error": "authentication required: no token"}', transport="header")
    passing = [attempt(transport="subprotocol") for _ in range(2)]
    findings = diagnose_tables(*tables(*stripped, *passing))
    assert causes(findings) == ["authentication"]
    assert ("Authorization header stripped by a proxy or load balancer: 3 of 3 attempts that sent the token only "
            "in the header were rejected for having none, while 2 of 2 that offered it as a "
            "subprotocol connected") in text(findings[0])


def test_a_missing_token_without_header_only_attempts_is_not_called_stripped():
    findings = diagnose_tables(*tables(*rejected_by_http('{"error": "no token"}', transport="both")))
    assert "stripped" not in text(findings[0]) and "no token reached the server: 3 of 3" in text(findings[0])


def test_a_rate_limit_1008_is_not_authentication():
    limited = [attempt(close=30.0, code=1008, reason="too many connections", by="server", outcome="closed_other")]
    findings = diagnose_tables(*tables(*limited, *healthy()))
    assert causes(findings) == ["unknown"]
    assert "1 of 9 attempts ended abnormally: 1008 (policy violation (auth, limits)) x1" in text(findings[0])


def test_rejecting_everything_explains_every_failing_check():
    checks = {"race_conditions": [Check("success_rate", False, "0 of 3")]}
    findings = diagnose_tables(*tables(*rejected_by_close("bad signature")), checks)
    assert causes(findings) == ["authentication"]
    assert "no attempt got past the upgrade and authentication (0 of 3)" in text(findings[0])


# -- unreachable and unknown ---------------------------------------------------------------------------

def refused(n: int) -> list[AttemptRecord]:
    return [attempt(status=None, code=None, by=None, outcome="refused", error="[Errno 111] Connect call failed")
            for _ in range(n)]


def test_a_closed_port_is_unreachable():
    findings = diagnose_tables(*tables(*refused(4)))
    assert causes(findings) == ["unreachable"] and findings[0].confidence == pytest.approx(0.99)
    assert findings[0].evidence[0] == "4 of 4 attempts never reached the WebSocket endpoint: 4 refused"


def test_a_few_refusals_among_good_attempts_are_not_unreachable():
    assert diagnose_tables(*tables(*refused(2), *healthy())) == []


def test_an_unrecognised_1011_is_unknown():
    odd = [attempt(send=25.0, close=30.0, code=1011, reason="Processing error", by="server", outcome="closed_1011")]
    findings = diagnose_tables(*tables(*odd, *healthy()))
    assert causes(findings) == ["unknown"]
    assert "1 of 9 attempts closed 1011 without a recognised signature ('Processing error' x1; 1 after readiness)" \
        in text(findings[0])


def test_a_missing_readiness_marker_is_unknown():
    findings = diagnose_tables(*tables(attempt(ready=None, outcome="ready_timeout"), *healthy()))
    assert causes(findings) == ["unknown"] and "1 of 9 upgraded attempts got no readiness marker" in text(findings[0])


def test_failing_checks_without_a_signature_are_unknown():
    checks = {"race_conditions": [Check("mean_connect_time", False, "mean upgrade time 6000 ms")]}
    findings = diagnose_tables(*tables(*healthy()), checks)
    assert causes(findings) == ["unknown"]
    assert "failing race_conditions checks: mean_connect_time" in text(findings[0])


def test_failing_checks_of_the_cause_found_raise_its_confidence():
    alone = diagnose_tables(*tables(*race_run(early=1, waited=10)))[0]
    checks = {"race_conditions": [{"name": "no_1011_closes", "passed": False, "evidence": "1 of 11"},
                                  {"name": "issue_reproduced", "passed": False, "evidence": "ignored"}]}
    agreed = diagnose_tables(*tables(*race_run(early=1, waited=10)), checks)[0]
    assert agreed.confidence == pytest.approx(alone.confidence + 0.05)
    assert agreed.evidence[-1] == "failing race_conditions checks agree: no_1011_closes"


def test_captured_tables_without_optional_columns():
    """A trace imported from elsewhere: no scenario, closed_by or auth_transport columns, no frames."""
    attempts, _ = tables(*race_run())
    bare = attempts.drop(columns=["scenario", "arm", "condition", "closed_by", "auth_transport", "invalid_frames"])
    assert causes(diagnose_tables(bare, None)) == ["race_conditions"]


# -- several diagnoses --------------------------------------------------------------------------------------

def result(scenario: str, observations: dict[str, list[AttemptRecord]],
           checks: dict[str, list[Check]] | None = None) -> ScenarioResult:
    built = {arm: Observation.from_records(arm, records) for arm, records in observations.items()}
    mode = "live" if "live" in built else "reference"
    return ScenarioResult(scenario, mode, None, {}, built, checks or {arm: [] for arm in built}, {}, [], {}, "", "")


def test_reference_results_are_diagnosed_arm_by_arm():
    race = result("race_conditions", {"faulty": race_run(), "fixed": healthy()})
    factory = result("factory_initialization", {"faulty": factory_run(), "fixed": healthy()})
    assert set(causes(diagnose([race, factory]))) == {"race_conditions", "factory_initialization"}
    assert diagnose([race, factory], arm="fixed") == []


def test_live_results_are_pooled_across_scenarios():
    """The factory's 1011s hit the race scenario's waiting clients too: pooled, the race is ruled out."""
    early = result("race_conditions", {"live": factory_run()[:10]})
    waited = result("factory_initialization", {"live": factory_run()[10:]})
    assert causes(diagnose([early])) == ["factory_initialization"]
    findings = diagnose([early, waited])
    assert causes(findings) == ["factory_initialization"]
    assert "independent of send timing: 1011 before readiness in 10 of 10" in text(findings[0])


def test_merge_keeps_the_strongest_per_cause():
    merged = merge([[Finding("race_conditions", 0.6, ["a"]), Finding("unknown", 0.3, ["u"])],
                    [Finding("race_conditions", 0.9, ["b"])]])
    assert [(f.root_cause, f.confidence, f.evidence) for f in merged] == [
        ("race_conditions", 0.9, ["b", "a"]), ("unknown", 0.3, ["u"])]


def test_combine_reads_the_traces_and_checks_the_notebooks_left(tmp_path):
    attempts, frames = tables(*race_run())
    save_jsonl(tmp_path / "traces" / "race_conditions-live.jsonl", attempts, frames)
    scraps = {"race_conditions": {"mode": "live", "traces": ["traces/race_conditions-live.jsonl"],
                                  "arm_checks": {"live": [{"name": "no_1011_closes", "passed": False,
                                                           "evidence": "10 of 20"}]}},
              "missing_events": {"mode": "live", "traces": ["traces/gone-live.jsonl"],
                                 "diagnosis": [{"root_cause": "unknown", "confidence": 0.3, "evidence": ["x"]}]}}
    combined = combine(scraps, base_dir=tmp_path)
    assert [d["root_cause"] for d in combined] == ["race_conditions", "unknown"]
    assert combined[0]["evidence"][-1] == "failing race_conditions checks agree: no_1011_closes"
    assert combined[0]["confidence"] == 0.99


def test_combine_takes_the_notebooks_own_diagnosis_when_a_trace_was_cut_short(tmp_path):
    """A kernel killed while writing its trace leaves half a line: the batch must still write its summary."""
    attempts, frames = tables(*race_run())
    path = save_jsonl(tmp_path / "traces" / "race_conditions-faulty.jsonl", attempts, frames)
    path.write_text(path.read_text()[:-40])
    own = [{"root_cause": "race_conditions", "confidence": 0.8, "evidence": ["from the notebook"]}]
    scraps = {"race_conditions": {"mode": "reference", "traces": [str(path)], "diagnosis": own}}
    assert combine(scraps) == own


def test_combine_merges_the_notebooks_own_diagnoses_in_reference_mode(tmp_path):
    """Each faulty arm is diagnosed alone, as its notebook already did: its trace is not read again."""
    attempts, frames = tables(*race_run())
    save_jsonl(tmp_path / "traces" / "race_conditions-faulty.jsonl", attempts, frames)
    race = [{"root_cause": "race_conditions", "confidence": 0.8, "evidence": ["from the race notebook"]}]
    factory = [{"root_cause": "factory_initialization", "confidence": 0.9, "evidence": ["from the factory notebook"]},
               {"root_cause": "race_conditions", "confidence": 0.6, "evidence": ["also seen there"]}]
    scraps = {"race_conditions": {"mode": "reference", "traces": ["traces/race_conditions-faulty.jsonl"],
                                  "diagnosis": race},
              "factory_initialization": {"mode": "reference", "traces": ["traces/gone-faulty.jsonl"],
                                         "diagnosis": factory}}
    assert combine(scraps, base_dir=tmp_path) == [
        factory[0], {"root_cause": "race_conditions", "confidence": 0.8,
                     "evidence": ["from the race notebook", "also seen there"]}]


def test_findings_round_trip_and_table():
    finding = Finding("race_conditions", 0.876, ["1011 before readiness in 3 of 3", "more"])
    assert Finding.from_dict(finding.to_dict()) == Finding("race_conditions", 0.88, finding.evidence)
    table = findings_table([finding])
    assert table.to_dict(orient="records") == [{"rank": 1, "root cause": "race_conditions", "confidence": 0.88,
                                                "strongest evidence": "1011 before readiness in 3 of 3"}]
    assert diagnosis.ROOT_CAUSES[-4:] == ("authentication", "unreachable", "unknown", "authentication_not_enforced")


@pytest.mark.parametrize("refusal", [dict(code=1003, by="server", close=8.0, outcome="closed_other"),
                                     dict(status=400, code=None, by=None, outcome="refused",
                                          error="HTTP 400 instead of the upgrade")])
def test_a_refused_subprotocol_offer_is_authentication_not_unreachable(refusal):
    findings = diagnose_tables(*tables(*[attempt(ready=None, transport="both", **refusal) for _ in range(3)]))
    assert causes(findings) == ["authentication"]
    assert "subprotocol offer refused: 3 of 3 attempts" in text(findings[0])
