"""The race-conditions scenario: its judgement on hand-built tables, and its traffic against the reference server.

The integration tests control the timing they are about: the reference
server's setup delay is injected, and the first-send delays are chosen far on
either side of it (both scaled by GP_TIME_SCALE).
"""

from __future__ import annotations

import os
import re

import matplotlib
import pytest

from gp_lib import diagnosis, next_steps
from gp_lib.plots import race as plots_race
from gp_lib.scenarios import race_conditions as rc
from gp_lib.scenarios.common import Credentials, Observation, ParameterError, ScenarioResult, Target
from gp_lib.refserver import running_server
from gp_lib.trace import AttemptRecord, frame_row

matplotlib.use("Agg")

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_RACE_TEST_SECRET"


# -- hand-built tables ------------------------------------------------------------------------

def _attempt(n, *, phase="sweep", condition="send_at_delay", concurrency=1, delay=0.0, outcome="ok",
             t_open=2.0, sent=(), received=()):
    """One attempts row and its frames, as the client would have recorded them."""
    closed_1011 = outcome == "closed_1011"
    t_ready = None if closed_1011 else t_open + 15
    waits = condition == "wait_ready"  # sends `delay` after the marker; closed before it, sends nothing
    t_send = (None if t_ready is None else t_ready + delay) if waits else t_open + delay
    record = AttemptRecord(
        attempt_id=f"a{n:03d}", user_id="u1", scenario=rc.NAME, arm="live", condition=condition, t_open_ms=t_open,
        t_ready_ms=t_ready, t_first_send_ms=t_send, t_close_ms=t_open + 30,
        close_code=1011 if closed_1011 else 1000, closed_by="server" if closed_1011 else "client", outcome=outcome,
        frames_sent=len(sent), frames_received=len(received),
        extra={"phase": phase, "concurrency": concurrency, "send_delay_ms": delay,
               "wait_ready": condition == "wait_ready", "repeat": 0})
    for t, message in sent:
        record.frames.append(frame_row(record.attempt_id, t, "sent", message))
    for t, message in received:
        record.frames.append(frame_row(record.attempt_id, t, "received", message))
    return record


def _burst(n, answers):
    sent = [(3.0, {"type": f"immediate_test_{k}", "data": f"test{k}"}) for k in (1, 2, 3)]
    return _attempt(n, phase="early_burst", condition="early_burst", sent=sent, received=answers)


def _acks(*types):
    return [(20.0 + k, {"type": "ack", "data": {"received_type": kind}}) for k, kind in enumerate(types)]


def _cycle(n, events=("agent_started", "agent_thinking", "agent_completed"), outcome="ok"):
    received = [(20.0 + k, {"type": kind, "run_id": "r1"}) for k, kind in enumerate(events)]
    return _attempt(n, phase="rapid_cycles", condition="rapid_cycle", outcome=outcome,
                    sent=[(2.0, {"type": "agent_request"})], received=received)


def _clean_records():
    records, n = [], 0
    for concurrency in (1, 5):
        for delay in (0.0, 10.0, 50.0):
            for condition in ("send_at_delay", "wait_ready"):
                n += 1
                records.append(_attempt(n, condition=condition, concurrency=concurrency, delay=delay))
    records.append(_burst(100, _acks("immediate_test_1", "immediate_test_2", "immediate_test_3")))
    records += [_cycle(200 + k) for k in range(5)]
    return records


def _evaluate(records, **params):
    return rc.evaluate(Observation.from_records("live", records), rc.Params(**params))


def _by_name(checks):
    return {c.name: c for c in checks}


def _failed(checks):
    return {c.name for c in checks if not c.passed}


# -- evaluate (pure) ----------------------------------------------------------------------------

def test_clean_tables_pass_every_check():
    checks, metrics = _evaluate(_clean_records())
    assert _failed(checks) == set()
    assert metrics["closed_1011"] == 0 and metrics["race_window_ms"] is None
    assert metrics["race_window_ms_c1"] is None and metrics["race_window_ms_c5"] is None
    assert metrics["early_messages_answered"] == metrics["early_messages_sent"] == 3
    assert metrics["rapid_cycles_complete"] == 5
    assert metrics["ws_connecting_p50_ms"] == 2.0 and metrics["ready_p50_ms"] == 17.0


