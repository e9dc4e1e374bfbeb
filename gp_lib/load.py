"""The client's own load while it measures: event-loop lag and CPU, and whether the client was the bottleneck.

Every timing the toolkit reports is taken by an asyncio client. When that
client's event loop is busy (thousands of connections in one process, or a
CPU shared with other work), a frame is stamped when the loop gets to it, not
when it arrived: the timings then measure the client, not the target. So each
process that drives traffic runs a `LoadMeter` beside it: a ticker that asks
to wake every `tick_ms` and records how late it woke (the loop's lag), and the
process's CPU time over the same wall time. One row per process and storm goes
into the `client_load` table, and `client_load_check` turns the table into a
check: `inconclusive` (not `fail`) when the client was saturated, since such a
run cannot say anything about the target's timings; timing checks of that run
become inconclusive too (`undecided_when_client_bound`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import pandas as pd

from gp_lib.checks import Check, inconclusive

CLIENT_LOAD_COLUMNS = ("process", "storm", "seconds", "cpu_s", "cpu_share", "loop_lag_p50_ms", "loop_lag_p99_ms",
                       "loop_lag_max_ms", "ticks")
CHECK_NAME = "client_not_saturated"
#: Above this p99 loop lag, frame times carry the client's delay more than the target's: ms.
MAX_LOOP_LAG_P99_MS = 5.0
#: Above this share of one core, the client process had no CPU to spare.
MAX_CPU_SHARE = 0.9
MIN_CPU_WINDOW_S = 1.0
#: A loop that lagged while its process used less than this share of a core was kept waiting by other
#: work on the machine, not by its own: more client workers would not help.
OWN_WORK_SHARE = 0.5
TICK_MS = 5.0


@dataclass
class LoadMeter:
    """Measures the running event loop's lag and this process's CPU between `start` and `stop`.

    Use as `async with LoadMeter("main", "sweep") as meter:` around the traffic; `meter.row()` is
    its `client_load` row.
    """

    process: str
    storm: str = ""
    tick_ms: float = TICK_MS
    lags_ms: list[float] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _wall: float = 0.0
    _cpu: float = 0.0
    seconds: float = 0.0
    cpu_s: float = 0.0

    async def __aenter__(self) -> "LoadMeter":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        interval = self.tick_ms / 1000
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(interval)
            self.lags_ms.append(max(0.0, (time.perf_counter() - asked - interval) * 1000))

    def row(self) -> dict[str, Any]:
        lags = sorted(self.lags_ms) or [0.0]
        return {"process": self.process, "storm": self.storm, "seconds": round(self.seconds, 3),
                "cpu_s": round(self.cpu_s, 3),
                "cpu_share": round(self.cpu_s / self.seconds, 3) if self.seconds > 0 else None,
                "loop_lag_p50_ms": round(statistics.median(lags), 3),
                "loop_lag_p99_ms": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 3),
                "loop_lag_max_ms": round(lags[-1], 3), "ticks": len(self.lags_ms)}


def process_name() -> str:
    """This process, as named in the `client_load` table."""
    return f"pid {os.getpid()}"


def load_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(CLIENT_LOAD_COLUMNS))


def saturated(load: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of `load` where the client was the bottleneck: a lagging loop, or no CPU to spare over
    at least `MIN_CPU_WINDOW_S` (a short burst of handshakes at full CPU is not saturation; its lag says)."""
    if load is None or load.empty:
        return load_table([])
    lag = pd.to_numeric(load["loop_lag_p99_ms"], errors="coerce") > MAX_LOOP_LAG_P99_MS
    cpu = ((pd.to_numeric(load["cpu_share"], errors="coerce") > MAX_CPU_SHARE)
           & (pd.to_numeric(load["seconds"], errors="coerce") >= MIN_CPU_WINDOW_S))
    return load[lag | cpu]


def client_load_check(load: pd.DataFrame | None) -> Check:
    """Pass when no client process was saturated; inconclusive (not fail) when one was: its timings
    say more about the client, or about the machine it shares, than about the target."""
    if load is None or load.empty:
        return inconclusive(CHECK_NAME, "the client's load was not measured")
    worst = load.assign(_lag=pd.to_numeric(load["loop_lag_p99_ms"], errors="coerce")).sort_values("_lag").iloc[-1]
    cpu = pd.to_numeric(load["cpu_share"], errors="coerce")
    evidence = (f"worst event-loop lag p99 {worst['loop_lag_p99_ms']:.1f} ms (max {worst['loop_lag_max_ms']:.1f} ms) "
                f"in {worst['process']}" + (f" during {worst['storm']}" if worst["storm"] else "")
                + f"; highest CPU {cpu.max():.0%} of a core (limits: p99 lag {MAX_LOOP_LAG_P99_MS:g} ms, "
                  f"CPU {MAX_CPU_SHARE:.0%})")
    bound = saturated(load)
    if bound.empty:
        return Check(CHECK_NAME, True, f"{len(load)} client measurements; {evidence}")
    storms = ", ".join(dict.fromkeys(s or "traffic" for s in bound["storm"]))
    where = f"in {len(bound)} of {len(load)} measurements ({storms})"
    busy = pd.to_numeric(bound["cpu_share"], errors="coerce").fillna(1.0) >= OWN_WORK_SHARE
    if busy.any():
        return inconclusive(CHECK_NAME, f"the client, not the target, was the bottleneck {where}: spread large "
                                        "storms over more worker processes (parameter workers) or a cluster "
                                        f"(scheduler); {evidence}")
    return inconclusive(CHECK_NAME, f"other work on this machine (other notebooks, a server on the same host), not "
                                    f"the target, delayed the mostly idle client {where}: for timings to the "
                                    f"millisecond run the scenario alone (one --scenario, --jobs 1) on a quieter "
                                    f"machine; {evidence}")


def undecided_when_client_bound(checks: list[Check], load: pd.DataFrame | None, timing: Iterable[str]) -> list[Check]:
    """`checks` with the failed timing checks (named in `timing`) made inconclusive when the client was
    saturated: a slow time measured by a saturated client does not show that the target was slow."""
    if saturated(load).empty:
        return checks
    names = set(timing)
    return [replace(c, inconclusive=True, evidence=f"{c.evidence}; not decided: the client was saturated "
                                                   f"(see {CHECK_NAME})")
            if c.name in names and c.failed else c for c in checks]


def judged_with_client_load(checks: list[Check], metrics: dict[str, Any], load: pd.DataFrame | None,
                            timing: Iterable[str]) -> tuple[list[Check], dict[str, Any]]:
    """A scenario's checks and metrics with the client's load added, when it was measured: the
    `client_not_saturated` check, the timing checks undecided if it was not, and the worst figures."""
    if load is None:
        return checks, metrics
    metrics = {**metrics, "client_loop_lag_p99_ms": _worst(load, "loop_lag_p99_ms"),
               "client_cpu_share_max": _worst(load, "cpu_share")}
    return undecided_when_client_bound(checks, load, timing) + [client_load_check(load)], metrics


def _worst(load: pd.DataFrame, column: str) -> float | None:
    values = pd.to_numeric(load[column], errors="coerce").dropna() if len(load) else pd.Series(dtype=float)
    return round(float(values.max()), 3) if len(values) else None
