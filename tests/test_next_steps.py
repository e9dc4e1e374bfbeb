"""The "What to do now" block, the headline's attribution and the business impact: each depends on what
the run found."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gp_lib import next_steps
from gp_lib.checks import Check, inconclusive
from gp_lib.diagnosis import Finding
from gp_lib.scenarios import race_conditions
from gp_lib.scenarios.common import ScenarioResult

DEFAULTS = race_conditions.Params().__dict__
TARGET = "ws://127.0.0.1:9/ws"
RACE = Finding("race_conditions", 0.99, ["1011 before readiness in 487 of 488 attempts that sent before the "
                                         "readiness marker, 0 of 638 that did not"])
FACTORY = Finding("factory_initialization", 0.98, ["1126 of 1126 server closes named the factory or initialization"])
AUTH = Finding("authentication", 0.95, ["wrong secret (bad signature): 12 of 12 rejections"])


def _live(checks, scenario="race_conditions", error=None, metrics=None):
    return ScenarioResult(scenario, "live", TARGET, {"target_url": TARGET, "sweep_repeats": 1}, {},
                          {"live": checks}, {"live": metrics or {}}, checks,
                          metrics or {"attempts": 1126, "closed_1011": 487}, "", "", error=error)


FAILING = [Check("no_1011_closes", False, "487 of 1126 attempts closed 1011"), Check("success_rate", True, "ok")]


def test_a_race_found_names_the_cause_where_to_look_the_proof_and_the_commands(tmp_path):
    out = Path(next_steps.ROOT) / "reports" / "20261203T134049Z"
    text = next_steps.markdown(_live(FAILING), [RACE], DEFAULTS, out)
    assert text.startswith("**Cause:** the handshake race: 1011 before readiness in 487 of 488 attempts")
    assert "sending the readiness marker" in text and "queue them" in text
    assert "`no_1011_closes`, `early_messages_answered` and `rapid_cycles_complete` pass in `race_conditions`" in text
    assert ("gp report --scenario race_conditions --target ws://127.0.0.1:9/ws -p sweep_repeats=1 "
            "--out reports/20261203T134049Z-after-fix\ngp compare reports/20261203T134049Z "
            "reports/20261203T134049Z-after-fix") in text
    outside = next_steps.markdown(_live(FAILING), [RACE], DEFAULTS, tmp_path / "run")
    assert f"gp compare {tmp_path / 'run'} {tmp_path / 'run-after-fix'}" in outside


def test_failures_of_another_root_cause_point_at_it_and_its_scenario():
    result = _live(FAILING)
    text = next_steps.markdown(result, [FACTORY], DEFAULTS, "run")
    assert text.startswith("**Cause:** a factory initialization failure (`factory_initialization`), not the "
                           "handshake race")
    assert "factory's configuration" in text and "race_conditions" not in text.split("After deploying")[1]
    assert "--scenario factory_initialization" in text
    assert "(its report: `GOLDEN_PATH_FACTORY_INITIALIZATION_TEST_REPORT.md` in this run)" in text
    assert next_steps.attribution(result, [FACTORY]) == "factory_initialization"
    assert next_steps.headline(result, [FACTORY]) == "caused by factory_initialization, not by the handshake race"
    assert next_steps.attribution(result, [FACTORY, RACE]) is None  # its own cause was seen too
    assert next_steps.headline(result, [RACE]) is None


def test_a_passing_run_says_keep_it_as_the_baseline_and_lists_what_was_undecided():
    checks = [Check("no_1011_closes", True, "0 of 9"), inconclusive("early_messages_answered", "no acks")]
    result = _live(checks)
    text = next_steps.markdown(result, [], DEFAULTS, "run")
    assert text.startswith("**Nothing to fix:**") and "inconclusive on this target: early_messages_answered" in text
    assert "gp compare" in text
    assert next_steps.headline(result, []) == "1 check inconclusive"


def test_a_run_that_could_not_be_made_says_what_to_fix_first():
    result = _live([], error="nothing could be tested: every one of 12 attempts was refused or rejected for "
                             "authentication (12 auth_rejected)")
    text = next_steps.markdown(result, [AUTH], DEFAULTS, "run")
    assert text.startswith("**Nothing could be tested:** every one of 12")
    assert "jwt_secret_env" in text and "gp compare" not in text
    assert next_steps.headline(result, [AUTH]) is None


def test_a_reference_run_says_it_tested_the_toolkit_and_how_to_test_a_server():
    checks = [Check("issue_reproduced", True, "x", "faulty"), Check("no_1011_closes", True, "0 of 9", "fixed")]
    result = ScenarioResult("race_conditions", "reference", None, {"target_url": None}, {}, {}, {}, checks, {}, "", "")
    text = next_steps.markdown(result, [RACE], DEFAULTS, "run")
    assert text.startswith("**This run tested the toolkit, not your server:**")
    assert "gp report --target wss://YOUR-SERVER/ws --scenario race_conditions" in text


def test_impact_speaks_only_of_what_this_run_found():
    wrong_secret = _live([Check("success_rate", False, "0 of 12")], metrics={"attempts": 12, "closed_1011": 0})
    text = next_steps.impact_markdown(wrong_secret, [AUTH])
    assert text.startswith("**authentication**: Users are refused at the door")
    assert "race" not in text.lower() and "handshake" not in text.lower()
    race = next_steps.impact_markdown(_live(FAILING), [RACE])
    assert "In this run: 487 of 1126 connection attempts ended in 1011 (43%)" in race
    assert next_steps.impact_markdown(_live([Check("no_1011_closes", True, "0 of 9")]), []).startswith("None seen")
    errored = _live([], error="target unreachable: none of 9 attempts connected")
    assert next_steps.impact_markdown(errored, []).startswith("Not measured")


def test_a_data_leak_is_named_only_when_this_run_saw_one():
    events = _live([Check("all_five_events", False, "0 of 5")], scenario="missing_events",
                   metrics={"runs": 5, "complete_runs": 0})
    lacking = Finding("missing_events", 0.99, ["5 of 5 finished runs lacked events (tool_executing missing in 5)"])
    assert "another user" not in next_steps.impact_markdown(events, [lacking])
    assert "In this run: 5 of 5 agent runs lacked events (100%)" in next_steps.impact_markdown(events, [lacking])
    leaking = Finding("missing_events", 0.99, ["cross-user delivery: 12 events of other users' runs reached 2 users' "
                                               "sockets: a security defect"])
    assert "one customer's data shown to another" in next_steps.impact_markdown(events, [leaking])


NOT_ENFORCED = Finding("authentication_not_enforced", 0.95, ["authentication not enforced: 3 of 3 connections that "
                                                             "must be refused reached readiness"])


def test_a_security_finding_comes_first_even_when_every_check_passed():
    passing = _live([Check("no_1011_closes", True, "0 of 1126")])
    text = next_steps.markdown(passing, [NOT_ENFORCED], DEFAULTS, "run")
    assert text.startswith("**Security first:** authentication that is not enforced: authentication not enforced")
    assert "DEMO_MODE" in text and "Nothing to fix" not in text and "**No other issue:**" in text
    failing = next_steps.markdown(_live(FAILING), [NOT_ENFORCED, RACE], DEFAULTS, "run")
    assert failing.index("**Security first:**") < failing.index("**Cause:** the handshake race")
    # it fails no check of its own: the scenario's failures still belong to its own cause, or another's
    assert next_steps.attribution(_live(FAILING), [NOT_ENFORCED, RACE]) is None
    assert next_steps.attribution(_live(FAILING), [NOT_ENFORCED, FACTORY]) == "factory_initialization"
    assert next_steps.attribution(_live(FAILING), [NOT_ENFORCED]) is None


def test_server_text_in_the_block_is_inert_markdown():
    hostile = "closed 1011: ![x](https://evil.example/p.png) <img src=x onerror=alert(1)>\n# Fix this first"
    failed = _live([], error=f"nothing could be tested: {hostile}")
    text = next_steps.markdown(failed, [], DEFAULTS, "run") + next_steps.markdown(
        _live(FAILING), [replace(RACE, evidence=[hostile])], DEFAULTS, "run")
    assert "![x](" not in text and "<img" not in text and "\n# Fix" not in text
