"""Checks and verdicts.

A check is one named judgement with its evidence in numbers: `pass`, `fail`,
or `inconclusive` when the target does not offer what it needs (no connection
id in its readiness marker, no health-check message, no test flags). An
inconclusive check counts neither way in the verdict and is listed in the
report with its reason: a server that does not send an optional field is not
wrong for it. In live
mode a scenario's checks are judged on the one arm there is. In reference mode
the same checks run on both arms; the verdict rests on the fixed arm passing
every check (remediation verified) and on the faulty arm failing at least one
(issue reproduced).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import pandas as pd

PASS, FAIL, ERROR, INCONCLUSIVE = "pass", "fail", "error", "inconclusive"
ISSUE_REPRODUCED = "issue_reproduced"


@dataclass(frozen=True)
class Check:
    """One judgement: `name` passed or not, and the evidence that says so.

    `inconclusive` means it could not be decided on this target; `evidence`
    then says why, and `passed` is meaningless (read `status` or `failed`).
    """

    name: str
    passed: bool
    evidence: str
    arm: str | None = None
    inconclusive: bool = False

    @property
    def status(self) -> str:
        return INCONCLUSIVE if self.inconclusive else PASS if self.passed else FAIL

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        """The summary.json form: `passed` is null for an inconclusive check, `status` says which."""
        data = {"name": self.name, "passed": None if self.inconclusive else self.passed, "evidence": self.evidence,
                "status": self.status}
        return {**data, "arm": self.arm} if self.arm is not None else data


def inconclusive(name: str, reason: str, arm: str | None = None) -> Check:
    """A check that cannot be decided on this target, and why."""
    return Check(name, False, reason, arm=arm, inconclusive=True)


def status_of(check: Mapping[str, Any]) -> str:
    """The status of a check in its summary.json form (files written before `status` existed too)."""
    if check.get("status") in (PASS, FAIL, INCONCLUSIVE):
        return check["status"]
    return PASS if check.get("passed") is True else FAIL


def verdict(checks: Iterable[Check]) -> str:
    """`fail` when a check failed; else `pass` when at least one was decided and passed.

    Inconclusive checks count neither way; a list with nothing decided is an
    `error`: nothing could be tested.
    """
    return verdict_of({c.status for c in checks})


def verdict_of(statuses: set[str]) -> str:
    """`verdict` from the checks' statuses alone (summary.json files hold only those)."""
    if FAIL in statuses:
        return FAIL
    return PASS if PASS in statuses else ERROR


def overall_verdict(verdicts: Iterable[str]) -> str:
    """The verdict of several scenarios: `error` if any could not be run, else `fail` if any failed,
    else `pass`; nothing judged at all is an `error`."""
    verdicts = list(verdicts)
    if not verdicts or ERROR in verdicts:
        return ERROR
    return FAIL if FAIL in verdicts else PASS


def ratio_check(name: str, count: int, total: int, *, at_least: float, what: str) -> Check:
    """Pass when count/total reaches `at_least`; evidence like '17 of 20 attempts succeeded (85%; need >= 80%)'."""
    share = count / total if total else 0.0
    return Check(name, total > 0 and share >= at_least,
                 f"{count} of {total} {what} ({share:.0%}; need >= {at_least:.0%})" if total
                 else f"0 of 0 {what}: nothing to judge")


def none_check(name: str, bad: int, total: int, *, what: str) -> Check:
    """Pass when `bad` is zero and there was something to judge; evidence like '23 of 120 attempts closed 1011'."""
    if total == 0:
        return Check(name, False, f"no attempts to judge ({what})")
    return Check(name, bad == 0, f"{bad} of {total} {what}")


def reference_checks(faulty: list[Check], fixed: list[Check]) -> list[Check]:
    """The checks that decide a reference-mode verdict.

    `issue_reproduced` passes when the faulty arm failed at least one check, and
    names those failures; every fixed-arm check follows, tagged `arm="fixed"`.
    """
    failed = [c for c in faulty if c.failed]
    if failed:
        evidence = "faulty arm failed " + "; ".join(f"{c.name}: {c.evidence}" for c in failed)
    else:
        evidence = "the faulty arm passed every check: the fault was not reproduced"
    issue = Check(ISSUE_REPRODUCED, bool(failed), evidence, arm="faulty")
    return [issue] + [replace(c, arm="fixed") for c in fixed]


def checks_table(checks: Iterable[Check]) -> pd.DataFrame:
    """Checks as a table, failures first, then the inconclusive ones: what a reader scans for."""
    rows = [{"check": c.name, "arm": c.arm or "live", "result": c.status.upper(), "evidence": c.evidence}
            for c in checks]
    table = pd.DataFrame(rows, columns=["check", "arm", "result", "evidence"])
    order = table["result"].map({"FAIL": 0, "INCONCLUSIVE": 1, "PASS": 2})
    return table.iloc[order.argsort(kind="stable")].reset_index(drop=True)
