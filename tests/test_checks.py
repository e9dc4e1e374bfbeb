"""Checks and verdicts: evidence in numbers, nothing to judge is never a pass, failures listed first."""

from gp_lib.checks import (Check, checks_table, inconclusive, none_check, overall_verdict, ratio_check, reference_checks,
                           status_of, verdict)


def test_ratio_check_passes_at_the_threshold_and_says_so():
    assert ratio_check("success_rate", 8, 10, at_least=0.8, what="attempts succeeded") == Check(
        "success_rate", True, "8 of 10 attempts succeeded (80%; need >= 80%)")
    assert not ratio_check("success_rate", 7, 10, at_least=0.8, what="attempts succeeded").passed


def test_ratio_check_with_nothing_to_judge_fails_without_claiming_a_count():
    check = ratio_check("connections_ready", 0, 0, at_least=1.0,
                        what="upgraded connections received a readiness marker")
    assert not check.passed
    assert check.evidence == "0 of 0 upgraded connections received a readiness marker: nothing to judge"


def test_none_check():
    assert none_check("no_1011_closes", 0, 5, what="attempts closed 1011") == Check(
        "no_1011_closes", True, "0 of 5 attempts closed 1011")
    assert not none_check("no_1011_closes", 2, 5, what="attempts closed 1011").passed
    assert not none_check("no_1011_closes", 0, 0, what="attempts closed 1011").passed


def test_reference_checks_need_the_faulty_arm_to_fail_and_tag_the_fixed_arm():
    failing, passing = Check("no_1011_closes", False, "3 of 5"), Check("no_1011_closes", True, "0 of 5")
    reproduced = reference_checks([failing], [passing])
    assert [c.to_dict() for c in reproduced] == [
        {"name": "issue_reproduced", "passed": True, "evidence": "faulty arm failed no_1011_closes: 3 of 5",
         "status": "pass", "arm": "faulty"},
        {"name": "no_1011_closes", "passed": True, "evidence": "0 of 5", "status": "pass", "arm": "fixed"}]
    assert verdict(reproduced) == "pass"
    not_reproduced = reference_checks([passing], [passing])
    assert not not_reproduced[0].passed and verdict(not_reproduced) == "fail"


def test_an_inconclusive_check_counts_neither_way_and_says_why():
    undecided = inconclusive("unique_connection_ids", "the readiness marker carries no connection id")
    assert undecided.status == "inconclusive" and not undecided.failed
    assert undecided.to_dict() == {"name": "unique_connection_ids", "passed": None, "status": "inconclusive",
                                   "evidence": "the readiness marker carries no connection id"}
    assert status_of(undecided.to_dict()) == "inconclusive"
    assert status_of({"name": "old", "passed": False}) == "fail"  # summaries written before `status`
    passing, failing = Check("no_1011_closes", True, "0 of 5"), Check("no_1011_closes", False, "3 of 5")
    assert verdict([passing, undecided]) == "pass"
    assert verdict([failing, undecided]) == "fail"
    assert verdict([undecided]) == "error"  # nothing could be decided: nothing was tested
    # an inconclusive faulty-arm check does not count as the issue reproduced
    assert not reference_checks([undecided], [passing])[0].passed
    assert reference_checks([passing], [undecided])[1].inconclusive


def test_checks_table_lists_failures_first_then_inconclusive_in_their_order():
    table = checks_table([Check("a", True, "x"), Check("b", False, "y", arm="fixed"), inconclusive("d", "why"),
                          Check("c", False, "z")])
    assert table["check"].tolist() == ["b", "c", "d", "a"]
    assert table["arm"].tolist() == ["fixed", "live", "live", "live"]
    assert table["result"].tolist() == ["FAIL", "FAIL", "INCONCLUSIVE", "PASS"]
    assert checks_table([]).columns.tolist() == ["check", "arm", "result", "evidence"]


def test_overall_verdict_error_beats_fail_beats_pass_and_nothing_is_an_error():
    assert overall_verdict(["pass", "pass"]) == "pass"
    assert overall_verdict(iter(["pass", "fail"])) == "fail"
    assert overall_verdict(["fail", "error", "pass"]) == "error"
    assert overall_verdict([]) == "error"