def test_early_1011_fails_with_counts_and_sets_the_race_window_per_level():
    records = _clean_records()
    records[0] = _attempt(0, concurrency=1, delay=0.0, outcome="closed_1011")
    records[6] = _attempt(6, concurrency=5, delay=0.0, outcome="closed_1011")
    records[8] = _attempt(8, concurrency=5, delay=10.0, outcome="closed_1011")
    checks, metrics = _evaluate(records)
    check = _by_name(checks)["no_1011_closes"]
    assert not check.passed
    # sent before the marker: the sends at 0 and 10 ms (setup 15 ms), the burst, the rapid cycles, and the three
    # closed before it came; not: the sends at 50 ms and every attempt that waited for the marker
    assert check.evidence.startswith("3 of 18 attempts closed 1011: 3 of 10 that sent before the readiness marker, "
                                     "0 of 8 that did not")
    assert "latest failing send delay 10 ms" in check.evidence
    assert metrics["race_window_ms"] == 10.0
    assert metrics["race_window_ms_c1"] == 0.0 and metrics["race_window_ms_c5"] == 10.0
    assert metrics["closed_1011_sent_before_ready"] == 3 and metrics["closed_1011_not_sent_before_ready"] == 0
    assert metrics["attempts_sent_before_ready"] + metrics["attempts_not_sent_before_ready"] == 18


def test_a_1011_after_waiting_for_readiness_is_not_a_race_window():
    records = _clean_records()
    records[1] = _attempt(1, condition="wait_ready", delay=50.0, outcome="closed_1011")
    checks, metrics = _evaluate(records)
    assert "no_1011_closes" in _failed(checks)
    assert metrics["race_window_ms"] is None and metrics["closed_1011_not_sent_before_ready"] == 1


def test_success_rate_below_the_threshold_fails():
    records = _clean_records()
    for k in range(4):
        records[k] = _attempt(k, delay=float(k), outcome="receive_timeout")
    checks, metrics = _evaluate(records)
    assert _by_name(checks)["success_rate"].evidence == "14 of 18 attempts succeeded (78%; need >= 80%)"
    assert "success_rate" in _failed(checks) and metrics["success_rate"] == round(14 / 18, 4)
    assert "success_rate" not in _failed(_evaluate(records, min_success_rate=0.75)[0])


def test_slow_upgrades_fail_the_mean_connect_time():
    records = [_attempt(k, delay=50.0, t_open=20000.0) for k in range(3)] + _clean_records()[-6:]
    checks, _ = _evaluate(records)
    check = _by_name(checks)["mean_connect_time"]
    assert not check.passed and "over 9 upgraded attempts (need < 5000 ms)" in check.evidence


def test_an_early_message_without_an_answer_fails():
    records = _clean_records()
    records[-6] = _burst(100, _acks("immediate_test_1", "immediate_test_3"))
    checks, metrics = _evaluate(records)
    check = _by_name(checks)["early_messages_answered"]
    assert not check.passed
    assert check.evidence == "2 of 3 messages sent at once after the upgrade were answered (1 connections)"
    table = rc.early_messages(Observation.from_records("live", records).attempts,
                              Observation.from_records("live", records).frames)
    assert table.set_index("message_type")["answered"].to_dict() == {
        "immediate_test_1": True, "immediate_test_2": False, "immediate_test_3": True}


def test_an_error_frame_answers_the_oldest_open_message_and_other_frames_do_not():
    answers = [(20.0, {"type": "error", "message": "unknown type"}), (21.0, {"type": "heartbeat_ack"}),
               *_acks("immediate_test_2", "immediate_test_3")]
    checks, metrics = _evaluate(_clean_records()[:-6] + [_burst(100, answers)] + _clean_records()[-5:])
    assert metrics["early_messages_answered"] == 3 and "early_messages_answered" not in _failed(checks)


def test_the_handshake_reply_is_not_counted_as_an_early_message():
    burst = _burst(100, _acks("immediate_test_1", "immediate_test_2", "immediate_test_3"))
    burst.frames.insert(0, frame_row(burst.attempt_id, 1.0, "sent", {"type": "handshake_acknowledged"}))
    _, metrics = _evaluate(_clean_records()[:-6] + [burst])
    assert metrics["early_messages_sent"] == metrics["early_messages_answered"] == 3


def test_rapid_cycles_without_agent_completed_fail():
    records = _clean_records()[:-5] + [_cycle(200 + k) for k in range(3)] + [
        _cycle(300, events=("agent_started",), outcome="receive_timeout"),
        _cycle(301, events=(), outcome="closed_1011")]
    checks, metrics = _evaluate(records)
    check = _by_name(checks)["rapid_cycles_complete"]
    assert not check.passed and check.evidence.startswith("3 of 5 rapid connect-request-close cycles")
    assert metrics["rapid_cycles_complete"] == 3


