"""Root cause 2: missing service dependencies (PROTOCOL.md sections 5, 7 and 9).

The root cause: the agent supervisor, the thread service, the LLM or the
database is unavailable, and the backend fails silently (no answer at all, or
`agent_started` then nothing), or closes the socket with 1011 "Service not
ready". The chat looks alive and gives no answer. A correct backend tells the
user the service is temporarily unavailable and to try again, and completes
the run through a fallback.

The traffic, per arm, one connection per request:

1. health probes: HTTP GET `/health` and `/ws/health` on the WebSocket's host
   and port; what each answered (or that nothing did) goes into the
   `health_probes` table, as evidence, never as a failure;
2. with nothing taken down, at once: a healthy baseline `agent_request`;
   `agent_request`s with the test flag `simulate_agent_unavailable`, and with
   `require_llm`; a plain `message` with `simulate_agent_unavailable`. The
   flagged requests only where the dialect has test flags, and the `message`
   only where it answers `message_received` (`applicable`);
3. reference mode only: for each service of `outages`, at the same time as
   the rest, a reference server of its own with the arm's faults has it taken
   down through its admin endpoint, the health probes repeated there, and
   `agent_request`s that need the LLM sent (so every outage touches them).
   One server per outage, so that the outages' silent deadlines overlap
   instead of adding up, and each health answer names only its own outage.

Each request ends in exactly one of `REQUEST_OUTCOMES`, judged on what arrived
within `receive_timeout_s` of sending it:

* ``complete``          an `agent_completed` with a normal answer
* ``graceful``          a user-facing "temporarily unavailable / try again"
                        message, or a fallback completion
* ``silent``            nothing, or `agent_started` (and progress) then nothing
* ``crashed``           the server closed the connection first (e.g. 1011
                        "Service not ready")
* ``unfriendly_error``  an error with no user-facing text

(`not_sent` marks an attempt whose connection never opened; it is not a request.)
The attempts table gets the columns `request`, `flags`, `service_down`,
`request_outcome`, `first_message_ms`, `last_message_ms` and `closed_ms` (ms
after sending; `closed_ms` when the server closed), `agent_started`,
`completed`, `fallback` and `text_shown`; the `user_messages` table lists what
users would have seen, per condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from gp_lib import protocol
from gp_lib.checks import Check, inconclusive
from gp_lib.dialects import Dialect
from gp_lib.health import probe_health
from gp_lib.protocol import AGENT_COMPLETED, AGENT_STARTED, SERVICES
from gp_lib.redact import redact
from gp_lib.scenarios.common import (CommonParams, Observation, ParameterError, ScenarioResult, Target,
                                     bounded_gather, list_field, reference_server, run_scenario,
                                     together)
from gp_lib.trace import AttemptRecord, connection_metrics, percentile

NAME = "service_dependencies"
HEADLINE = ("requests", "silent", "crashed", "graceful", "time_to_first_message_p50_ms")

REQUEST_OUTCOMES = ("complete", "graceful", "silent", "crashed", "unfriendly_error")
#: The outcomes a correct backend never gives.
BAD_OUTCOMES = ("silent", "crashed", "unfriendly_error")
CHECK_NAMES = ("no_silent_failure", "graceful_message_in_every_failure", "agent_started_when_degraded",
               "completion_or_fallback_notice")
NOT_SENT = "not_sent"
#: The condition with nothing down and no test flag.
HEALTHY = "healthy"
#: How the faulty reference arm fails (the reference server's `dependencies` fault modes).
FAULT_MODES = ("silent", "close")
#: The gaps between the six events of a healthy reference run, each `agent_step_ms` long.
FULL_RUN_STEPS = 5
USER_MESSAGE_COLUMNS = ["condition", "request", "outcome", "text_shown", "count"]
PROBE_COLUMNS = ["condition", "path", "url", "status", "answer"]
TEXT_LIMIT = 240
#: Frames that are not an answer to a request.
_NOT_ANSWERS = frozenset({"heartbeat", protocol.HANDSHAKE_RESPONSE})


@dataclass
class Params(CommonParams):
    """The service-dependencies scenario's parameters (plus `CommonParams`)."""

    receive_timeout_s: float = 3.0         # answer deadline: no answer (or agent_started then nothing) by then = silent
    requests_per_condition: int = 3        # requests sent under each condition, each on its own connection
    outages: list = list_field(*SERVICES)  # all down at once, each on its own reference server (reference mode)
    health_probes: bool = True             # probe GET /health and /ws/health on the WebSocket's host and port
    agent_step_ms: float = 20.0            # reference server: delay between two agent events (reference mode)
    reference_fault: str = "silent"        # how the faulty reference arm fails: silent or close (1011)

    def validate(self) -> None:
        super().validate()
        if self.requests_per_condition < 1:
            raise ParameterError(f"requests_per_condition must be at least 1, got {self.requests_per_condition}")
        if not isinstance(self.outages, list) or not all(isinstance(s, str) for s in self.outages):
            raise ParameterError(f"outages must be a list of service names, not {self.outages!r}")
        unknown = [s for s in self.outages if s not in SERVICES]
        if unknown:
            raise ParameterError(f"outages: unknown service {unknown[0]!r} (known: {', '.join(SERVICES)})")
        if len(set(self.outages)) != len(self.outages):
            raise ParameterError(f"outages must not name a service twice, got {self.outages}")
        if self.reference_fault not in FAULT_MODES:
            raise ParameterError(f"reference_fault must be one of {', '.join(FAULT_MODES)}, "
                                 f"not {self.reference_fault!r}")
        if self.target_url is None and self.agent_step_ms * FULL_RUN_STEPS >= self.receive_timeout_s * 1000:
            raise ParameterError(f"agent_step_ms: a healthy reference run ({FULL_RUN_STEPS} steps of "
                                 f"{self.agent_step_ms:g} ms) must finish within receive_timeout_s "
                                 f"({self.receive_timeout_s:g} s), or every request looks silent")


