"""Agent-event sequences, run by run, judged by the rules of PROTOCOL.md section 6. No I/O.

A healthy agent run shows the requesting user, on that user's socket,
`agent_started` (first, once), `agent_thinking`, `tool_executing` and a
`tool_completed` of the same tool, then `agent_completed` (last, once), all
with one `run_id` and the user's `user_id`. Root cause 4 of section 9 breaks
that: events skipped, out of order, or delivered to another user's socket
(a cross-user leak, a security defect).

Everything here reads the `frames` table alone plus the requesting user of
each attempt (its socket's user), so the same functions judge live runs,
reference runs and traces imported from elsewhere (browser HAR files). Frames
are decoded by `protocol.message_from_row` and read through `protocol.field`,
so every layout (enveloped, flat, mixed, event names wrapped in `data.type`)
and both timestamp forms are accepted.

Runs are identified by `run_id`. When a dialect omits it, each
`agent_started` opens a new run and later events without a `run_id` join the
latest run opened on that socket.

- `validate_run(events, user_id)`: one run's `RunReport`;
- `run_events(frames, attempts)`: one row per agent event received, with its run;
- `run_table(frames, attempts)`: one row per run observed on each socket;
- `transitions(frames, attempts)`: the time between consecutive events of a run;
- `delivery_matrix(frames, attempts)`: whose socket received whose events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from gp_lib import protocol
from gp_lib.protocol import (AGENT_COMPLETED, AGENT_ERROR, AGENT_STARTED, EVENT_NAMES, RUN_EVENT_TYPES,
                             TOOL_COMPLETED, TOOL_EXECUTING)

#: Frames that ask for an agent run (their send time starts a run's clock).
REQUEST_TYPES = protocol.AGENT_REQUEST_ALIASES | {"message"}
#: Column label for events that carry no user_id, in the delivery matrix.
NO_USER = "(none)"

EVENT_COLUMNS = ["attempt_id", "socket_user", "run_key", "run_id", "seq", "t_ms", "type", "event_user",
                 "thread_id", "tool_name", "foreign"]
RUN_COLUMNS = ["attempt_id", "socket_user", "run_key", "run_id", "owner", "thread_id", "t_request_ms", "t_first_ms",
               "t_last_ms", "events", "sequence", *EVENT_NAMES, AGENT_ERROR, "missing", "complete", "in_order",
               "tool_calls", "tools_closed", "foreign", "foreign_events", "ending", "problems", "notes"]
TRANSITION_COLUMNS = ["attempt_id", "socket_user", "run_key", "foreign", "from_type", "to_type", "transition",
                      "gap_ms"]


# -- one run ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunReport:
    """One run as one socket saw it, judged against PROTOCOL.md section 6.

    Attributes:
        run_id: the run's id (None when the events carry none).
        user_id: the requesting user: whose socket received these events.
        owner: the user the events say they belong to (most frequent user_id; None when none says).
        thread_id: the run's thread, when the events name one.
        types: event types in the order received.
        missing: which of the five events never came.
        problems: rule violations, in plain words.
        notes: facts that are not violations: how a run that did not simply complete ended.
        in_order: agent_started first and once, agent_completed last and once, nothing after it.
        tool_calls: how many tool_executing events there were.
        tools_closed: every tool_executing closed by a later tool_completed of the same tool, and the reverse.
        foreign_events: events carrying another user's user_id (a cross-user leak).
        foreign_users: those other users.
        ending: completed, fallback, agent_error or unfinished.
        server_span_ms: first to last event by the server's own timestamps (None without them).
        server_user: who the server said the socket's user is (its readiness marker), when it said;
            events in that name are the socket's own, even where it differs from `user_id`.
    """

    run_id: str | None
    user_id: str | None
    owner: str | None
    thread_id: str | None
    types: tuple[str, ...]
    missing: tuple[str, ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    in_order: bool
    tool_calls: int
    tools_closed: bool
    foreign_events: int
    foreign_users: tuple[str, ...]
    ending: str
    server_span_ms: float | None
    server_user: str | None = None

    @property
    def complete(self) -> bool:
        """All five events came."""
        return not self.missing

    @property
    def clean(self) -> bool:
        """All five events came and no rule was broken."""
        return self.complete and not self.problems

    @property
    def foreign(self) -> bool:
        """Another user's run, seen on this socket."""
        return self.owner is not None and self.user_id is not None and not is_own(self.owner, self.user_id,
                                                                                  self.server_user)


def is_own(event_user: str | None, socket_user: str | None, server_user: str | None = None) -> bool:
    """Whether an event's user_id is the socket's user: the one asked for, or the one the server named
    (ids a server masks, `demo-use...`, are not another user's)."""
    return event_user is None or socket_user is None or event_user == socket_user \
        or protocol.same_user(event_user, socket_user) or protocol.same_user(event_user, server_user)