def test_no_traffic_fails_every_check_without_crashing():
    checks, metrics = _evaluate([])
    assert _failed(checks) == {c.name for c in checks} and len(checks) == 5
    assert metrics["attempts"] == 0 and metrics["race_window_ms"] is None


def test_attempts_that_never_upgraded_cannot_pass_the_1011_check():
    extra = {"phase": "sweep", "concurrency": 1, "send_delay_ms": 0.0, "wait_ready": False, "repeat": 0}
    refused = [AttemptRecord(f"a{k}", condition="send_at_delay", outcome=outcome, handshake_status=status,
                             t_close_ms=1.0, extra=extra)
               for k, (outcome, status) in enumerate([("refused", None)] * 3 + [("auth_rejected", 401)])]
    check = _by_name(_evaluate(refused)[0])["no_1011_closes"]
    assert not check.passed
    assert check.evidence == "none of 4 attempts upgraded (3 refused, 1 auth_rejected): no 1011 to judge"


# -- parameters, plan, faults -----------------------------------------------------------------

@pytest.mark.parametrize("changes, named", [
    ({"concurrency_levels": []}, "concurrency_levels"),
    ({"concurrency_levels": [1, 2.5]}, "concurrency_levels"),
    ({"concurrency_levels": [1, 60]}, "concurrency_levels"),
    ({"send_delays_ms": []}, "send_delays_ms"),
    ({"send_delays_ms": [0, -5]}, "send_delays_ms"),
    ({"send_delays_ms": [0, "soon"]}, "send_delays_ms"),
    ({"sweep_repeats": 0}, "sweep_repeats"),
    ({"sweep_repeats": 1.5}, "sweep_repeats"),
    ({"burst_connections": 0}, "burst_connections"),
    ({"burst_messages": 0}, "burst_messages"),
    ({"rapid_cycles": 0}, "rapid_cycles"),
    ({"rapid_cycles": 2.5}, "rapid_cycles"),
    ({"max_concurrency": 25.5}, "max_concurrency"),
    ({"min_success_rate": 80}, "min_success_rate"),
    ({"deadline_s": 0}, "deadline_s"),
])
def test_bad_parameters_name_the_parameter(changes, named):
    with pytest.raises(ParameterError, match=named):
        rc.Params(**changes).validate()


async def test_bad_parameters_fail_before_any_traffic():
    with pytest.raises(ParameterError, match="sweep_repeats"):
        await rc.run(rc.Params(sweep_repeats=0))


def test_plan_counts_every_batch():
    params = rc.Params(concurrency_levels=[1, 4], send_delays_ms=[0, 5, 50], sweep_repeats=2, burst_connections=2,
                       rapid_cycles=5)
    batches = rc.plan(params)
    sweep = [b for b in batches if b.phase == "sweep"]
    assert len(sweep) == 2 * 3 * 2 * 2 and sum(b.wait_ready for b in sweep) == 12
    assert [b.concurrency for b in batches if b.phase == "storm"] == [1, 4]
    assert sum(b.phase == "early_burst" for b in batches) == 2 and sum(b.phase == "rapid_cycles" for b in batches) == 5


def test_reference_faults_switch_only_the_race():
    params = rc.Params(reference_setup_ms=40, reference_setup_ms_per_concurrent=3)
    faulty, fixed = rc.reference_faults("faulty", params), rc.reference_faults("fixed", params)
    assert faulty == {"race": True, "setup_ms": 40, "setup_ms_per_concurrent": 3}
    assert fixed == {**faulty, "race": False}


# -- interpretation and figures on hand-built results ---------------------------------------------

def _result(arms):
    observations = {arm: Observation.from_records(arm, records) for arm, records in arms.items()}
    params = rc.Params()
    judged = {arm: rc.evaluate(o, params) for arm, o in observations.items()}
    return ScenarioResult(rc.NAME, "reference" if "faulty" in arms else "live", None, params.public(), observations,
                          {a: j[0] for a, j in judged.items()}, {a: j[1] for a, j in judged.items()}, [], {}, "", "")


def test_interpretation_follows_the_numbers():
    racy = _clean_records()
    racy[0] = _attempt(0, concurrency=1, delay=0.0, outcome="closed_1011")
    racy[8] = _attempt(8, concurrency=5, delay=10.0, outcome="closed_1011")
    text = rc.interpret(_result({"faulty": racy, "fixed": _clean_records()}))
    assert "the 1011 closes follow send timing" in text and "handshake race" in text
    assert " of 10 attempts" not in text  # the counts are the diagnosis's and the check's, not restated
    assert "0 ms at concurrency 1, 10 ms at concurrency 5" in text and "widens with concurrent" in text
    assert "none of 18 attempts closed 1011, including 10 that sent before the readiness marker" in text
    assert "removes every 1011" in text
    not_a_race = _clean_records()
    not_a_race[1] = _attempt(1, condition="wait_ready", outcome="closed_1011")
    text = rc.interpret(_result({"live": not_a_race}))
    assert "they are not the handshake race" in text and "(1 of them among attempts that did not)" in text


