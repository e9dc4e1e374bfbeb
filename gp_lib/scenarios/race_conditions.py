"""Race conditions in the WebSocket handshake (PROTOCOL.md sections 4 and 9).

Root cause: after the upgrade the server still has per-connection setup to do
(authenticate, register, build the per-user context) before it sends its
readiness marker. A message that arrives in that window is handled before
setup finished, fails, and the server closes with 1011. Setup takes longer
when many connections are in it at once, so the window widens under
concurrent connects. A correct server queues early messages and answers them
after setup; a client that waits for the readiness marker never hits the
window.

The traffic, per arm:

- `storm`: at each concurrency level, that many connections opened together,
  each sending a ping right after the upgrade and awaiting the answer (the
  test plan's handshake-under-load test);
- `sweep`: at each concurrency level and send delay, a batch of connections
  opened together that send their first message (a ping) that many
  milliseconds after the upgrade (condition `send_at_delay`), and the same
  batch waiting for the readiness marker first (condition `wait_ready`),
  `sweep_repeats` times; batches run one after another so that the
  concurrency level is what the server sees;
- `early_burst`: connections that send `burst_messages` messages at once after
  the upgrade, each of which must be answered (early-message queuing);
- `rapid_cycles`: connect, send an agent_request at once, read to
  agent_completed, close; `rapid_cycles` times in a row.

Each attempt row carries `phase`, `concurrency`, `send_delay_ms`,
`wait_ready` and `repeat`. The `batches` table lists every planned batch and
whether the deadline let it run; the `client_load` table the client's own
load, one row per process and storm (`gp_lib.load`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from gp_lib import protocol, storm
from gp_lib.checks import Check, ratio_check
from gp_lib.load import LoadMeter, judged_with_client_load, load_table, process_name
from gp_lib.scenarios.common import (CommonParams, Observation, ParameterError, ScenarioResult, Target,
                                     list_field, outcome_counts, run_scenario)
from gp_lib.storm import SpreadParams
from gp_lib.trace import AttemptRecord, admitted, connection_metrics, sent_before_ready

NAME = "race_conditions"
HEADLINE = ("attempts", "closed_1011", "success_rate", "race_window_ms")

PHASES = ("storm", "sweep", "early_burst", "rapid_cycles")
#: Checks that judge a time, undecidable when the client was saturated.
TIMING_CHECKS = ("mean_connect_time",)
#: The columns this scenario adds to each attempts row.
SCENARIO_COLUMNS = ("phase", "concurrency", "send_delay_ms", "wait_ready", "repeat")
#: 1011s follow send timing (a race, so a race window may be claimed) when attempts that sent before the
#: readiness marker close 1011 at least this many times as often as those that waited: the diagnosis's
#: race criterion (`gp_lib.diagnosis`, "at least three times as often"), so the two never disagree. A cause
#: that ignores send timing (factory, services) hits both alike; the margin keeps chance apart from a race.
RACE_RATE_RATIO = 3


@dataclass
class Params(SpreadParams, CommonParams):
    """Parameters of the race-conditions scenario (the common ones, the storm-spreading ones, plus these)."""

    concurrency_levels: list = list_field(1, 5, 20)        # connections opened together, per batch
    send_delays_ms: list = list_field(0, 1, 2, 5, 10, 20, 50)  # first-send delays after the upgrade, ms
    sweep_repeats: int = 3                 # batches per concurrency level, delay and condition
    burst_connections: int = 3             # connections in the early-burst phase
    burst_messages: int = 3                # messages each sends at once after the upgrade
    rapid_cycles: int = 5                  # connect, agent_request, close cycles in a row
    deadline_s: float = 30.0               # per arm: no new batch starts after this many seconds
    min_success_rate: float = 0.8          # share of attempts that must succeed (test plan: 80%)
    max_mean_connect_ms: float = 5000.0    # ceiling on the mean upgrade time (test plan: 5 s)
    min_cycle_rate: float = 0.8            # share of rapid cycles that must complete (test plan: 80%)
    reference_setup_ms: float = 15.0       # reference server: per-connection setup time, ms
    reference_setup_ms_per_concurrent: float = 2.0  # reference server: added per other connection in setup, ms

    def validate(self) -> None:
        super().validate()
        for name in ("concurrency_levels", "send_delays_ms"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise ParameterError(f"{name} must be a non-empty list, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise ParameterError(f"{name} must hold numbers only, got {list(values)}")
        if any(int(c) != c or c < 1 for c in self.concurrency_levels):
            raise ParameterError(f"concurrency_levels must be whole numbers >= 1, got {list(self.concurrency_levels)}")
        if max(self.concurrency_levels) > self.max_concurrency:
            raise ParameterError(f"concurrency_levels holds {max(self.concurrency_levels)}, above "
                                 f"max_concurrency={self.max_concurrency}")
        for name in ("sweep_repeats", "burst_connections", "burst_messages", "rapid_cycles"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("min_success_rate", "min_cycle_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ParameterError(f"{name} must be a share from 0 to 1, got {getattr(self, name)}")
        if not self.deadline_s > 0:
            raise ParameterError(f"deadline_s must be greater than zero, got {self.deadline_s}")


def reference_faults(arm: str, params: Params) -> dict[str, Any]:
    """The race fault in the faulty arm only; the same setup delays in both."""
    return {"race": arm == "faulty", "setup_ms": params.reference_setup_ms,
            "setup_ms_per_concurrent": params.reference_setup_ms_per_concurrent}


# -- the traffic ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """Connections opened together that do the same thing."""

    phase: str
    condition: str
    concurrency: int
    send_delay_ms: float
    repeat: int

    @property
    def wait_ready(self) -> bool:
        return self.condition == "wait_ready"


def plan(params: Params) -> list[Batch]:
    """Every batch of a run, in the order they run; conditions interleaved so drift hits both."""
    batches = [Batch("storm", "send_on_open", int(c), 0.0, 0) for c in params.concurrency_levels]
    for repeat in range(params.sweep_repeats):
        for c in params.concurrency_levels:
            for delay in params.send_delays_ms:
                for condition in ("send_at_delay", "wait_ready"):
                    batches.append(Batch("sweep", condition, int(c), float(delay), repeat))
    batches += [Batch("early_burst", "early_burst", 1, 0.0, n) for n in range(params.burst_connections)]
    batches += [Batch("rapid_cycles", "rapid_cycle", 1, 0.0, n) for n in range(params.rapid_cycles)]
    return batches


async def drive(target: Target) -> Observation:
    """Run every batch of the plan, one after another, until the plan or the deadline ends.

    Each batch is a storm (`gp_lib.storm`): in this process, or spread over worker processes when it is
    at least `spread_from` connections; the client's load during each goes into the `client_load` table.
    """
    params: Params = target.params
    batches = plan(params)
    deadline = time.monotonic() + params.deadline_s
    records: list[AttemptRecord] = []
    rows, load = [], []
    bar = target.bar(len(batches), "race traffic")
    answer_s = params.open_timeout_s + params.ready_timeout_s + params.receive_timeout_s
    try:
        async with LoadMeter(process_name(), f"{target.arm} traffic in this process") as meter:
            for batch in batches:
                started = time.monotonic() < deadline
                if started:
                    label = f"{batch.phase} {batch.condition} c={batch.concurrency} at {batch.send_delay_ms:g} ms"
                    done, spread = await storm.run(target, partial(attempt, batch=batch), batch.concurrency,
                                                   user=user_name, label=label, deadline_s=answer_s)
                    records += done
                    load += spread
                rows.append({"phase": batch.phase, "condition": batch.condition, "concurrency": batch.concurrency,
                             "send_delay_ms": batch.send_delay_ms, "repeat": batch.repeat, "ran": started})
                bar.update(1)
    finally:
        bar.close()
    return Observation.from_records(target.arm, records, {"batches": pd.DataFrame(rows),
                                                          "client_load": load_table([meter.row(), *load])})


def user_name(index: int) -> str:
    """The user of connection `index` of a batch."""
    return f"race_test_user_{index + 1}"


async def attempt(target: Target, index: int, context: Any = None, *, batch: Batch) -> AttemptRecord:
    """One connection of a batch: open, (wait for readiness,) send its first message(s), read the answer, close."""
    params: Params = target.params
    extra = {"phase": batch.phase, "concurrency": batch.concurrency, "send_delay_ms": batch.send_delay_ms,
             "wait_ready": batch.wait_ready, "repeat": batch.repeat}
    conn = await target.connection(user_name(index), condition=batch.condition, extra=extra)
    if await conn.open():
        if not batch.wait_ready or await conn.wait_ready():
            if batch.phase == "early_burst":
                await _burst(conn, params)
            elif batch.phase == "rapid_cycles":
                request = target.dialect.agent_request_message(f"Quick test request {batch.repeat}",
                                                               agent="triage_agent")
                if await conn.send(request, at_ms=batch.send_delay_ms):
                    await conn.receive_until(protocol.ends_run, params.receive_timeout_s)
            elif await conn.send({"type": "ping", "timestamp": time.time()}, at_ms=batch.send_delay_ms):
                await conn.receive_until(lambda m: m["type"] == "pong", params.receive_timeout_s)
        await conn.close()
    return conn.finish()


async def _burst(conn: Any, params: Params) -> None:
    """Send `burst_messages` messages back to back, then read until each has an answer."""
    sent = 0
    for n in range(1, params.burst_messages + 1):
        sent += await conn.send({"type": f"immediate_test_{n}", "data": f"test{n}"})
    answers = 0

    def all_answered(message: dict[str, Any]) -> bool:
        nonlocal answers
        answers += _is_answer(message)
        return answers >= sent

    if sent:
        await conn.receive_until(all_answered, params.receive_timeout_s)


def _is_answer(message: dict[str, Any]) -> bool:
    """An answer to an unknown message type: an `ack` or an error (PROTOCOL.md section 5)."""
    return message["type"] == "ack" or protocol.is_error(message)


# -- judging (pure) ------------------------------------------------------------------------

def early_messages(attempts: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """One row per message of the early-burst phase: was it answered, and how.

    An `ack` naming the message's type answers it; an error answers the
    earliest message not answered yet.
    """
    columns = ["attempt_id", "message_type", "t_sent_ms", "answered", "answer_type", "t_answer_ms"]
    attempts = labelled(attempts)
    if frames.empty:
        return pd.DataFrame(columns=columns)
    ids = set(attempts.loc[attempts["phase"] == "early_burst", "attempt_id"])
    rows = []
    for attempt_id, own in frames[frames["attempt_id"].isin(ids)].groupby("attempt_id", sort=False):
        own = own.sort_values("t_ms", kind="stable")
        # the client's automatic handshake reply is not one of the burst
        sent = own[(own["direction"] == "sent") & (own["type"] != protocol.HANDSHAKE_ACK)]
        pending = [{"attempt_id": attempt_id, "message_type": kind, "t_sent_ms": t, "answered": False,
                    "answer_type": None, "t_answer_ms": None} for kind, t in zip(sent["type"], sent["t_ms"])]
        for frame in own[own["direction"] == "received"].to_dict(orient="records"):
            message, kind, t = protocol.message_from_row(frame), frame["type"], frame["t_ms"]
            if kind == "ack":
                named = protocol.field(message, "received_type")
                row = next((r for r in pending if not r["answered"] and r["message_type"] == named), None)
            elif protocol.is_error(message):
                row = next((r for r in pending if not r["answered"]), None)
            else:
                continue
            if row is not None:
                row.update(answered=True, answer_type=kind, t_answer_ms=t)
        rows += pending
    return pd.DataFrame(rows, columns=columns)


def rapid_cycle_events(attempts: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """One row per rapid cycle: did it see agent_started and agent_completed."""
    columns = ["attempt_id", "outcome", "agent_started", "agent_completed"]
    attempts = labelled(attempts)
    cycles = attempts.loc[attempts["phase"] == "rapid_cycles", ["attempt_id", "outcome"]]
    received = frames[frames["direction"] == "received"] if len(frames) else frames
    seen = received.groupby("attempt_id")["type"].agg(set) if len(received) else pd.Series(dtype=object)
    rows = []
    for attempt_id, outcome in cycles.itertuples(index=False):
        types = seen.get(attempt_id, set())
        rows.append({"attempt_id": attempt_id, "outcome": outcome,
                     "agent_started": protocol.AGENT_STARTED in types,
                     "agent_completed": protocol.AGENT_COMPLETED in types})
    return pd.DataFrame(rows, columns=columns)


def race_window_ms(attempts: pd.DataFrame) -> float | None:
    """The longest planned first-send delay that still saw a 1011 among attempts that did not wait for
    readiness (`evaluate` reports it only when the 1011s follow send timing, as a race's do)."""
    early = _early(attempts)
    failing = early.loc[early["outcome"] == "closed_1011", "send_delay_ms"]
    return float(failing.max()) if len(failing) else None


def rate_by_delay(attempts: pd.DataFrame) -> pd.DataFrame:
    """The sweep as a table: 1011 rate per condition, concurrency level and send delay."""
    columns = ["condition", "concurrency", "send_delay_ms", "attempts", "closed_1011", "rate_1011"]
    attempts = labelled(attempts)
    sweep = attempts[attempts["phase"] == "sweep"]
    if sweep.empty:
        return pd.DataFrame(columns=columns)
    table = (sweep.assign(failed=sweep["outcome"] == "closed_1011")
             .groupby(["condition", "concurrency", "send_delay_ms"])["failed"].agg(["size", "sum"]).reset_index()
             .rename(columns={"size": "attempts", "sum": "closed_1011"}))
    table["rate_1011"] = table["closed_1011"] / table["attempts"]
    return table[columns]


def evaluate(observation: Observation, params: Params) -> tuple[list[Check], dict[str, Any]]:
    """The test plan's checks and the scenario's metrics, from the tables alone."""
    attempts, frames = labelled(observation.attempts), observation.frames
    total = len(attempts)
    failed = int((attempts["outcome"] == "closed_1011").sum())
    ok = int((attempts["outcome"] == "ok").sum())
    before, after = _by_send_timing(attempts)
    failed_before = int((before["outcome"] == "closed_1011").sum())
    failed_after = int((after["outcome"] == "closed_1011").sum())
    race_like = (failed_before > 0
                 and _share(failed_after, len(after)) * RACE_RATE_RATIO <= _share(failed_before, len(before)))
    early = _early(attempts)
    window = race_window_ms(attempts) if race_like else None
    opened = pd.to_numeric(attempts["t_open_ms"], errors="coerce").dropna()
    burst = early_messages(attempts, frames)
    answered = int(burst["answered"].sum()) if len(burst) else 0
    cycles = rapid_cycle_events(attempts, frames)
    complete = int((cycles["agent_started"] & cycles["agent_completed"]).sum()) if len(cycles) else 0
    mean_connect = float(opened.mean()) if len(opened) else None

    evidence_1011 = (f"{failed} of {total} attempts closed 1011: {failed_before} of {len(before)} that sent before "
                     f"the readiness marker, {failed_after} of {len(after)} that did not"
                     + (f"; latest failing send delay {window:g} ms" if window is not None else ""))
    if not len(opened):  # a 1011 needs an upgrade: nothing that never connected can show one
        evidence_1011 = f"none of {total} attempts upgraded ({outcome_counts(attempts)}): no 1011 to judge" if total \
            else "no attempts to judge"
    checks = [
        Check("no_1011_closes", len(opened) > 0 and failed == 0, evidence_1011),
        ratio_check("success_rate", ok, total, at_least=params.min_success_rate, what="attempts succeeded"),
        Check("mean_connect_time", mean_connect is not None and mean_connect < params.max_mean_connect_ms,
              f"mean upgrade time {mean_connect:.1f} ms over {len(opened)} upgraded attempts "
              f"(need < {params.max_mean_connect_ms:g} ms)" if mean_connect is not None
              else f"none of {total} attempts upgraded"),
        _all_answered(burst, answered),
        ratio_check("rapid_cycles_complete", complete, len(cycles), at_least=params.min_cycle_rate,
                    what="rapid connect-request-close cycles reached agent_started and agent_completed"),
    ]
    metrics: dict[str, Any] = {
        "attempts": total,
        "ok": ok,
        "closed_1011": failed,
        "closed_1011_sent_before_ready": failed_before,
        "attempts_sent_before_ready": len(before),
        "closed_1011_not_sent_before_ready": failed_after,
        "attempts_not_sent_before_ready": len(after),
        "success_rate": round(ok / total, 4) if total else None,
        "ws_connecting_mean_ms": _round(mean_connect),
        **connection_metrics(attempts),
        "race_window_ms": window,
        **{f"race_window_ms_c{c}": race_window_ms(early[early["concurrency"] == c]) if race_like else None
           for c in _levels(params, early)},
        "early_messages_sent": len(burst),
        "early_messages_answered": answered,
        "rapid_cycles": len(cycles),
        "rapid_cycles_complete": complete,
    }
    batches = observation.tables.get("batches")
    if batches is not None and len(batches):
        metrics["batches_skipped"] = int((~batches["ran"].astype(bool)).sum())
    return judged_with_client_load(checks, metrics, observation.tables.get("client_load"), TIMING_CHECKS)


def _all_answered(burst: pd.DataFrame, answered: int) -> Check:
    if burst.empty:
        return Check("early_messages_answered", False, "no early messages were sent: nothing to judge")
    return Check("early_messages_answered", answered == len(burst),
                 f"{answered} of {len(burst)} messages sent at once after the upgrade were answered "
                 f"({burst['attempt_id'].nunique()} connections)")


def labelled(attempts: pd.DataFrame) -> pd.DataFrame:
    """The attempts with this scenario's columns, present even when no attempt was made; `wait_ready` boolean."""
    attempts = attempts.assign(**{name: None for name in SCENARIO_COLUMNS if name not in attempts})
    return attempts.assign(wait_ready=attempts["wait_ready"].astype("boolean").fillna(False).astype(bool))


def _by_send_timing(attempts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(admitted attempts that sent before the readiness marker, those that did not), as the diagnosis
    counts them (`gp_lib.trace.sent_before_ready`)."""
    let_in = admitted(attempts)
    before = sent_before_ready(attempts)
    return attempts[let_in & before], attempts[let_in & ~before]


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _early(attempts: pd.DataFrame) -> pd.DataFrame:
    """Attempts that sent before (or without) the readiness marker, with a known send delay."""
    attempts = labelled(attempts)
    return attempts[~attempts["wait_ready"] & attempts["send_delay_ms"].notna()]


def _levels(params: Params, early: pd.DataFrame) -> list[int]:
    seen = set(early["concurrency"].dropna().astype(int)) if len(early) else set()
    return sorted(seen | {int(c) for c in params.concurrency_levels})


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- reading a result ------------------------------------------------------------------------

def interpret(result: ScenarioResult) -> str:
    """What this run says about the handshake race, in a few sentences that follow the numbers."""
    if result.error:
        return f"The run could not be made ({result.error}), so nothing can be said about the race."
    longest = max(result.params.get("send_delays_ms") or [0])
    lines = []
    for arm in ("faulty", "fixed", "live"):
        if arm in result.arm_metrics:
            lines.append(_interpret_arm(arm, result.arm_metrics[arm], longest))
    if result.mode == "reference":
        faulty, fixed = result.arm_metrics.get("faulty", {}), result.arm_metrics.get("fixed", {})
        if faulty.get("closed_1011") and not fixed.get("closed_1011"):
            lines.append("Queuing early messages until setup finished (the fixed arm) removes every 1011: the "
                         "remediation is to queue, or to make clients wait for the readiness marker.")
    return "\n\n".join(lines)


def _interpret_arm(arm: str, m: dict[str, Any], longest_delay_ms: float) -> str:
    """One arm in words. The counts of 1011 by send timing are the diagnosis's and the checks': stated
    there once, not repeated here."""
    who = {"faulty": "With the fault injected", "fixed": "With the fix", "live": "Against the target"}[arm]
    if not m.get("attempts"):
        return f"{who}, no attempt was made."
    if not m.get("closed_1011") and not m.get("ok"):
        return (f"{who}, none of {m['attempts']} attempts closed 1011, but none succeeded either: they ended "
                f"otherwise (see the close codes: authentication, timeouts), so nothing can be said about the race.")
    if not m.get("closed_1011"):
        return (f"{who}, none of {m['attempts']} attempts closed 1011, including {m['attempts_sent_before_ready']} "
                f"that sent before the readiness marker: early messages are queued, no handshake race is visible. "
                f"Median upgrade {m['ws_connecting_p50_ms']} ms, median readiness {m['ready_p50_ms']} ms.")
    if m.get("race_window_ms") is None:
        return (f"{who}, the 1011 closes came whether or not the client sent before the readiness marker "
                f"({m['closed_1011_not_sent_before_ready']} of them among attempts that did not): waiting does not "
                "avoid them, so they are not the handshake race. The diagnosis above names their cause.")
    windows = {int(k.rsplit("_c", 1)[1]): v for k, v in m.items() if k.startswith("race_window_ms_c")}
    spread = ", ".join(f"{'none' if v is None else f'{v:g} ms'} at concurrency {c}" for c, v in sorted(windows.items()))
    text = (f"{who}, the 1011 closes follow send timing (counts in the diagnosis and in no_1011_closes): that is "
            f"the handshake race, a message handled before per-connection setup finished. The latest failing "
            f"send delay (the race window) is {spread}.")
    known = [(c, v) for c, v in sorted(windows.items()) if v is not None]
    if len(known) > 1 and known[-1][1] > known[0][1]:
        text += " The window widens with concurrent connects: setup slows down when many connections are in it."
    if m["race_window_ms"] >= longest_delay_ms:
        text += (f" Even the longest delay tried ({longest_delay_ms:g} ms) saw a 1011, so the window may be wider: "
                 f"add longer delays to `send_delays_ms` to find its end.")
    return text


async def run(params: Params, progress: Any = None) -> ScenarioResult:
    """Drive and judge the scenario (live or reference mode)."""
    return await run_scenario(sys.modules[__name__], params, progress=progress)