def reference_faults(arm: str, params: Params) -> dict[str, Any]:
    """The same server in both arms; only the faulty one fails on a missing dependency."""
    faults: dict[str, Any] = {"agent_step_ms": params.agent_step_ms}
    if arm == "faulty":
        faults["dependencies"] = params.reference_fault
    return faults


# -- the traffic --------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One kind of request sent under one condition."""

    condition: str
    kind: str                         # agent_request or message
    flags: tuple[str, ...] = ()       # test flags set to true
    service_down: str | None = None   # the service taken down while it is sent (reference mode)


#: Sent with nothing taken down: the healthy baseline, and the test flags of PROTOCOL.md section 5.
NOTHING_DOWN_REQUESTS = (
    Request(HEALTHY, "agent_request"),
    Request("flag_agent_unavailable", "agent_request", ("simulate_agent_unavailable",)),
    Request("flag_require_llm", "agent_request", ("require_llm",)),
    Request("message_agent_unavailable", "message", ("simulate_agent_unavailable",)),
)


def outage_request(service: str) -> Request:
    """What is sent while `service` is down: an agent request that needs every service, the LLM too."""
    return Request(f"{service}_down", "agent_request", ("require_llm",), service_down=service)


def conditions(params: Params, reference: bool) -> list[str]:
    """The conditions in the order they are driven (and plotted)."""
    outages = [outage_request(s).condition for s in params.outages] if reference else []
    return [r.condition for r in NOTHING_DOWN_REQUESTS] + outages


def request_message(request: Request, thread_id: str, dialect: Dialect | None = None) -> dict[str, Any]:
    flags = {flag: True for flag in request.flags}
    if request.kind == "message":
        return {"type": "message", "content": "Continue helping me with the cost analysis", "thread_id": thread_id,
                **flags}
    return (dialect or Dialect()).agent_request_message("Where can my cloud spend drop this month?",
                                                        agent="triage_agent", thread_id=thread_id, **flags)