def validate_run(events: Iterable[Mapping[str, Any]], user_id: Any, server_user: Any = None) -> RunReport:
    """Judge one run: the decoded events received, in receive order, by `user_id`'s socket
    (`server_user`: the name the server gave that socket, if any).

    Frames that are not agent events (pongs, acks, readiness) are ignored.
    """
    user_id, server_user = _text(user_id), _text(server_user)
    events = [e for e in events if isinstance(e, Mapping) and e.get("type") in RUN_EVENT_TYPES]
    types = tuple(e["type"] for e in events)
    counts = Counter(types)
    problems: list[str] = []
    notes: list[str] = []

    order = _order_problems(types, counts)
    problems += order
    tool_calls, tool_problems = _tool_problems(events)
    problems += tool_problems

    run_ids = [r for r in dict.fromkeys(_text(protocol.field(e, "run_id")) for e in events) if r is not None]
    if len(run_ids) > 1:
        problems.append(f"events carry {len(run_ids)} run_ids ({', '.join(run_ids)}): need one per run")

    users = [_text(protocol.field(e, "user_id")) for e in events]
    named = [u for u in users if u is not None]
    owner = Counter(named).most_common(1)[0][0] if named else None
    foreign = [u for u in named if not is_own(u, user_id, server_user)]
    foreign_users = tuple(dict.fromkeys(foreign))
    if foreign:
        problems.append(f"{len(foreign)} of {len(events)} events carry another user's user_id "
                        f"({', '.join(foreign_users)}): a cross-user leak")

    ending = _ending(events)
    if ending == "agent_error":
        notes.append(f"ended with agent_error: {protocol.message_text(_last_of(events, AGENT_ERROR)) or 'no message'}")
    elif ending == "fallback":
        notes.append(f"completed through a fallback: {protocol.message_text(_last_of(events, AGENT_COMPLETED))}")
    elif ending == "unfinished":
        notes.append("no agent_completed or agent_error: the run never ended on this socket")

    threads = [t for t in (_text(protocol.field(e, "thread_id")) for e in events) if t is not None]
    return RunReport(
        run_id=run_ids[0] if run_ids else None, user_id=user_id, owner=owner,
        thread_id=threads[0] if threads else None, types=types,
        missing=tuple(name for name in EVENT_NAMES if not counts[name]),
        problems=tuple(problems), notes=tuple(notes), in_order=not order, tool_calls=tool_calls,
        tools_closed=not tool_problems, foreign_events=len(foreign), foreign_users=foreign_users,
        ending=ending, server_span_ms=_server_span_ms(events), server_user=server_user)


def _order_problems(types: tuple[str, ...], counts: Counter) -> list[str]:
    """agent_started first and once; agent_completed once and last."""
    problems = []
    if counts[AGENT_STARTED] and types[0] != AGENT_STARTED:
        problems.append(f"agent_started is not first: {types[0]} came before it")
    if counts[AGENT_STARTED] > 1:
        problems.append(f"agent_started came {counts[AGENT_STARTED]} times: need exactly one")
    if counts[AGENT_COMPLETED] > 1:
        problems.append(f"agent_completed came {counts[AGENT_COMPLETED]} times: need exactly one")
    if counts[AGENT_COMPLETED]:
        after = types[types.index(AGENT_COMPLETED) + 1:]
        after = tuple(t for t in after if t != AGENT_COMPLETED)
        if after:
            problems.append(f"{len(after)} event{'s' if len(after) > 1 else ''} after agent_completed "
                            f"({', '.join(after)}): agent_completed must be last")
    return problems


