"""Missing WebSocket agent events (PROTOCOL.md sections 6 and 9, root cause 4).

Root cause: the agent runs, but its event emission is skipped or misrouted.
Runs then end without some of the five events a user's chat shows progress
with (agent_started, agent_thinking, tool_executing, tool_completed,
agent_completed), or with them out of order, or the events reach another
user's socket: a cross-user leak, which is a security defect as well as a
broken chat. The socket stays open and nothing closes 1011, so only the event
sequences tell.

The traffic, per arm (every connection waits for the readiness marker before
sending: this scenario is not about the handshake race):

- `reconnect`: send an agent_request, hang up right after agent_started,
  reconnect as the same user and send `status_request {thread_id}`; a
  status_update (thread_status, execution_status) naming the thread and its
  state is the correct answer. The new socket then listens `settle_ms`, so
  the abandoned run has ended before the next phase connects other users.
  `reconnect_trials` times, or not at all when the dialect has no
  status_request.
- `concurrent`: `concurrent_users` users connected at once (all ready before
  anyone sends), each making `runs_per_user` runs in a row; everyone stays
  connected until all are done, so an event routed to the wrong user lands on
  a socket that is listening and is seen.
- `sequential`: `sequential_runs` agent runs one after another on ONE
  connection, each awaited to its end (agent_completed, agent_error or an
  error), to `event_timeout_s` of silence, or to `run_timeout_s`. One
  connection, because that is how a chat session uses its socket, and
  because emission that breaks after the first run on a socket (a notifier
  lost or rebound between runs) only shows there; runs stay apart by
  `run_id`, so a late event of one run is never counted in the next. If the
  connection is lost, the next run opens a new one.

The phases run one after another, so that one phase's runs never land on
another phase's sockets, the short ones first, so that a deadline cut (runs
stalling until their timeouts) never leaves a check without evidence.

Attempt conditions: `sequential`, `concurrent`, `reconnect_drop` and
`reconnect_status` (with a `trial` column). Tables: `runs` (one row per
requested run of the sequential and concurrent phases, see `requested_runs`),
`status` (one row per reconnect trial, see `reconnect_status`; empty when no
trial ran) and `client_load` (the client's own load, one row per process and
storm, see `gp_lib.load`).
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pandas as pd

from gp_lib import events, protocol, storm
from gp_lib.checks import Check, inconclusive, ratio_check
from gp_lib.load import LoadMeter, judged_with_client_load, load_table, process_name
from gp_lib.client import TracedConnection
from gp_lib.dialects import Dialect
from gp_lib.protocol import AGENT_STARTED, EVENT_NAMES
from gp_lib.scenarios.common import CommonParams, Observation, ParameterError, ScenarioResult, Target, run_scenario
from gp_lib.refserver.faults import FAULT_MODES
from gp_lib.storm import SpreadParams
from gp_lib.trace import AttemptRecord, connection_metrics, percentile

NAME = "missing_events"
HEADLINE = ("runs", "complete_runs", "completeness_rate", "cross_user_events", "event_latency_p50_ms")

#: Attempt conditions whose agent runs are judged for completeness and order.
RUN_CONDITIONS = ("sequential", "concurrent")
EVENTS_MODES = FAULT_MODES["events"]
PROMPT = "Analyze my cloud costs and recommend optimizations"
SEQUENTIAL_USER = "events_test_user"
RECONNECT_USER = "events_reconnect_user"


@dataclass
class Params(SpreadParams, CommonParams):
    """Parameters of the missing-events scenario (the common ones, plus these)."""

    sequential_runs: int = 10              # agent runs one after another on one connection
    concurrent_users: int = 3              # users connected at once for the concurrent runs
    runs_per_user: int = 3                 # agent runs each concurrent user makes, one after another
    reconnect_trials: int = 2              # hang up after agent_started, reconnect, ask status_request
    agent: str = "cost_optimizer"          # agent named in every agent_request
    event_timeout_s: float = 5.0           # longest silence awaited within a run before it stalls (test plan: 5 s)
    run_timeout_s: float = 30.0            # deadline for one whole run to end (test plan: 30 s)
    settle_ms: float = 300.0               # listening after a phase's last run, for late or misrouted events
    deadline_s: float = 60.0               # per arm: no new run starts after this many seconds
    min_complete_rate: float = 1.0         # share of runs that must show all five events (test plan: 100%)
    reference_events_mode: str = "omit_tools"  # faulty arm's events fault: omit_tools, out_of_order or misroute
    reference_agent_step_ms: float = 20.0  # reference server: delay between two agent events, ms

    def validate(self) -> None:
        super().validate()
        for name in ("sequential_runs", "concurrent_users", "runs_per_user", "reconnect_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParameterError(f"{name} must be a whole number, got {value!r}")
        if self.sequential_runs + self.concurrent_users * self.runs_per_user < 1:
            raise ParameterError("sequential_runs and concurrent_users x runs_per_user are all zero: "
                                 "no agent run to judge")
        if self.reconnect_trials < 1:
            raise ParameterError(f"reconnect_trials must be at least 1, got {self.reconnect_trials}")
        if self.concurrent_users > self.max_concurrency:
            raise ParameterError(f"concurrent_users={self.concurrent_users} is above max_concurrency="
                                 f"{self.max_concurrency}: the users must all be connected at once")
        if not isinstance(self.agent, str) or not self.agent.strip():
            raise ParameterError(f"agent must name an agent, got {self.agent!r}")
        for name in ("event_timeout_s", "run_timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name} must be greater than zero, got {getattr(self, name)}")
        if not 0 <= self.min_complete_rate <= 1:
            raise ParameterError(f"min_complete_rate must be a share from 0 to 1, got {self.min_complete_rate}")
        if self.reference_events_mode not in EVENTS_MODES:
            raise ParameterError(f"reference_events_mode must be one of {', '.join(EVENTS_MODES)}, "
                                 f"not {self.reference_events_mode!r}")


def reference_faults(arm: str, params: Params) -> dict[str, Any]:
    """The events fault in the faulty arm only; the same agent pace in both."""
    return {"events": params.reference_events_mode if arm == "faulty" else None,
            "agent_step_ms": params.reference_agent_step_ms}


# -- the traffic ---------------------------------------------------------------------------

async def drive(target: Target) -> Observation:
    """The three phases, one after another (see the module docstring)."""
    params: Params = target.params
    deadline = time.monotonic() + params.deadline_s
    total = params.sequential_runs + params.concurrent_users * params.runs_per_user + params.reconnect_trials
    bar = target.bar(total, "agent runs")
    records: list[AttemptRecord] = []
    try:
        async with LoadMeter(process_name(), f"{target.arm} traffic in this process") as meter:
            records += await _reconnects(target, deadline, bar)
            concurrent, spread = await _concurrent(target, deadline, bar)
            records += concurrent
            records += await _sequential(target, deadline, bar)
    finally:
        bar.close()
    observation = Observation.from_records(target.arm, records, {"client_load": load_table([meter.row(), *spread])})
    observation.tables["runs"] = requested_runs(observation.attempts, observation.frames)
    observation.tables["status"] = reconnect_status(observation.attempts, observation.frames)
    return observation


async def _sequential(target: Target, deadline: float, bar: Any) -> list[AttemptRecord]:
    """`sequential_runs` runs on one connection; a lost connection is replaced for the next run."""
    params: Params = target.params
    records: list[AttemptRecord] = []
    conn: TracedConnection | None = None
    for _ in range(params.sequential_runs):
        if time.monotonic() >= deadline:
            break
        if conn is None or not conn.is_open:
            if conn is not None:
                records.append(await _finish(conn))
            conn = await target.connection(SEQUENTIAL_USER, condition="sequential")
            if not await _ready(conn):
                records.append(await _finish(conn))
                conn = None
                bar.update(1)
                continue
        await _one_run(conn, params, target.dialect)
        bar.update(1)
    if conn is not None:
        await conn.collect(params.settle_ms / 1000)
        records.append(await _finish(conn))
    return records


async def _concurrent(target: Target, deadline: float, bar: Any) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
    """The concurrent users as one storm (`gp_lib.storm`): here, or spread over worker processes when there are
    at least `spread_from` of them; the records, and the `client_load` rows of the workers."""
    params: Params = target.params
    if not params.concurrent_users or not params.runs_per_user:
        return [], []
    records, load = await storm.run(target, concurrent_user, params.concurrent_users, user=concurrent_user_name,
                                    label="concurrent users", deadline_s=max(0.0, deadline - time.monotonic()))
    bar.update(params.concurrent_users * params.runs_per_user)
    return records, load


def concurrent_user_name(index: int) -> str:
    """Numbered first: the real backend shows ids cut to 8 characters (`u1_event...`; websocket_ssot.py
    at aebb16f7, line 977), and ids that shared those 8 would hide one user's events on another's socket."""
    return f"u{index + 1}_events_concurrent"


async def concurrent_user(target: Target, index: int, context: Any) -> AttemptRecord:
    """One concurrent user: connected and ready when all are, its runs, then listening until all are done,
    so that an event routed to the wrong user lands on a socket that is listening and is seen."""
    params: Params = target.params
    conn = await target.connection(concurrent_user_name(index), condition="concurrent")
    ready = await _ready(conn)
    await context.together()
    for _ in range(params.runs_per_user):
        if ready and conn.is_open and time.monotonic() < context.deadline:
            await _one_run(conn, params, target.dialect)
    await context.together()
    await conn.collect(params.settle_ms / 1000)
    return await _finish(conn)


async def _reconnects(target: Target, deadline: float, bar: Any) -> list[AttemptRecord]:
    """Hang up after agent_started, reconnect as the same user, ask for the thread's status."""
    params: Params = target.params
    records: list[AttemptRecord] = []
    trials = params.reconnect_trials if target.dialect.status_request else 0  # nothing to ask the status with
    for trial in range(trials):
        if time.monotonic() >= deadline:
            break
        thread_id = _new_thread()
        first = await target.connection(RECONNECT_USER, condition="reconnect_drop", extra={"trial": trial})
        if await _ready(first) and await first.send(_request(target.dialect, params, thread_id)):
            await first.receive_until(partial(_started_or_failed, thread_id, _names(first)), params.event_timeout_s)
        records.append(await _finish(first))
        second = await target.connection(RECONNECT_USER, condition="reconnect_status", extra={"trial": trial})
        asked = {"type": "status_request", "thread_id": thread_id, "user_id": second.record.user_id}
        if await _ready(second) and await second.send(asked):
            await second.receive_until(_status_answer, params.receive_timeout_s)
            await second.collect(params.settle_ms / 1000)
        records.append(await _finish(second))
        bar.update(1)
    return records