def applicable(request: Request, dialect: Dialect, reference: bool) -> bool:
    """Whether the target can be asked this: test flags and `message` only where the dialect has them
    (a reference outage is switched on the server, the flag it carries is only for the LLM)."""
    if request.kind == "message" and not dialect.message_received:
        return False
    return dialect.test_flags or not request.flags or (reference and request.service_down is not None)


async def drive(target: Target) -> Observation:
    """Health probes and flagged requests; in reference mode every outage at once, each on a server of its own."""
    params: Params = target.params
    reference = target.server is not None
    asked = [r for r in NOTHING_DOWN_REQUESTS if applicable(r, target.dialect, reference)]
    phases: list[tuple[str | None, list[Request]]] = [(None, asked)]
    if reference:
        phases += [(s, [outage_request(s)]) for s in params.outages]
    sizes = [len(requests) * params.requests_per_condition for _, requests in phases]
    bar = target.bar(sum(sizes), "requests")
    try:  # each phase waits out its own silences, so they overlap: one deadline, not one per outage
        done = await together(*(_phase(target, service, requests, sum(sizes[:n]), bar)
                                for n, (service, requests) in enumerate(phases)))
    finally:
        bar.close()
    records = [record for phase_records, _ in done for record in phase_records]
    probes = [probe for _, phase_probes in done for probe in phase_probes]
    observation = Observation.from_records(target.arm, records)
    observation.tables["user_messages"] = user_messages(observation.attempts,
                                                        conditions(params, target.server is not None))
    observation.tables["health_probes"] = pd.DataFrame(probes, columns=PROBE_COLUMNS)
    return observation


async def _phase(target: Target, service: str | None, requests: list[Request], first: int,
                 bar: Any) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
    """One condition's probes and requests; with `service`, against a reference server that has it down.

    The outage server runs the arm's faults; the service is taken down through its admin endpoint.
    """
    params: Params = target.params
    async with contextlib.AsyncExitStack() as stack:
        url = target.url
        condition = HEALTHY
        if service is not None:
            faults = await asyncio.to_thread(target.server.faults)
            server = await stack.enter_async_context(reference_server(faults, target.dialect, target.server.secret))
            await asyncio.to_thread(server.set_faults, services_down=[service])
            url, condition = server.url, outage_request(service).condition
        probes = await probe_health(url, condition, params.open_timeout_s) if params.health_probes else []
        jobs = [partial(send_request, target, r, first + n, url) for n, r in
                enumerate(r for r in requests for _ in range(params.requests_per_condition))]
        return await bounded_gather(jobs, params.max_concurrency, bar), probes


async def send_request(target: Target, request: Request, number: int, url: str | None = None) -> AttemptRecord:
    """Request `number` of the arm, on its own connection (to `url`, default the target's), answered or
    not within the deadline."""
    params: Params = target.params
    conn = await target.connection(f"service_dep_test_user_{number + 1}", condition=request.condition,
                                   extra={"request": request.kind, "flags": ",".join(request.flags),
                                          "service_down": request.service_down}, url=url or target.url)
    async with conn:
        if conn.is_open:
            await conn.wait_ready()
        thread_id = f"thread_{conn.record.attempt_id}"
        if conn.is_open and await conn.send(request_message(request, thread_id, target.dialect)):
            await conn.receive_until(answer_end(), params.receive_timeout_s)
    record = conn.record
    record.extra.update(request_summary(record, params.receive_timeout_s))
    return record


def answer_end() -> Any:
    """A predicate for the frame that ends an answer: a completion, an agent error, or
    an error before any run started (after agent_started an error may precede a fallback)."""
    started = False

    def ends(message: dict[str, Any]) -> bool:
        nonlocal started
        kind = message.get("type")
        started = started or kind == AGENT_STARTED
        return kind in (AGENT_COMPLETED, protocol.AGENT_ERROR) or (protocol.is_error(message) and not started)

    return ends


# -- judging one request (pure) -----------------------------------------------------------

