"""The client's own load: loop lag measured when the loop is blocked on purpose, and what the check makes of it."""

from __future__ import annotations

import asyncio
import os
import time

from gp_lib.checks import Check
from gp_lib.load import (CHECK_NAME, MAX_LOOP_LAG_P99_MS, LoadMeter, client_load_check, judged_with_client_load,
                         load_table, undecided_when_client_bound)

SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))


def _row(lag_p99_ms: float, cpu_share: float = 0.2, seconds: float = 2.0, storm: str = "sweep") -> dict:
    return {"process": "pid 1", "storm": storm, "seconds": seconds, "cpu_s": cpu_share * seconds,
            "cpu_share": cpu_share, "loop_lag_p50_ms": 0.1, "loop_lag_p99_ms": lag_p99_ms,
            "loop_lag_max_ms": lag_p99_ms, "ticks": 100}


async def test_a_loop_blocked_on_purpose_shows_its_lag_and_its_cpu():
    async with LoadMeter("here", "blocked") as meter:
        await asyncio.sleep(0.05 * SCALE)
        started = time.process_time()
        while time.process_time() - started < 0.08:  # busy: the ticker cannot run, and CPU is spent
            pass
        await asyncio.sleep(0.05 * SCALE)
    row = meter.row()
    assert row["loop_lag_max_ms"] >= 60 and row["ticks"] >= 5
    assert row["cpu_s"] >= 0.07 and 0 < row["cpu_share"] <= 1.05


async def test_an_idle_loop_shows_little_lag():
    async with LoadMeter("here") as meter:
        await asyncio.sleep(0.2 * SCALE)
    assert meter.row()["loop_lag_p50_ms"] < MAX_LOOP_LAG_P99_MS


def test_a_saturated_client_makes_the_check_and_the_timing_checks_inconclusive_not_failed():
    load = load_table([_row(0.5), _row(MAX_LOOP_LAG_P99_MS * 4, storm="storm c=2000")])
    check = client_load_check(load)
    assert check.name == CHECK_NAME and check.status == "inconclusive"
    assert "storm c=2000" in check.evidence and "1 of 2" in check.evidence
    checks = [Check("mean_connect_time", False, "mean 9000 ms"), Check("no_1011_closes", False, "3 closed 1011"),
              Check("success_rate", True, "all")]
    judged = {c.name: c for c in undecided_when_client_bound(checks, load, ["mean_connect_time", "success_rate"])}
    assert judged["mean_connect_time"].status == "inconclusive" and "saturated" in judged["mean_connect_time"].evidence
    assert judged["no_1011_closes"].status == "fail"      # not a timing check: a 1011 is a 1011
    assert judged["success_rate"].status == "pass"


def test_the_remedy_depends_on_whether_the_client_or_the_machine_was_busy():
    busy_client = client_load_check(load_table([_row(MAX_LOOP_LAG_P99_MS * 4, cpu_share=0.8)]))
    busy_machine = client_load_check(load_table([_row(MAX_LOOP_LAG_P99_MS * 4, cpu_share=0.08)]))
    assert busy_client.status == busy_machine.status == "inconclusive"
    assert "parameter workers" in busy_client.evidence and "quieter machine" not in busy_client.evidence
    assert "quieter machine" in busy_machine.evidence and "parameter workers" not in busy_machine.evidence


def test_full_cpu_counts_only_when_sustained():
    assert client_load_check(load_table([_row(0.5, cpu_share=0.99, seconds=0.1)])).status == "pass"
    assert client_load_check(load_table([_row(0.5, cpu_share=0.99, seconds=3.0)])).status == "inconclusive"


def test_a_calm_client_passes_and_leaves_failures_alone():
    load = load_table([_row(0.5), _row(1.0)])
    checks = [Check("mean_connect_time", False, "slow")]
    judged, metrics = judged_with_client_load(checks, {"attempts": 3}, load, ["mean_connect_time"])
    assert [c.status for c in judged] == ["fail", "pass"] and judged[-1].name == CHECK_NAME
    assert metrics == {"attempts": 3, "client_loop_lag_p99_ms": 1.0, "client_cpu_share_max": 0.2}
    assert judged_with_client_load(checks, {}, None, ["mean_connect_time"]) == (checks, {})