async def _ready(conn: TracedConnection) -> bool:
    return await conn.open() and await conn.wait_ready()


async def _finish(conn: TracedConnection) -> AttemptRecord:
    await conn.close()
    return conn.finish()


async def _one_run(conn: TracedConnection, params: Params, dialect: Dialect) -> None:
    """One agent request, read until the run ends, stays silent `event_timeout_s`, or `run_timeout_s` passes.

    What arrives after the wait is still recorded: the run's late events
    count for it (runs are told apart by run_id), only the wait is over.
    """
    thread_id = _new_thread()
    if not await conn.send(_request(dialect, params, thread_id)):
        return
    end = time.monotonic() + params.run_timeout_s
    while (left := end - time.monotonic()) > 0:
        message = await conn.receive(min(params.event_timeout_s, left))
        if message is None or _ends_run(thread_id, _names(conn), message):
            return


def _request(dialect: Dialect, params: Params, thread_id: str) -> dict[str, Any]:
    return dialect.agent_request_message(PROMPT, agent=params.agent, thread_id=thread_id)


def _names(conn: TracedConnection) -> tuple[str | None, str | None]:
    """Who the socket is: the user asked for, and the name the server gave it."""
    return conn.record.user_id, conn.record.server_user


def _status_answer(message: dict[str, Any]) -> bool:
    """A status, an error, or the `ack` of a server that does not know status_request."""
    return protocol.is_status(message) or protocol.is_error(message) or (
        message["type"] == "ack" and protocol.field(message, "received_type") == "status_request")


