"""Checks and verdicts.

A check is one named pass/fail judgement with its evidence in numbers. In live
mode a scenario's checks are judged on the one arm there is. In reference mode
the same checks run on both arms; the verdict rests on the fixed arm passing
every check (remediation verified) and on the faulty arm failing at least one
(issue reproduced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import pandas as pd

PASS, FAIL, ERROR = "pass", "fail", "error"
ISSUE_REPRODUCED = "issue_reproduced"


@dataclass(frozen=True)
class Check:
    """One judgement: `name` passed or not, and the evidence that says so."""

    name: str
    passed: bool
    evidence: str
    arm: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def verdict(checks: Iterable[Check]) -> str:
    """`pass` when every check passed, else `fail`."""
    return PASS if all(c.passed for c in checks) else FAIL


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
    failed = [c for c in faulty if not c.passed]
    if failed:
        evidence = "faulty arm failed " + "; ".join(f"{c.name}: {c.evidence}" for c in failed)
    else:
        evidence = "the faulty arm passed every check: the fault was not reproduced"
    issue = Check(ISSUE_REPRODUCED, bool(failed), evidence, arm="faulty")
    return [issue] + [Check(c.name, c.passed, c.evidence, arm="fixed") for c in fixed]


def checks_table(checks: Iterable[Check]) -> pd.DataFrame:
    """Checks as a table, failures first: what a reader scans for."""
    rows = [{"check": c.name, "arm": c.arm or "live", "result": "PASS" if c.passed else "FAIL",
             "evidence": c.evidence} for c in checks]
    table = pd.DataFrame(rows, columns=["check", "arm", "result", "evidence"])
    return table.sort_values("result", kind="stable").reset_index(drop=True)