def test_interpretation_claims_no_queuing_when_nothing_succeeded():
    rejected = [_attempt(k, outcome="auth_rejected") for k in range(4)]
    text = rc.interpret(_result({"live": rejected}))
    assert "none of 4 attempts closed 1011, but none succeeded either" in text
    assert "queued" not in text


@pytest.mark.parametrize("figure", ["rate_1011_by_delay", "handshake_ecdf", "attempt_timeline", "close_codes"])
def test_figures_show_both_arms_and_label_empty_data(figure):
    racy = _clean_records()
    racy[0] = _attempt(0, concurrency=1, delay=0.0, outcome="closed_1011")
    fig = getattr(plots_race, figure)(_result({"faulty": racy, "fixed": _clean_records()}))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["fault injected", "fixed"] and all(ax.get_xlabel() for ax in fig.axes)
    empty = getattr(plots_race, figure)(_result({"live": []}))
    assert [t.get_text() for t in empty.axes[0].texts][0].startswith("no ")


def test_the_timeline_says_when_it_shows_a_sample():
    many = [_attempt(k, concurrency=5, delay=float(k % 3)) for k in range(300)]
    fig = plots_race.attempt_timeline(_result({"live": many}), max_attempts=60)
    assert "60 of 300 live" in fig.texts[0].get_text()
    assert sum(len(c.get_segments()) for c in fig.axes[0].collections) == 60


# -- against the reference server ----------------------------------------------------------------

def _ms(value):
    return value * SCALE


def _small(**changes):
    """Few attempts, timeouts scaled, so each run takes a second or two."""
    values = dict(concurrency_levels=[1, 3], send_delays_ms=[0, _ms(10), _ms(150)], sweep_repeats=2,
                  burst_connections=2, rapid_cycles=3, open_timeout_s=5 * SCALE, ready_timeout_s=5 * SCALE,
                  receive_timeout_s=3 * SCALE, deadline_s=30 * SCALE)
    return rc.Params(**{**values, **changes})


def _rows(result, arm, condition, delay=None):
    attempts = result.observations[arm].attempts
    rows = attempts[attempts["condition"] == condition]
    return rows if delay is None else rows[rows["send_delay_ms"] == delay]


async def test_a_send_inside_the_injected_setup_gets_1011_and_one_after_it_or_after_readiness_does_not():
    params = _small(reference_setup_ms=_ms(50), reference_setup_ms_per_concurrent=0)
    result = await rc.run(params)
    assert result.verdict == "pass"
    early = _rows(result, "faulty", "send_at_delay")
    for delay in (0, _ms(10)):
        assert set(early.loc[early["send_delay_ms"] == delay, "outcome"]) == {"closed_1011"}
    assert set(early.loc[early["send_delay_ms"] == _ms(150), "outcome"]) == {"ok"}
    assert set(_rows(result, "faulty", "wait_ready")["outcome"]) == {"ok"}
    assert len(early) == 2 * 3 * 4 and len(_rows(result, "faulty", "wait_ready")) == 2 * 3 * 4
    closes = result.observations["faulty"].attempts.query("outcome == 'closed_1011'")
    assert set(closes["close_reason"]) == {"Internal error: message handled before connection setup"}
    faulty = result.arm_metrics["faulty"]
    assert _ms(10) <= faulty["race_window_ms"] < _ms(150)
    failed = {c.name: c.evidence for c in result.arm_checks["faulty"] if not c.passed}
    assert set(failed) == {"no_1011_closes", "success_rate", "early_messages_answered", "rapid_cycles_complete"}
    assert failed["early_messages_answered"].startswith("0 of 6 messages")
    assert failed["rapid_cycles_complete"].startswith("0 of 3 ")
    assert failed["no_1011_closes"].startswith(f"{faulty['closed_1011']} of {faulty['attempts']} attempts closed 1011")
    assert all(c.passed for c in result.arm_checks["fixed"])
    assert result.arm_metrics["fixed"]["closed_1011"] == 0 and result.arm_metrics["fixed"]["race_window_ms"] is None