def classify(messages: list[dict[str, Any]], *, closed: bool) -> str:
    """The request outcome of the answer `messages`; `closed`: the server ended the connection."""
    graceful = any(protocol.is_graceful_text(protocol.message_text(m)) or protocol.is_fallback_completion(m)
                   for m in messages)
    if any(m.get("type") == AGENT_COMPLETED for m in messages):
        return "graceful" if graceful else "complete"
    if closed:
        return "crashed"
    if graceful:
        return "graceful"
    if any(protocol.is_error(m) for m in messages):
        return "unfriendly_error"
    return "silent"


def request_summary(record: AttemptRecord, deadline_s: float) -> dict[str, Any]:
    """The request columns of an attempt, from its frames within `deadline_s` of the request."""
    sent = [f for f in record.frames if f["direction"] == "sent" and f["type"] != protocol.HANDSHAKE_ACK]
    summary: dict[str, Any] = {"request_outcome": NOT_SENT, "first_message_ms": None, "last_message_ms": None,
                               "closed_ms": None, "agent_started": False, "completed": False, "fallback": False,
                               "text_shown": f"[not sent: {record.outcome or record.error or 'no connection'}]"}
    if record.t_open_ms is None:
        return summary
    t_sent = sent[0]["t_ms"] if sent else None
    window_end = (t_sent if t_sent is not None else record.t_open_ms) + deadline_s * 1000.0
    closed = (record.closed_by in ("server", "none") and record.t_close_ms is not None
              and record.t_close_ms <= window_end)
    if t_sent is None:
        if not closed:
            return summary
        summary.update(request_outcome="crashed", text_shown=_shown([], "crashed", record, deadline_s))
        return summary
    answers = []
    for row in record.frames:
        if row["direction"] != "received" or not t_sent <= row["t_ms"] <= window_end:
            continue
        message = protocol.message_from_row(row)
        if row["type"] not in _NOT_ANSWERS and not protocol.is_ready_marker(message):
            answers.append((row["t_ms"], message))
    messages = [m for _, m in answers]
    outcome = classify(messages, closed=closed)
    summary.update(
        request_outcome=outcome,
        first_message_ms=round(answers[0][0] - t_sent, 3) if answers else None,
        last_message_ms=round(answers[-1][0] - t_sent, 3) if answers else None,
        closed_ms=round(record.t_close_ms - t_sent, 3) if closed else None,
        agent_started=any(m.get("type") == AGENT_STARTED for m in messages),
        completed=any(m.get("type") == AGENT_COMPLETED for m in messages),
        fallback=any(protocol.is_fallback_completion(m) for m in messages),
        text_shown=_shown(messages, outcome, record, deadline_s))
    return summary


def display_text(message: dict[str, Any]) -> str:
    """The one text a chat window would show for a frame: the answer of a completion, an error's message."""
    names = (("result", "final_response", "message", "content", "text") if message.get("type") == AGENT_COMPLETED
             else ("message", "error_message", "content", "text", "reason"))
    for name in names:
        value = protocol.field(message, name)
        if isinstance(value, dict):
            value = next((value[k] for k in ("message", "text", "summary", "answer") if isinstance(value.get(k), str)),
                         None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _shown(messages: list[dict[str, Any]], outcome: str, record: AttemptRecord, deadline_s: float) -> str:
    """What the user saw: the texts of errors and completions, then how the answer ended when it did not."""
    texts = [display_text(m) for m in messages if protocol.is_error(m) or m.get("type") == AGENT_COMPLETED]
    parts = list(dict.fromkeys(t for t in texts if t))
    if outcome == "crashed":
        reason = f": {record.close_reason}" if record.close_reason else ""
        parts.append(f"[connection closed {record.close_code}{reason}]")
    elif outcome == "silent":
        seen = list(dict.fromkeys(str(m.get("type")) for m in messages))
        parts.append(f"[{', '.join(seen)}, then nothing for {deadline_s:g} s]" if seen
                     else f"[nothing for {deadline_s:g} s]")
    text = redact(" / ".join(parts)) or ""
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT - 1] + "…"