def _tool_problems(events: list[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """Pair every tool_executing with a later tool_completed of the same tool_name."""
    open_calls: Counter = Counter()
    unopened: list[str] = []
    calls = 0
    for event in events:
        name = _text(protocol.field(event, "tool_name")) or "an unnamed tool"
        if event["type"] == TOOL_EXECUTING:
            calls += 1
            open_calls[name] += 1
        elif event["type"] == TOOL_COMPLETED:
            if open_calls[name]:
                open_calls[name] -= 1
            else:
                unopened.append(name)
    problems = [f"tool_executing of {name} never closed by a tool_completed"
                + (f" ({n} times)" if n > 1 else "") for name, n in open_calls.items() if n]
    problems += [f"tool_completed of {name} without a tool_executing before it" for name in unopened]
    return calls, problems


def _ending(events: list[Mapping[str, Any]]) -> str:
    terminal = [e for e in events if e["type"] in (AGENT_COMPLETED, AGENT_ERROR)]
    if not terminal:
        return "unfinished"
    if terminal[-1]["type"] == AGENT_ERROR:
        return "agent_error"
    completed = _last_of(events, AGENT_COMPLETED)
    fallback = protocol.is_fallback_completion(dict(completed)) or protocol.field(completed, "fallback") is True
    return "fallback" if fallback else "completed"


def _last_of(events: list[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    return next(e for e in reversed(events) if e["type"] == kind)


def _server_span_ms(events: list[Mapping[str, Any]]) -> float | None:
    stamps = [t for t in (protocol.event_time(dict(e)) for e in events) if t is not None]
    return round((max(stamps) - min(stamps)) * 1000.0, 3) if len(stamps) > 1 else None


# -- many runs, from the frames table ----------------------------------------------------------

def socket_users(attempts: pd.DataFrame | Mapping[str, Any]) -> dict[str, str | None]:
    """`{attempt_id: requesting user}` from the attempts table (or such a mapping)."""
    if isinstance(attempts, pd.DataFrame):
        if attempts.empty or "attempt_id" not in attempts:
            return {}
        users = attempts["user_id"] if "user_id" in attempts else [None] * len(attempts)
        return {str(a): _text(u) for a, u in zip(attempts["attempt_id"], users)}
    return {str(a): _text(u) for a, u in attempts.items()}


def server_users(attempts: pd.DataFrame | Mapping[str, Any]) -> dict[str, str | None]:
    """`{attempt_id: the user the server named in its readiness marker}`, where the table says."""
    if not isinstance(attempts, pd.DataFrame) or "server_user" not in attempts or "attempt_id" not in attempts:
        return {}
    return {str(a): _text(u) for a, u in zip(attempts["attempt_id"], attempts["server_user"])}


@dataclass
class _Run:
    attempt_id: str
    socket_user: str | None
    server_user: str | None
    key: str
    events: list[tuple[float, dict[str, Any]]]
    t_request_ms: float | None


def _runs(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> Iterator[_Run]:
    """The runs of every socket, in receive order: grouped by run_id, else one per agent_started."""
    if frames is None or frames.empty:
        return
    users, named = socket_users(attempts), server_users(attempts)
    rows = frames.assign(_order=range(len(frames)))
    rows["_t"] = pd.to_numeric(rows["t_ms"], errors="coerce") if "t_ms" in rows else float("nan")
    rows = rows.sort_values(["attempt_id", "_t", "_order"], kind="stable", na_position="last")
    for attempt_id, own in rows.groupby("attempt_id", sort=False):
        requests = [t for t, d, kind in zip(own["_t"], own["direction"], own["type"])
                    if d == "sent" and kind in REQUEST_TYPES and pd.notna(t)]
        runs: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        current: str | None = None
        anonymous = 0
        for record in own[own["direction"] == "received"].to_dict(orient="records"):
            message = protocol.message_from_row(record)
            kind = message.get("type")
            if kind not in RUN_EVENT_TYPES:
                continue
            run_id = _text(protocol.field(message, "run_id"))
            if run_id is None and (kind == AGENT_STARTED or current is None):
                anonymous += 1
                key = f"run {anonymous} without run_id"
            else:
                key = run_id if run_id is not None else current
            if kind == AGENT_STARTED or current is None:
                current = key
            runs.setdefault(key, []).append((record["_t"], message))
        for key, events in runs.items():
            first = events[0][0]
            before = [t for t in requests if pd.notna(first) and t <= first]
            yield _Run(str(attempt_id), users.get(str(attempt_id)), named.get(str(attempt_id)), key, events,
                       before[-1] if before else None)


def run_events(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """One row per agent event received, with its socket's user and its run (`EVENT_COLUMNS`)."""
    rows = []
    for run in _runs(frames, attempts):
        for seq, (t_ms, message) in enumerate(run.events):
            event_user = _text(protocol.field(message, "user_id"))
            rows.append({"attempt_id": run.attempt_id, "socket_user": run.socket_user, "run_key": run.key,
                         "run_id": _text(protocol.field(message, "run_id")), "seq": seq, "t_ms": t_ms,
                         "type": message["type"], "event_user": event_user,
                         "thread_id": _text(protocol.field(message, "thread_id")),
                         "tool_name": _text(protocol.field(message, "tool_name")),
                         "foreign": not is_own(event_user, run.socket_user, run.server_user)})
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def run_table(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """One row per run observed on each socket, judged by `validate_run` (`RUN_COLUMNS`).

    The five event columns (and `agent_error`) count that type in the run;
    `t_request_ms` is the latest agent request sent on the socket before the
    run's first event (None for another user's run).
    """
    rows = []
    for run in _runs(frames, attempts):
        report = validate_run([m for _, m in run.events], run.socket_user, run.server_user)
        counts = Counter(report.types)
        times = [t for t, _ in run.events]
        rows.append({
            "attempt_id": run.attempt_id, "socket_user": run.socket_user, "run_key": run.key,
            "run_id": report.run_id, "owner": report.owner, "thread_id": report.thread_id,
            "t_request_ms": None if report.foreign else run.t_request_ms,
            "t_first_ms": times[0], "t_last_ms": times[-1], "events": len(report.types),
            "sequence": " > ".join(report.types), **{name: counts[name] for name in (*EVENT_NAMES, AGENT_ERROR)},
            "missing": ", ".join(report.missing), "complete": report.complete, "in_order": report.in_order,
            "tool_calls": report.tool_calls, "tools_closed": report.tools_closed, "foreign": report.foreign,
            "foreign_events": report.foreign_events, "ending": report.ending,
            "problems": "; ".join(report.problems), "notes": "; ".join(report.notes)})
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for name in ("t_request_ms", "t_first_ms", "t_last_ms"):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    return table


def requested_runs(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """The runs each socket asked for: its own runs of `run_table` (other users' left out), plus
    one row with zero events per request that no event answered, since a run skipped entirely
    misses all five."""
    table = run_table(frames, attempts)
    table = table[~table["foreign"].astype(bool)]
    sent = frames[(frames["direction"] == "sent") & frames["type"].isin(REQUEST_TYPES)] if len(frames) else frames
    asked = sent.groupby("attempt_id").size() if len(sent) else pd.Series(dtype=int)
    observed = table.groupby("attempt_id").size()
    users = socket_users(attempts)
    blanks = [{"attempt_id": attempt_id, "socket_user": users.get(attempt_id),
               "run_key": f"request without events {n + 1}", "events": 0, "sequence": "",
               **{name: 0 for name in (*EVENT_NAMES, AGENT_ERROR)},
               "missing": ", ".join(EVENT_NAMES), "complete": False, "in_order": True, "tool_calls": 0,
               "tools_closed": True, "foreign": False, "foreign_events": 0, "ending": "unfinished", "problems": "",
               "notes": "no agent event arrived for this request"}
              for attempt_id, n_asked in asked.items() for n in range(int(n_asked) - int(observed.get(attempt_id, 0)))]
    if blanks:
        table = pd.concat([table, pd.DataFrame(blanks)], ignore_index=True) if len(table) else pd.DataFrame(blanks)
    return table.reindex(columns=RUN_COLUMNS).reset_index(drop=True)


def transitions(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """The receive-time gap between each two consecutive events of a run (`TRANSITION_COLUMNS`)."""
    events = run_events(frames, attempts)
    rows = []
    for (attempt_id, key), run in events.groupby(["attempt_id", "run_key"], sort=False):
        run = run.sort_values("seq")
        foreign = bool(run["foreign"].any())
        pairs = zip(run["type"], run["type"].iloc[1:], run["t_ms"], run["t_ms"].iloc[1:])
        for before, after, t_before, t_after in pairs:
            rows.append({"attempt_id": attempt_id, "socket_user": run["socket_user"].iloc[0], "run_key": key,
                         "foreign": foreign, "from_type": before, "to_type": after,
                         "transition": f"{before} > {after}", "gap_ms": t_after - t_before})
    table = pd.DataFrame(rows, columns=TRANSITION_COLUMNS)
    table["gap_ms"] = pd.to_numeric(table["gap_ms"], errors="coerce")
    return table


def delivery_matrix(frames: pd.DataFrame, attempts: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """Agent events counted by receiving socket's user (rows) and the event's user_id (columns).

    Every socket user is a row and a column, so a user whose events all went
    elsewhere still shows; off-diagonal counts are cross-user leaks. Events
    without a user_id are counted in the column `NO_USER`; events in the name
    the server gave the socket count as its user's.
    """
    users = sorted({u for u in socket_users(attempts).values() if u is not None})
    events = run_events(frames, attempts)
    received = events["socket_user"].fillna(NO_USER)
    owners = events["event_user"].where(events["foreign"].astype(bool) | events["event_user"].isna(),
                                        events["socket_user"]).fillna(NO_USER)
    rows = users + sorted(set(received) - set(users))
    columns = users + sorted(set(owners) - set(users) - {NO_USER}) + ([NO_USER] if (owners == NO_USER).any() else [])
    matrix = pd.crosstab(received, owners).reindex(index=rows, columns=columns, fill_value=0)
    matrix.index.name, matrix.columns.name = "receiving socket's user", "event's user_id"
    return matrix.astype(int)


def _text(value: Any) -> str | None:
    return str(value) if _present(value) else None


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):
        return True