async def test_the_race_window_widens_with_concurrent_setup():
    """Setup 30 ms plus 20 ms per other connection in setup: a send at 60 ms is clean alone, not among 8."""
    params = _small(concurrency_levels=[1, 8], send_delays_ms=[0, _ms(60)], sweep_repeats=2,
                    burst_connections=1, rapid_cycles=1)
    with running_server({"race": True, "setup_ms": _ms(30), "setup_ms_per_concurrent": _ms(20)}) as server:
        target = Target(server.url, "faulty", rc.NAME, params, Credentials(params, secret=server.secret),
                        server=server)
        observation = await rc.drive(target)
    _, metrics = rc.evaluate(observation, params)
    assert metrics["race_window_ms_c1"] == 0.0
    assert metrics["race_window_ms_c8"] == _ms(60)
    assert observation.tables["batches"]["ran"].all()


async def test_live_mode_against_the_race_fails_the_checks_the_race_breaks(monkeypatch):
    with running_server({"race": True, "setup_ms": _ms(50), "setup_ms_per_concurrent": 0}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        result = await rc.run(_small(target_url=server.url, jwt_secret_env=SECRET_ENV))
    assert result.verdict == "fail" and list(result.observations) == ["live"]
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"no_1011_closes", "success_rate", "early_messages_answered", "rapid_cycles_complete"}
    assert result.metrics["closed_1011_not_sent_before_ready"] == 0 and result.metrics["closed_1011_sent_before_ready"] > 0
    # one definition of "sent before the readiness marker": the diagnosis and the check count the same attempts
    findings = diagnosis.diagnose([result])
    assert findings[0].root_cause == rc.NAME
    said = re.search(r"in (\d+) of (\d+) attempts that sent before the readiness marker, (\d+) of (\d+) that did not",
                     findings[0].evidence[0])
    checked = re.search(r": (\d+) of (\d+) that sent before the readiness marker, (\d+) of (\d+) that did not",
                        _by_name(result.checks)["no_1011_closes"].evidence)
    assert said and checked and said.groups() == checked.groups()
    m = result.metrics
    assert checked.groups() == tuple(str(m[k]) for k in ("closed_1011_sent_before_ready", "attempts_sent_before_ready",
                                                         "closed_1011_not_sent_before_ready",
                                                         "attempts_not_sent_before_ready"))


async def test_against_the_factory_fault_the_counts_agree_and_no_race_window_is_claimed(monkeypatch):
    with running_server({"factory": "config"}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        result = await rc.run(_small(target_url=server.url, jwt_secret_env=SECRET_ENV))
    m = result.metrics
    assert m["closed_1011"] == m["attempts"] and m["race_window_ms"] is None
    assert all(v is None for k, v in m.items() if k.startswith("race_window_ms_c"))
    findings = diagnosis.diagnose([result])
    assert findings[0].root_cause == "factory_initialization"
    timing = next(e for e in findings[0].evidence if e.startswith("independent of send timing"))
    said = re.search(r"in (\d+) of (\d+) attempts that did not send before the readiness marker, (\d+) of (\d+) "
                     r"that did", timing)
    assert said.groups() == tuple(str(m[k]) for k in ("closed_1011_not_sent_before_ready",
                                                      "attempts_not_sent_before_ready", "closed_1011_sent_before_ready",
                                                      "attempts_sent_before_ready"))
    assert "not the handshake race" in rc.interpret(result)
    # the scenario's own cause is absent: its headline and summary entry say whose failures these are
    assert next_steps.attribution(result, findings) == "factory_initialization"
    assert next_steps.headline(result, findings) == "caused by factory_initialization, not by the handshake race"


@pytest.mark.parametrize("dialect", ["default", "handshake"])
async def test_live_mode_against_a_fixed_server_passes(monkeypatch, dialect):
    with running_server({"setup_ms": _ms(50), "setup_ms_per_concurrent": 0}, dialect) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        result = await rc.run(_small(target_url=server.url, jwt_secret_env=SECRET_ENV))
    assert result.verdict == "pass", [c for c in result.checks if not c.passed]
    assert result.metrics["early_messages_answered"] == 6 and result.metrics["rapid_cycles_complete"] == 3
    assert result.metrics["attempts_sent_before_ready"] > 0 and result.metrics["closed_1011"] == 0


async def test_the_deadline_stops_new_batches():
    params = _small(deadline_s=1e-6)
    with running_server({}) as server:
        target = Target(server.url, "fixed", rc.NAME, params, Credentials(params, secret=server.secret))
        observation = await rc.drive(target)
    _, metrics = rc.evaluate(observation, params)
    assert len(observation.attempts) <= 1  # at most the first batch (one connection) beat the deadline
    assert metrics["batches_skipped"] >= len(rc.plan(params)) - 1