def user_messages(attempts: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """What users would have seen: one row per condition, request, outcome and text, with how often."""
    if not len(attempts) or "request_outcome" not in attempts:
        return pd.DataFrame(columns=USER_MESSAGE_COLUMNS)
    labels = attempts.apply(lambda r: f"{r['request']} ({r['flags']})" if r["flags"] else r["request"], axis=1)
    table = (attempts.assign(request=labels, outcome=attempts["request_outcome"])
             .groupby(["condition", "request", "outcome", "text_shown"], sort=False).size()
             .rename("count").reset_index())
    rank = {name: i for i, name in enumerate(order or [])}
    table["_rank"] = table["condition"].map(lambda c: rank.get(c, len(rank)))
    return table.sort_values("_rank", kind="stable")[USER_MESSAGE_COLUMNS].reset_index(drop=True)


def display_table(result: ScenarioResult, name: str) -> pd.DataFrame:
    """A scenario table of every arm (e.g. `user_messages`) with its arm column first."""
    table = result.table(name)
    return table[["arm", *[c for c in table.columns if c != "arm"]]] if "arm" in table else table


def health_table(result: ScenarioResult) -> pd.DataFrame:
    """The health probes of every arm, compact: a row per arm and condition, a column per route."""
    probes = result.table("health_probes")
    if probes.empty:
        return probes
    answers = [answer if pd.isna(status) else f"{int(status)} {answer}"
               for status, answer in zip(probes["status"], probes["answer"])]
    table = (probes.assign(answer=answers)
             .pivot_table(index=["arm", "condition"], columns="path", values="answer", aggfunc="first", sort=False)
             .reset_index())
    return table.rename_axis(columns=None)


# -- judging (pure) ---------------------------------------------------------------------------

def requests_of(attempts: pd.DataFrame) -> pd.DataFrame:
    """The attempts that carried a request (or were closed before they could)."""
    if not len(attempts) or "request_outcome" not in attempts:
        return pd.DataFrame(columns=["condition", "request", "request_outcome"])
    return attempts[attempts["request_outcome"] != NOT_SENT]


def _by_condition(rows: pd.DataFrame) -> str:
    counts = rows["condition"].value_counts(sort=False)
    return ", ".join(f"{condition} ({n})" for condition, n in counts.items())


def _outcome_counts(rows: pd.DataFrame) -> str:
    counts = rows["request_outcome"].value_counts()
    return ", ".join(f"{outcome} {int(counts[outcome])}" for outcome in REQUEST_OUTCOMES if outcome in counts)


def evaluate(observation: Observation, params: Params) -> tuple[list[Check], dict[str, Any]]:
    """Checks and metrics from the attempts and health tables only."""
    attempts = observation.attempts
    rows = requests_of(attempts)
    unsent = len(attempts) - len(rows)
    deadline = params.receive_timeout_s
    if not len(rows):
        why = "no request was sent: " + (
            f"{unsent} attempts could not connect "
            f"({', '.join(f'{o} {n}' for o, n in attempts['outcome'].value_counts().items())})"
            if unsent else "no attempt was made")
        checks = [inconclusive(name, why) for name in CHECK_NAMES]
    else:
        checks = [_no_silent_failure(rows, deadline), _graceful_in_every_failure(rows),
                  _agent_started_when_degraded(rows), _completion_or_fallback(rows)]
    return checks, _metrics(attempts, rows, observation.tables.get("health_probes"))


def _no_silent_failure(rows: pd.DataFrame, deadline_s: float) -> Check:
    silent = rows[rows["request_outcome"] == "silent"]
    evidence = f"{len(silent)} of {len(rows)} requests got no answer within {deadline_s:g} s"
    if len(silent):
        started = int(silent["agent_started"].astype(bool).sum())
        evidence += (f" ({started} after agent_started, {len(silent) - started} with nothing at all): "
                     f"{_by_condition(silent)}")
    return Check("no_silent_failure", silent.empty, evidence)


def _graceful_in_every_failure(rows: pd.DataFrame) -> Check:
    failures = rows[rows["request_outcome"] != "complete"]
    if failures.empty:
        return inconclusive("graceful_message_in_every_failure",
                            f"no failure to judge: all {len(rows)} requests completed normally (no outage could be "
                            "made, or the target ignores the test flags)")
    graceless = failures[failures["request_outcome"] != "graceful"]
    evidence = (f"{len(failures) - len(graceless)} of {len(failures)} failure cases showed a user-facing "
                f"'temporarily unavailable / try again' message (need 100%)")
    if len(graceless):
        evidence += f"; the others: {_outcome_counts(graceless)}, in {_by_condition(graceless)}"
    return Check("graceful_message_in_every_failure", graceless.empty, evidence)


def _agent_started_when_degraded(rows: pd.DataFrame) -> Check:
    degraded = rows[(rows["request"] == "agent_request") & (rows["request_outcome"] != "complete")]
    if degraded.empty:
        return inconclusive("agent_started_when_degraded", "no degraded agent request to judge: every one completed")
    missing = degraded[~degraded["agent_started"].astype(bool)]
    evidence = f"{len(degraded) - len(missing)} of {len(degraded)} degraded agent requests got agent_started"
    if len(missing):
        evidence += f"; without it: {_outcome_counts(missing)}, in {_by_condition(missing)}"
    return Check("agent_started_when_degraded", missing.empty, evidence)


def _completion_or_fallback(rows: pd.DataFrame) -> Check:
    agent = rows[rows["request"] == "agent_request"]
    if agent.empty:
        return inconclusive("completion_or_fallback_notice", "no agent request to judge")
    done = agent[agent["completed"].astype(bool)]
    missing = agent[~agent["completed"].astype(bool)]
    fallback = int(done["fallback"].astype(bool).sum())
    evidence = (f"{len(done)} of {len(agent)} agent requests ended with agent_completed "
                f"({fallback} of them a fallback notice)")
    if len(missing):
        evidence += f"; never completed: {_outcome_counts(missing)}, in {_by_condition(missing)}"
    return Check("completion_or_fallback_notice", missing.empty, evidence)


def _metrics(attempts: pd.DataFrame, rows: pd.DataFrame, probes: pd.DataFrame | None) -> dict[str, Any]:
    outcomes = rows["request_outcome"].value_counts()
    metrics: dict[str, Any] = {"requests": len(rows), NOT_SENT: len(attempts) - len(rows)}
    metrics.update({outcome: int(outcomes.get(outcome, 0)) for outcome in REQUEST_OUTCOMES})
    metrics["failure_cases"] = int((rows["request_outcome"] != "complete").sum())
    metrics["fallback_completions"] = int(rows["fallback"].astype(bool).sum()) if len(rows) else 0
    metrics["closed_1011"] = int((pd.to_numeric(rows.get("close_code"), errors="coerce") == 1011).sum()) \
        if len(rows) else 0
    for name, column in (("time_to_first_message", "first_message_ms"), ("time_to_last_message", "last_message_ms")):
        source = rows[column] if len(rows) else pd.Series(dtype=float)
        metrics[f"{name}_p50_ms"] = percentile(source, 0.5)
        metrics[f"{name}_p95_ms"] = percentile(source, 0.95)
    metrics.update(connection_metrics(attempts))
    probes = probes if probes is not None else pd.DataFrame(columns=PROBE_COLUMNS)
    metrics["health_probes"] = len(probes)
    metrics["health_probes_answered"] = int(probes["status"].notna().sum()) if len(probes) else 0
    return metrics


# -- interpretation ---------------------------------------------------------------------------

def interpret(result: ScenarioResult) -> str:
    """A short reading of the run, arm by arm, and what it means."""
    if result.error:
        return f"The run could not be made: {result.error}"
    deadline = result.params.get("receive_timeout_s")
    lines = []
    counts: dict[str, dict[str, int]] = {}
    for arm in sorted(result.observations, key=lambda a: {"faulty": 0, "fixed": 1}.get(a, 2)):
        observation = result.observations[arm]
        rows = requests_of(observation.attempts)
        counts[arm] = {o: int((rows["request_outcome"] == o).sum()) for o in REQUEST_OUTCOMES} if len(rows) else {}
        title = {"faulty": "Fault injected", "fixed": "Fixed", "live": "Live target"}.get(arm, arm)
        if not len(rows):
            lines.append(f"- **{title}**: no request could be sent; see the attempts' outcomes.")
            continue
        parts = [f"{counts[arm][o]} {o.replace('_', ' ')}" for o in REQUEST_OUTCOMES if counts[arm][o]]
        sentence = f"- **{title}**: of {len(rows)} requests, " + ", ".join(parts) + "."
        bad = rows[rows["request_outcome"].isin(BAD_OUTCOMES)]
        if len(bad):
            sentence += f" The failures were in {_by_condition(bad)}."
        reasons = bad.loc[bad["request_outcome"] == "crashed", "close_reason"].dropna().unique() \
            if "close_reason" in bad else []
        if len(reasons):
            sentence += " Close reasons: " + ", ".join(f"`{r}`" for r in reasons[:3]) + "."
        lines.append(sentence + _health_sentence(observation, users_told=bad.empty))
    return "\n".join(lines) + "\n\n" + " ".join(_closing_notes(counts, deadline))


def _closing_notes(counts: dict[str, dict[str, int]], deadline: float) -> list[str]:
    """What the outcome counts of the judged arm (faulty or live) mean, and whether the fixed arm is clean."""
    judged = counts.get("faulty", counts.get("live", {}))
    if not judged:
        return ["No request reached the target, so nothing about its dependencies can be said: see the "
                "attempts' outcomes (authentication, reachability)."]
    notes = []
    if judged.get("silent"):
        notes.append(f"**Silence is the worst outcome**: the chat looks alive, the user waits (this run gave up "
                     f"after {deadline:g} s) and no 1011 shows up in any log. The backend must check the services "
                     "a run needs before starting it, or catch the failed call, and answer.")
    if judged.get("crashed"):
        notes.append("**A missing dependency kills the session**: closing with 1011 turns a degraded service into a "
                     "dropped connection that the client must notice and reconnect from.")
    if judged.get("unfriendly_error"):
        notes.append("**Errors reach the user but say nothing they can act on**: the text should say the service "
                     "is temporarily unavailable and to try again.")
    if notes:
        notes.append("The remedy is what the fixed server does: keep the socket open, send `agent_started`, a "
                     "user-facing *temporarily unavailable, please try again* message, then an `agent_completed` "
                     "that says a fallback answered.")
    elif not judged.get("graceful"):
        notes.append("No request failed, not even those flagged `simulate_agent_unavailable`: the target may "
                     "ignore the test flags. Take a dependency down (on staging) to see how it really degrades.")
    else:
        notes.append("Every failure case told the user the service was temporarily unavailable, with no silence "
                     "and no dropped connection: degradation is graceful.")
    fixed_bad = sum(counts.get("fixed", {}).get(o, 0) for o in BAD_OUTCOMES)
    if fixed_bad:
        notes.append(f"The fixed arm still had {fixed_bad} bad outcomes: the remediation is not verified; "
                     "check that `receive_timeout_s` leaves room for `agent_step_ms`.")
    return notes


def _health_sentence(observation: Observation, *, users_told: bool) -> str:
    probes = observation.tables.get("health_probes")
    if probes is None or not len(probes):
        return ""
    health = probes[probes["status"].isin([200, 503])]
    if health.empty:
        answers = ", ".join(dict.fromkeys("no answer" if pd.isna(s) else f"HTTP {int(s)}" for s in probes["status"]))
        return f" The health routes gave no health answer ({answers}): the target may serve no HTTP routes."
    during = probes[(probes["path"] == "/ws/health") & (probes["condition"] != HEALTHY)]
    knew = during[during["answer"].astype(str).str.contains("down:")]
    if not len(knew):
        return ""
    sentence = (f" `/ws/health` named the service that was down in {len(knew)} of {len(during)} outages "
                f"(e.g. `{knew.iloc[0]['answer']}`)")
    return sentence + ("." if users_told else ": monitoring could see what users were not told.")


async def run(params: Params, progress: Any = None) -> ScenarioResult:
    """Drive and judge this scenario (live or reference mode)."""
    return await run_scenario(sys.modules[__name__], params, progress=progress)