def _new_thread() -> str:
    return f"thread_{uuid.uuid4().hex[:16]}"


def _ours(thread_id: str, names: tuple[str | None, str | None], message: dict[str, Any]) -> bool:
    """Not visibly another run's: no thread or user named, or ours."""
    thread = protocol.field(message, "thread_id")
    user = protocol.text_field(message, "user_id")
    return thread in (None, thread_id) and events.is_own(user, *names)


def _ends_run(thread_id: str, names: tuple[str | None, str | None], message: dict[str, Any]) -> bool:
    return protocol.ends_run(message) and _ours(thread_id, names, message)


def _started_or_failed(thread_id: str, names: tuple[str | None, str | None], message: dict[str, Any]) -> bool:
    return (message["type"] == AGENT_STARTED or protocol.is_error(message)) and _ours(thread_id, names, message)


# -- judging (pure) ------------------------------------------------------------------------

def requested_runs(attempts: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """One row per run requested in the sequential and concurrent phases, as its own socket saw it
    (`events.requested_runs`: a request that showed no event at all misses all five)."""
    columns = ["condition", *events.RUN_COLUMNS]
    if attempts.empty or "condition" not in attempts:
        return pd.DataFrame(columns=columns)
    judged = attempts[attempts["condition"].isin(RUN_CONDITIONS)]
    conditions = dict(zip(judged["attempt_id"], judged["condition"]))
    own_frames = frames[frames["attempt_id"].isin(conditions)] if len(frames) else frames
    table = events.requested_runs(own_frames, judged)
    table = table.assign(condition=table["attempt_id"].map(conditions))
    return table.reindex(columns=columns).reset_index(drop=True)


def reconnect_status(attempts: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """One row per reconnect trial: did the hung-up run start, and what did status_request answer."""
    columns = ["trial", "thread_id", "saw_agent_started", "answer_type", "answer_thread_id", "state", "recovered",
               "outcome"]
    if attempts.empty or "condition" not in attempts or "trial" not in attempts:
        return pd.DataFrame(columns=columns)
    rows = []
    for trial, group in attempts[attempts["condition"].str.startswith("reconnect", na=False)].groupby("trial"):
        by_condition = dict(zip(group["condition"], group["attempt_id"]))
        drop = _frames_of(frames, by_condition.get("reconnect_drop"))
        status = _frames_of(frames, by_condition.get("reconnect_status"))
        asked = status[(status["direction"] == "sent") & (status["type"] == "status_request")]
        thread_id = asked["thread_id"].iloc[0] if len(asked) else None
        answers = [protocol.message_from_row(r) for r in status[status["direction"] == "received"].to_dict(orient="records")]
        answer = next((m for m in answers if _status_answer(m)), None)
        answer = answer or {}
        state = protocol.field(answer, "state")
        answer_thread = protocol.field(answer, "thread_id")
        outcome = group.loc[group["condition"] == "reconnect_status", "outcome"]
        rows.append({"trial": int(trial), "thread_id": thread_id,
                     "saw_agent_started": bool((drop["type"] == AGENT_STARTED).any()) if len(drop) else False,
                     "answer_type": answer.get("type"), "answer_thread_id": answer_thread, "state": state,
                     "recovered": bool(protocol.is_status(answer) and thread_id is not None
                                       and str(answer_thread) == str(thread_id)
                                       and isinstance(state, str) and state.strip().lower() not in ("", "unknown")),
                     "outcome": outcome.iloc[0] if len(outcome) else None})
    return pd.DataFrame(rows, columns=columns)


def _frames_of(frames: pd.DataFrame, attempt_id: Any) -> pd.DataFrame:
    if attempt_id is None or frames.empty:
        return pd.DataFrame(columns=frames.columns if len(frames.columns) else ["direction", "type", "thread_id"])
    return frames[frames["attempt_id"] == attempt_id]


def evaluate(observation: Observation, params: Params) -> tuple[list[Check], dict[str, Any]]:
    """The five checks and the metrics, from the attempts and frames tables alone."""
    attempts, frames = observation.attempts, observation.frames
    runs = requested_runs(attempts, frames)
    received = events.run_events(frames, attempts)
    gaps = events.transitions(frames, attempts)
    gaps = gaps[~gaps["foreign"].astype(bool)]
    status = reconnect_status(attempts, frames)
    total = len(runs)
    complete = int(runs["complete"].astype(bool).sum()) if total else 0
    observed = runs[runs["events"] > 0]
    out_of_order = int((~observed["in_order"].astype(bool)).sum())
    open_tools = int((~observed["tools_closed"].astype(bool)).sum())
    leaks = int(received["foreign"].astype(bool).sum())
    recovered = int(status["recovered"].sum()) if len(status) else 0
    first_event = (runs["t_first_ms"] - runs["t_request_ms"]).dropna() if total else pd.Series(dtype=float)
    duration = (observed["t_last_ms"] - observed["t_first_ms"]).dropna()
    outcomes = attempts["outcome"] if len(attempts) else pd.Series(dtype=object)
    not_ready = int(attempts["t_ready_ms"].isna().sum()) if len(attempts) else 0

    checks = [
        _completeness_check(runs, complete, params.min_complete_rate),
        _order_check(observed, out_of_order),
        _tools_check(observed, open_tools),
        _leak_check(received, leaks, _one_name(attempts)),
        _status_check(status, recovered),
    ]
    metrics: dict[str, Any] = {
        "runs": total,
        "complete_runs": complete,
        "completeness_rate": round(complete / total, 4) if total else None,
        "runs_without_events": total - len(observed),
        "runs_not_requested": max(0, params.sequential_runs + params.concurrent_users * params.runs_per_user - total),
        **{f"missing_{name}": int((runs[name] == 0).sum()) if total else 0 for name in EVENT_NAMES},
        "out_of_order_runs": out_of_order,
        "tool_calls": int(observed["tool_calls"].sum()) if len(observed) else 0,
        "runs_with_open_tool_calls": open_tools,
        "unfinished_runs": int((runs["ending"] == "unfinished").sum()) if total else 0,
        "agent_error_runs": int((runs["ending"] == "agent_error").sum()) if total else 0,
        "agent_events_received": len(received),
        "cross_user_events": leaks,
        "sockets_receiving_foreign_events": int(received.loc[received["foreign"].astype(bool), "attempt_id"].nunique()),
        "event_latency_p50_ms": percentile(gaps["gap_ms"], 0.5),
        "event_latency_p95_ms": percentile(gaps["gap_ms"], 0.95),
        "time_to_first_event_p50_ms": percentile(first_event, 0.5),
        "run_duration_p50_ms": percentile(duration, 0.5),
        "reconnect_trials": len(status),
        "status_recovered": recovered,
        "attempts": len(attempts),
        "connections_not_ready": not_ready,
        "closed_1011": int((outcomes == "closed_1011").sum()),
        **connection_metrics(attempts),
    }
    return judged_with_client_load(checks, metrics, observation.tables.get("client_load"), ())


def _completeness_check(runs: pd.DataFrame, complete: int, at_least: float) -> Check:
    name = "all_five_events"
    total = len(runs)
    if not total:
        return Check(name, False, "no agent run was requested (no connection became ready): nothing to judge")
    check = ratio_check(name, complete, total, at_least=at_least, what="runs showed all five events")
    lacking = runs.loc[~runs["complete"].astype(bool), "missing"].value_counts()
    if not len(lacking):
        return check
    return replace(check, evidence=check.evidence + "; " + "; ".join(
        f"{n} of {total} runs lacked {missing}" for missing, n in lacking.items()))


def _order_check(observed: pd.DataFrame, bad: int) -> Check:
    name = "started_first_completed_last"
    if observed.empty:
        return Check(name, False, "no run showed any event: nothing to judge")
    evidence = f"{bad} of {len(observed)} runs broke the order (agent_started first and once, agent_completed last " \
               f"and once)"
    if bad:
        example = observed.loc[~observed["in_order"].astype(bool), "problems"].iloc[0].split("; ")[0]
        evidence += f"; e.g. {example}"
    return Check(name, bad == 0, evidence)


def _tools_check(observed: pd.DataFrame, bad: int) -> Check:
    name = "tool_calls_closed"
    if observed.empty:
        return Check(name, False, "no run showed any event: nothing to judge")
    calls = int(observed["tool_calls"].sum())
    if not calls and not bad:
        return Check(name, True, f"no tool_executing in {len(observed)} runs: no tool call left open "
                                 f"(all_five_events judges the missing ones)")
    evidence = f"{bad} of {len(observed)} runs left a tool call unclosed or closed one never opened " \
               f"({calls} tool calls in all)"
    if bad:
        problems = observed.loc[~observed["tools_closed"].astype(bool), "problems"].iloc[0].split("; ")
        evidence += "; e.g. " + next(p for p in problems if "tool_" in p)
    return Check(name, bad == 0, evidence)


def _one_name(attempts: pd.DataFrame) -> str | None:
    """The one name a server gave sockets of several different users (a demo mode), else None."""
    if attempts.empty or "server_user" not in attempts:
        return None
    named = attempts[attempts["server_user"].notna()]
    names = named["server_user"].unique()
    return str(names[0]) if len(names) == 1 and named["user_id"].nunique() > 1 else None


def _leak_check(received: pd.DataFrame, leaks: int, one_name: str | None = None) -> Check:
    name = "no_cross_user_events"
    if received.empty:
        return inconclusive(name, "no agent event arrived on any socket: nothing to judge")
    if one_name is not None:
        return inconclusive(name, f"the server names every socket {one_name!r}, whoever asked: an event cannot "
                                  "be told to belong to another user")
    evidence = f"{leaks} of {len(received)} agent events arrived on another user's socket"
    if leaks:
        pairs = received[received["foreign"].astype(bool)].groupby(["socket_user", "event_user"]).size()
        evidence += ": " + ", ".join(f"{receiver}'s socket got {n} of {owner}'s" for (receiver, owner), n
                                     in pairs.items()) + " (a cross-user leak)"
    return Check(name, leaks == 0, evidence)


def _status_check(status: pd.DataFrame, recovered: int) -> Check:
    name = "status_after_reconnect"
    if status.empty:
        return inconclusive(name, "no reconnect trial ran (the target's dialect has no status_request, no trial "
                                  "was asked for, or the deadline came first): nothing to judge")
    if (status["answer_type"] == "ack").all():
        return inconclusive(name, f"the target does not know status_request: all {len(status)} were acknowledged "
                                  "as an unknown type")
    evidence = f"{recovered} of {len(status)} reconnects got the thread's state back from status_request"
    failed = status[~status["recovered"].astype(bool)]
    if len(failed):
        answers = [f"trial {r.trial}: " + (f"{r.answer_type} with state {r.state!r}, thread {r.answer_thread_id}"
                                           if r.answer_type else f"no answer ({r.outcome})")
                   for r in failed.itertuples()]
        evidence += "; " + "; ".join(answers)
    return Check(name, recovered == len(status), evidence)


# -- reading a result ------------------------------------------------------------------------

def summary_table(result: ScenarioResult) -> pd.DataFrame:
    """The requested runs counted per arm and phase: complete, out of order, open tool calls, what was lacking."""
    columns = ["arm", "phase", "runs", "complete", "out_of_order", "open_tool_calls", "lacking"]
    runs = result.table("runs")
    if runs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (arm, phase), group in runs.groupby(["arm", "condition"], sort=False):
        lacking = group.loc[~group["complete"].astype(bool), "missing"].value_counts()
        rows.append({"arm": arm, "phase": phase, "runs": len(group), "complete": int(group["complete"].sum()),
                     "out_of_order": int((~group["in_order"].astype(bool)).sum()),
                     "open_tool_calls": int((~group["tools_closed"].astype(bool)).sum()),
                     "lacking": "; ".join(f"{n} x {missing}" for missing, n in lacking.items())})
    return pd.DataFrame(rows, columns=columns)


def interpret(result: ScenarioResult) -> str:
    """What this run says about event emission, in a few sentences that follow the numbers."""
    if result.error:
        return f"The run could not be made ({result.error}), so nothing can be said about the agent events."
    lines = []
    for arm in ("faulty", "fixed", "live"):
        if arm in result.arm_metrics:
            lines.append(_interpret_arm(arm, result.arm_metrics[arm], result.params))
    if result.mode == "reference":
        faulty = [c for c in result.arm_checks.get("faulty", []) if c.failed]
        fixed = [c for c in result.arm_checks.get("fixed", []) if c.failed]
        if faulty and not fixed:
            lines.append(f"With emission fixed, every check passes ({', '.join(c.name for c in faulty)} failed with "
                         f"the `{result.params.get('reference_events_mode')}` fault): the remediation is to emit "
                         "every event of a run, in order, through the requesting user's connection.")
    return "\n\n".join(lines)


def _interpret_arm(arm: str, m: dict[str, Any], params: dict[str, Any]) -> str:
    who = {"faulty": f"With the `{params.get('reference_events_mode')}` fault injected", "fixed": "With the fix",
           "live": "Against the target"}[arm]
    runs = m.get("runs") or 0
    if not runs:
        return (f"{who}, no agent run could be requested: {m.get('connections_not_ready', 0)} of "
                f"{m.get('attempts', 0)} connections never became ready. Look at the connection itself first.")
    found = []
    stopped = m.get("missing_agent_completed", 0) - m.get("missing_agent_started", 0)
    tools = max(m.get("missing_tool_executing", 0), m.get("missing_tool_completed", 0))
    if m.get("runs_without_events"):
        found.append(f"{m['runs_without_events']} of {runs} requests showed no agent event at all")
    if m.get("agent_error_runs"):
        found.append(f"{m['agent_error_runs']} of {runs} runs ended with agent_error: the agent failed, which "
                     "is a failing service rather than lost events (see the service-dependencies notebook)")
    if stopped > m.get("agent_error_runs", 0):
        found.append(f"{stopped - m.get('agent_error_runs', 0)} of {runs} runs showed agent_started and then "
                     "never agent_completed on the requester's socket: the user never sees the answer arrive")
    elif tools:
        found.append(f"{tools} of {runs} runs lacked tool events: the tools ran without telling the user "
                     "(emission is skipped around tool execution), so the chat shows no progress while they work")
    if m.get("out_of_order_runs"):
        found.append(f"{m['out_of_order_runs']} of {runs} runs broke the order (an event after agent_completed, "
                     "or a second start or completion): a client that closes a run on agent_completed drops what "
                     "follows")
    if m.get("runs_with_open_tool_calls"):
        found.append(f"{m['runs_with_open_tool_calls']} runs left a tool call open: the chat shows a tool "
                     "working forever")
    if m.get("cross_user_events"):
        found.append(f"**{m['cross_user_events']} events reached another user's socket**: events are routed by "
                     "something other than the requesting user's connection (a shared or global emitter). That "
                     "is a cross-user data leak, a security defect: escalate it before anything else")
    elif stopped > m.get("agent_error_runs", 0):
        found.append("no other user's socket received them either: the events after agent_started are dropped, "
                     "or sent to a user who was not connected (misrouting shows as a leak only when others are)")
    if m.get("runs_not_requested"):
        found.append(f"{m['runs_not_requested']} planned runs were never requested (deadline_s reached, or "
                     "connections not ready): the counts above cover the runs that were")
    if m.get("status_recovered", 0) < m.get("reconnect_trials", 0):
        found.append(f"only {m['status_recovered']} of {m['reconnect_trials']} reconnects got the thread's state "
                     "back: a user who reconnects mid-run cannot learn what happened to it")
    if not found:
        return (f"{who}, all {runs} runs showed the five events in order with every tool call closed, no event "
                f"reached another user's socket, and {m.get('status_recovered', 0)} of "
                f"{m.get('reconnect_trials', 0)} reconnects got the run's state back. Events followed each other "
                f"{m.get('event_latency_p50_ms')} ms apart (median); agent_started came "
                f"{m.get('time_to_first_event_p50_ms')} ms after the request.")
    return f"{who}, " + "; ".join(found) + "."


async def run(params: Params, progress: Any = None) -> ScenarioResult:
    """Drive and judge the scenario (live or reference mode)."""
    return await run_scenario(sys.modules[__name__], params, progress=progress)
