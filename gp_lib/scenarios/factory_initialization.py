"""Factory initialization failures: the connection-manager factory cannot build a connection.

Root cause (PROTOCOL.md section 9): during per-connection setup the server
builds a connection manager through a factory; when the factory rejects its
configuration (or the per-user context) it raises, and the connection closes
1011 with a reason naming the factory or initialization, before or instead
of the readiness marker. Unlike the handshake race this does not depend on
when the client sends: waiting for readiness does not help, because
readiness never comes. `system_health_check` reports `factory_status: "error"`.

The traffic, per arm:

1. health: `health_checks` connections send `system_health_check` right after
   the upgrade and read `system_status` (`factory_status`, `services`, `errors`);
2. fresh connections: `connections` users connect at once, each sending an
   agent request either right after the upgrade (`send_at_once`) or after the
   readiness marker (`send_after_ready`), alternately; each records its
   connection id (from the marker) and every message it sees;
3. recovery: in reference mode the server process is started with the faulty
   factory configuration, then restarted with the arm's configuration (still
   faulty in the faulty arm, fixed in the fixed arm); from the moment each
   process starts, the client connects, retrying refused connections with a
   bounded back-off, and measures the time to the first readiness. In live
   mode: connect once, wait `reconnect_wait_s`, reconnect until ready or the
   deadline, and compare;
4. in reference mode, the factory's own validation of the test plan's
   configurations, as a table (it documents what the factory rejects).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, AsyncIterator, Callable

import pandas as pd

from gp_lib import events, protocol
from gp_lib.checks import Check, inconclusive
from gp_lib.redact import redact_value
from gp_lib.scenarios.common import (CommonParams, Observation, ParameterError, ScenarioResult, Target,
                                     bounded_gather, elapsed_ms, outcome_counts, run_scenario)
from gp_lib.trace import AttemptRecord, connection_metrics

NAME = "factory_initialization"
HEADLINE = ("connections", "ready", "factory_closes", "health_factory_errors", "restart_time_to_ready_ms")

# -- conditions (the `condition` column of the attempts table) ---------------------------------

HEALTH = "health"                      # sent system_health_check right after the upgrade
SEND_AT_ONCE = "send_at_once"          # fresh connection, agent request right after the upgrade
SEND_AFTER_READY = "send_after_ready"  # fresh connection, agent request after the readiness marker
FAULTY_START = "faulty_start"          # reference: the process started with the faulty configuration (a control)
RESTARTED = "restarted"                # reference: the process restarted with the arm's configuration
FIRST_CONNECT = "first_connect"        # live: the connection before the pause
RECONNECT = "reconnect"                # live: the connections after the pause
BATCH = (SEND_AT_ONCE, SEND_AFTER_READY)
RECOVERY = (RESTARTED, RECONNECT)

#: Words that make a close reason a factory failure (lower case; "initializ" covers both spellings).
FACTORY_WORDS = ("factory", "initializ")
#: The configurations of the test plan's factory unit test, then a valid one.
TEST_PLAN_CONFIGS: tuple[dict[str, Any], ...] = (
    {},
    {"websocket_host": ""},
    {"websocket_port": "invalid"},
    {"max_connections": -1},
    {"auth_required": "not_boolean"},
    {"websocket_host": "localhost", "websocket_port": 8000, "max_connections": 1000, "auth_required": True},
)
VALID_CONFIG = TEST_PLAN_CONFIGS[-1]
HEALTH_COLUMNS = ("attempt_id", "user_id", "answered", "unknown_type", "factory_status", "services", "errors")
PROCESS_COLUMNS = ("phase", "faults", "started", "listening_ms", "error")
AGENT_MESSAGE = "Which of my cloud resources cost the most?"


@dataclass
class Params(CommonParams):
    """Parameters of the factory initialization scenario."""

    health_checks: int = 3                 # connections that send system_health_check right after the upgrade
    connections: int = 20                  # fresh connections, one user each, alternately sending at once / after ready
    early_send_ms: float = 0.0             # when the "send at once" connections send, in ms after the upgrade
    recovery_deadline_s: float = 5.0       # how long after a (re)start or reconnect to wait for the first readiness
    reconnect_wait_s: float = 1.0          # live mode: pause between the first connection and the reconnect
    retry_backoff_ms: float = 10.0         # first pause between failed recovery attempts; doubles each time
    retry_backoff_max_ms: float = 200.0    # ceiling of that pause
    max_recovery_attempts: int = 40        # connection attempts per (re)start or reconnect, at most
    reference_setup_ms: float = 15.0       # reference server: per-connection setup time, ms (reference mode only)
    # reference mode: the invalid settings merged onto the faulty arm's factory configuration
    reference_factory_config: dict = field(default_factory=lambda: {"max_connections": -1})

    def validate(self) -> None:
        super().validate()
        for name in ("health_checks", "connections", "max_recovery_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not self.recovery_deadline_s > 0:
            raise ParameterError(f"recovery_deadline_s must be greater than zero, got {self.recovery_deadline_s}")
        if not self.retry_backoff_ms > 0:
            raise ParameterError(f"retry_backoff_ms must be greater than zero, got {self.retry_backoff_ms}")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ParameterError(f"retry_backoff_max_ms ({self.retry_backoff_max_ms}) must not be less than "
                                 f"retry_backoff_ms ({self.retry_backoff_ms})")
        if self.reference_setup_ms > 60_000:
            raise ParameterError(f"reference_setup_ms must be at most 60000 ms, got {self.reference_setup_ms}")
        if not isinstance(self.reference_factory_config, dict):
            raise ParameterError(f"reference_factory_config must be a mapping of factory settings, "
                                 f"not {self.reference_factory_config!r}")
        from gp_lib.refserver import validate_config

        if not validate_config({**VALID_CONFIG, **self.reference_factory_config}):
            raise ParameterError(f"reference_factory_config must make the factory configuration invalid, "
                                 f"but {self.reference_factory_config!r} is valid")


def reference_faults(arm: str, params: Params) -> dict[str, Any]:
    """The factory fault in the faulty arm only; the same configuration and setup time in both."""
    return {"factory": "config" if arm == "faulty" else None,
            "factory_config": dict(params.reference_factory_config),
            "setup_ms": params.reference_setup_ms}


# -- traffic ------------------------------------------------------------------------------------

async def drive(target: Target) -> Observation:
    """Health checks, fresh connections, then restart (reference) or reconnect (live) recovery."""
    p: Params = target.params
    checks = p.health_checks if target.dialect.health_check else 0  # a dialect without it is not asked
    bar = target.bar(checks + p.connections, "health checks and fresh connections")
    health = await bounded_gather([partial(_health_check, target, n) for n in range(checks)], p.max_concurrency, bar)
    fresh = await bounded_gather([partial(_fresh_connection, target, n) for n in range(p.connections)],
                                 p.max_concurrency, bar)
    bar.close()
    tables: dict[str, pd.DataFrame] = {
        "health": pd.DataFrame([row for _, row in health], columns=list(HEALTH_COLUMNS))}
    if target.server is not None:
        recovery, processes = await _restart_recovery(target)
        tables["processes"] = pd.DataFrame(processes, columns=list(PROCESS_COLUMNS))
        tables["config_validation"] = config_validation_table()
    else:
        recovery = await _reconnect_recovery(target)
    records = [record for record, _ in health] + fresh + recovery
    return Observation.from_records(target.arm, records, tables)


async def _health_check(target: Target, n: int) -> tuple[AttemptRecord, dict[str, Any]]:
    """One connection that asks for `system_status` before setup could have finished."""
    p: Params = target.params
    conn = await target.connection(f"factory-health-{n:03d}", condition=HEALTH, extra=_columns())
    status = None
    if await conn.open():
        await conn.send({"type": "system_health_check", "timestamp": time.time()}, at_ms=0)
        answers = await conn.receive_until(_health_answer, p.receive_timeout_s)
        status = answers[-1] if answers and _health_answer(answers[-1]) else None
        await conn.wait_ready()
    await conn.close()
    record = conn.finish()
    record.extra["connection_id"] = _connection_id(record)
    return record, _health_row(record, status)


def _health_answer(message: dict[str, Any]) -> bool:
    """`system_status`, or a sign that the server does not know `system_health_check` (an `ack` of it,
    an error): either ends the wait."""
    return message["type"] == "system_status" or protocol.is_error(message) or (
        message["type"] == "ack" and protocol.field(message, "received_type") == "system_health_check")


def _health_row(record: AttemptRecord, status: dict[str, Any] | None) -> dict[str, Any]:
    unknown = bool(status) and status["type"] != "system_status"
    status = redact_value(status or {}) if not unknown else {}  # the server's own words go into reports
    services = protocol.field(status, "services")
    errors = protocol.field(status, "errors")
    if isinstance(services, dict):
        services = ", ".join(f"{name}: {state}" for name, state in services.items())
    if isinstance(errors, list):
        errors = "; ".join(str(e) for e in errors)
    factory_status = protocol.field(status, "factory_status")
    return {"attempt_id": record.attempt_id, "user_id": record.user_id, "answered": bool(status),
            "unknown_type": unknown,
            "factory_status": None if factory_status is None else str(factory_status),
            "services": None if services is None else str(services),
            "errors": None if errors is None else str(errors)}


async def _fresh_connection(target: Target, n: int) -> AttemptRecord:
    """One user's connection: an agent request at once or after readiness, then its answer."""
    p: Params = target.params
    condition = BATCH[n % 2]
    conn = await target.connection(f"factory-user-{n:03d}", condition=condition, extra=_columns())
    request = target.dialect.agent_request_message(AGENT_MESSAGE, agent="triage")
    if await conn.open():
        if condition == SEND_AT_ONCE:
            sent = await conn.send(request, at_ms=p.early_send_ms)
            ready = await conn.wait_ready()
        else:
            ready = await conn.wait_ready()
            sent = ready and await conn.send(request)
        if ready and sent:
            await conn.receive_until(protocol.ends_run, p.receive_timeout_s)
    await conn.close()
    record = conn.finish()
    record.extra["connection_id"] = _connection_id(record)
    return record


def _columns(t_since_start_ms: float | None = None) -> dict[str, Any]:
    """The scenario's columns of the attempts table, so every row has them."""
    return {"connection_id": None, "t_since_start_ms": t_since_start_ms}


def _connection_id(record: AttemptRecord) -> str | None:
    """The connection id the readiness marker carried, if any."""
    for row in record.frames:
        if row["direction"] != "received":
            continue
        message = protocol.message_from_row(row)
        if protocol.is_ready_marker(message):
            value = protocol.field(message, "connection_id")
            return None if value is None else str(value)
    return None


# -- recovery -------------------------------------------------------------------------------------

async def _restart_recovery(target: Target) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
    """Start a server process with the faulty configuration, then restart it with the arm's own."""
    from gp_lib.refserver import Faults, free_port

    arm_faults = Faults.from_dict(await asyncio.to_thread(target.server.faults))
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    records: list[AttemptRecord] = []
    processes: list[dict[str, Any]] = []
    phases = ((FAULTY_START, arm_faults.merged({"factory": "config"}), _upgraded),
              (RESTARTED, arm_faults, _ready))
    bar = target.bar(len(phases), "restart recovery")
    for phase, faults, done in phases:
        async with _server_process(target, faults, port) as process:
            records += await _attempts(target, url, phase, process.started_at, done)
        processes.append({"phase": phase, "faults": ", ".join(faults.active) or "none",
                          "started": process.error is None, "listening_ms": process.listening_ms,
                          "error": process.error})
        bar.update(1)
    bar.close()
    return records, processes


async def _reconnect_recovery(target: Target) -> list[AttemptRecord]:
    """Live mode: one connection, a pause, then reconnect until ready or the deadline."""
    p: Params = target.params
    records = await _attempts(target, target.url, FIRST_CONNECT, time.perf_counter(), lambda record: True)
    await asyncio.sleep(p.reconnect_wait_s)
    return records + await _attempts(target, target.url, RECONNECT, time.perf_counter(), _ready)


def _upgraded(record: AttemptRecord) -> bool:
    return record.t_open_ms is not None


def _ready(record: AttemptRecord) -> bool:
    return record.t_ready_ms is not None


async def _attempts(target: Target, url: str, phase: str, origin: float,
                    done: Callable[[AttemptRecord], bool]) -> list[AttemptRecord]:
    """Connect to `url` until `done(record)`, the attempt count or the deadline, backing off in between.

    `origin` is the moment the phase began (process start, or the reconnect);
    each row's `t_since_start_ms` is its attempt's start measured from it.
    """
    p: Params = target.params
    deadline = origin + p.recovery_deadline_s
    pause_s = p.retry_backoff_ms / 1000
    records: list[AttemptRecord] = []
    for _ in range(p.max_recovery_attempts):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        conn = await target.connection(f"factory-{phase.replace('_', '-')}", condition=phase,
                                 extra=_columns(elapsed_ms(origin)),
                                 open_timeout_s=min(p.open_timeout_s, remaining), url=url)
        if await conn.open():
            await conn.wait_ready(min(p.ready_timeout_s, max(deadline - time.perf_counter(), 0.0)))
        await conn.close()
        record = conn.finish()
        record.extra["connection_id"] = _connection_id(record)
        records.append(record)
        if done(record):
            break
        await asyncio.sleep(min(pause_s, max(deadline - time.perf_counter(), 0.0)))
        pause_s = min(pause_s * 2, p.retry_backoff_max_ms / 1000)
    return records


class _Process:
    """A reference server process being started in a worker thread: when it was launched, when it
    listened, or why it did not start."""

    def __init__(self) -> None:
        self.started_at = time.perf_counter()
        self.listening_ms: float | None = None
        self.error: str | None = None


@contextlib.asynccontextmanager
async def _server_process(target: Target, faults: Any, port: int) -> AsyncIterator[_Process]:
    """Launch a reference server on `port` without waiting for it, so that connections can be
    tried from the moment the process starts; always stop it on the way out."""
    from gp_lib.refserver import running_server

    stack = contextlib.ExitStack()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    process = _Process()

    def start() -> None:
        stack.enter_context(running_server(faults, target.dialect, secret=target.server.secret, port=port))
        process.listening_ms = round(elapsed_ms(process.started_at), 1)

    starting = pool.submit(start)

    def settle_and_stop() -> None:
        try:
            starting.result()
        except Exception as exc:  # it never listened; running_server has already cleaned up
            process.error = str(exc)[:300]
        stack.close()
        pool.shutdown()

    try:
        yield process
    finally:
        await asyncio.to_thread(settle_and_stop)


# -- the factory's own validation -----------------------------------------------------------------

def config_validation_table() -> pd.DataFrame:
    """The reference factory's verdict on each configuration of the test plan."""
    from gp_lib.refserver import validate_config

    prefix, missing_prefix = "invalid factory configuration: ", "missing key "
    rows = []
    for config in TEST_PLAN_CONFIGS:
        errors = [e[len(prefix):] if e.startswith(prefix) else e for e in validate_config(config)]
        missing = [e[len(missing_prefix):] for e in errors if e.startswith(missing_prefix)]
        problems = [e for e in errors if not e.startswith(missing_prefix)]
        if missing:
            problems.insert(0, f"missing {', '.join(missing)}")
        rows.append({"configuration": json.dumps(config), "valid": not errors, "errors": "; ".join(problems)})
    return pd.DataFrame(rows, columns=["configuration", "valid", "errors"])


# -- judgement (pure) ------------------------------------------------------------------------------

def evaluate(observation: Observation, params: Params) -> tuple[list[Check], dict[str, Any]]:
    """The checks and metrics of one arm, from its tables alone."""
    attempts = observation.attempts
    condition = _col(attempts, "condition")
    judged = attempts[condition != FAULTY_START]
    batch = attempts[condition.isin(BATCH)]
    recovery = attempts[condition.isin(RECOVERY)]
    health = observation.tables.get("health", pd.DataFrame(columns=list(HEALTH_COLUMNS)))
    factory_closed = _factory_closed(judged)
    health_errors = int((_col(health, "factory_status") == "error").sum())
    health_ok = int((_col(health, "answered").fillna(False).astype(bool)
                     & (_col(health, "factory_status") == "ok")).sum())
    batch_ready = batch[_col(batch, "t_ready_ms").notna()]
    ids = _col(batch, "connection_id").dropna()
    tagged, foreign = _messages_seen(batch_ready, observation.frames)
    restart = _recovery_summary(recovery, observation.tables.get("processes"), params)

    checks = [
        _no_factory_errors(judged, factory_closed, health, health_errors),
        _health_reports_ok(health, health_ok, health_errors),
        _recovers(recovery, attempts[condition == FIRST_CONNECT], restart, params),
        _unique_ids(batch, ids),
        _own_messages(batch, batch_ready, tagged, foreign),
    ]
    metrics = {
        "attempts": len(judged),
        "connections": len(batch),
        "ready": len(batch_ready),
        "closed_1011": int((_col(batch, "close_code") == protocol.INTERNAL_ERROR).sum()),
        "closed_before_ready": int((_col(batch, "t_open_ms").notna() & _col(batch, "t_ready_ms").isna()
                                    & (_col(batch, "closed_by") != "client")).sum()),
        "factory_closes": int(factory_closed.sum()),
        **{f"factory_closes_{c}": int(_factory_closed(batch[_col(batch, "condition") == c]).sum()) for c in BATCH},
        "health_checks": len(health),
        "health_factory_errors": health_errors,
        "distinct_connection_ids": int(ids.nunique()),
        "foreign_messages": foreign,
        **connection_metrics(batch),
        "restart_attempts": restart["attempts"],
        "restart_refused": restart["refused"],
        "restart_time_to_ready_ms": restart["time_to_ready_ms"],
    }
    validation = observation.tables.get("config_validation")
    if validation is not None and len(validation):
        metrics["configs_rejected"] = int((~validation["valid"].astype(bool)).sum())
        metrics["configs_checked"] = len(validation)
    return checks, metrics


def _col(table: pd.DataFrame, name: str) -> pd.Series:
    """A column, or an all-missing one when the table lacks it (empty tables, other targets)."""
    if name in table:
        return table[name]
    return pd.Series([None] * len(table), index=table.index, dtype="object")


def _names_factory(reason: Any) -> bool:
    text = reason.lower() if isinstance(reason, str) else ""
    return any(word in text for word in FACTORY_WORDS)


def _factory_closed(rows: pd.DataFrame) -> pd.Series:
    """Rows whose server close reason names the factory or initialization."""
    return _col(rows, "close_reason").map(_names_factory).astype(bool) & (_col(rows, "closed_by") != "client")


def _closes_summary(rows: pd.DataFrame, limit: int = 3) -> str:
    """'26 × 1011 "Factory initialization failed"' for the most frequent server closes."""
    closed = rows[_col(rows, "close_code").notna() & (_col(rows, "closed_by") != "client")]
    if not len(closed):
        return ""
    labels = closed.apply(lambda r: f"{int(r['close_code'])} '{r['close_reason'] or ''}'".replace(" ''", ""), axis=1)
    counts = labels.value_counts().head(limit)
    return ", ".join(f"{n} × {label}" for label, n in counts.items())


def _no_factory_errors(judged: pd.DataFrame, factory_closed: pd.Series, health: pd.DataFrame,
                       health_errors: int) -> Check:
    name = "no_factory_errors"
    closes = int(factory_closed.sum())
    if not len(judged):
        return Check(name, False, "no connection attempts to judge")
    if _col(judged, "t_open_ms").isna().all():  # the factory runs after the upgrade: nothing else can show it
        return Check(name, False, f"none of {len(judged)} connection attempts upgraded ({outcome_counts(judged)}): "
                                  f"no factory failure to judge")
    before_ready = int((factory_closed & _col(judged, "t_ready_ms").isna()).sum())
    evidence = f"{closes} of {len(judged)} connection attempts closed naming the factory or initialization"
    if closes:
        evidence += f" ({_closes_summary(judged[factory_closed])}; {before_ready} before readiness)"
    evidence += f"; {health_errors} of {len(health)} health checks reported factory_status 'error'"
    return Check(name, closes == 0 and health_errors == 0, evidence)


def _health_reports_ok(health: pd.DataFrame, health_ok: int, health_errors: int) -> Check:
    name = "health_reports_ok"
    total = len(health)
    if not total:
        return inconclusive(name, "the target's dialect has no system_health_check message: not asked")
    if _col(health, "unknown_type").astype(object).fillna(False).astype(bool).all():
        return inconclusive(name, f"the target does not know system_health_check: all {total} were acknowledged "
                                  "as an unknown type or answered with an error")
    answered = int(_col(health, "answered").fillna(False).astype(bool).sum())
    evidence = f"{health_ok} of {total} system_health_check answers said factory_status 'ok'"
    if answered < total:
        evidence += f"; {total - answered} got no system_status"
    if health_errors:
        errors = _col(health, "errors")
        first = next((e for e in errors[_col(health, "factory_status") == "error"] if isinstance(e, str) and e), "")
        evidence += f"; {health_errors} said 'error'" + (f" ({first})" if first else "")
    return Check(name, health_ok == total, evidence)


def _recovery_summary(recovery: pd.DataFrame, processes: pd.DataFrame | None, params: Params) -> dict[str, Any]:
    """How the attempts after the restart (or reconnect) went, and when the first reached readiness."""
    process = ""
    restarted = processes[processes["phase"] == RESTARTED] if processes is not None and len(processes) else None
    if restarted is not None and len(restarted):
        row = restarted.iloc[0]
        process = (f"the restarted process listened after {row['listening_ms']:.0f} ms" if row["started"]
                   else f"the restarted process did not start: {row['error']}")
    ready = recovery[_col(recovery, "t_ready_ms").notna()]
    time_to_ready = None
    if len(ready):
        first = ready.iloc[0]
        time_to_ready = round(float(first["t_since_start_ms"]) + float(first["t_ready_ms"]), 1)
    within = time_to_ready is not None and time_to_ready <= params.recovery_deadline_s * 1000
    return {"attempts": len(recovery), "refused": int((_col(recovery, "outcome") == "refused").sum()),
            "time_to_ready_ms": time_to_ready, "recovered": within, "process": process}


def _recovers(recovery: pd.DataFrame, first: pd.DataFrame, restart: dict[str, Any], params: Params) -> Check:
    """Live mode compares the reconnect with the first connection; reference mode judges the restart."""
    name = "recovers_after_restart"
    if not len(recovery):
        return Check(name, False, "no restart or reconnect attempts to judge")
    how = "after the restart" if (recovery["condition"] == RESTARTED).any() else "on reconnect"
    before = ""
    if len(first):
        closes = _closes_summary(first)
        before = f"first connection {first['outcome'].iloc[0]}" + (f" ({closes})" if closes else "") + "; "
    attempts = restart["attempts"]
    if restart["recovered"]:
        evidence = (f"{before}first readiness {restart['time_to_ready_ms']:.0f} ms {how} (deadline "
                    f"{params.recovery_deadline_s:g} s), at attempt {attempts}")
        if restart["refused"]:
            evidence += f", {restart['refused']} refused before"
        if restart["process"]:
            evidence += f"; {restart['process']}"
        return Check(name, True, evidence)
    evidence = f"{before}no readiness within {params.recovery_deadline_s:g} s {how}: {attempts} attempts"
    closes = _closes_summary(recovery)
    if closes:
        evidence += f", {closes}"
    if restart["refused"]:
        evidence += f", {restart['refused']} refused"
    if restart["process"]:
        evidence += f"; {restart['process']}"
    return Check(name, False, evidence)


def _unique_ids(batch: pd.DataFrame, ids: pd.Series) -> Check:
    name = "unique_connection_ids"
    total = len(batch)
    if not total:
        return inconclusive(name, "no fresh connections to judge")
    ready = int(_col(batch, "t_ready_ms").notna().sum())
    if ready and not len(ids):  # PROTOCOL.md section 4 allows markers without one
        return inconclusive(name, f"{ready} of {total} connections reached readiness, but no readiness marker "
                                  "carried a connection id")
    distinct = ids.nunique()
    evidence = f"{len(ids)} of {total} connections got a connection id in their readiness marker, {distinct} distinct"
    not_ready = batch[_col(batch, "t_ready_ms").isna()]
    unnamed = total - len(ids) - len(not_ready)
    if unnamed:
        evidence += f"; {unnamed} reached readiness but their marker carried no connection_id"
    if len(not_ready):
        closes = _closes_summary(not_ready)
        evidence += f"; {len(not_ready)} never reached readiness" + (f" ({closes})" if closes else "")
    return Check(name, len(ids) == total and distinct == total, evidence)


def _messages_seen(ready: pd.DataFrame, frames: pd.DataFrame) -> tuple[int, int]:
    """(messages carrying a user id, those carrying another user's) on the ready connections."""
    if not len(ready) or not len(frames):
        return 0, 0
    owners = dict(zip(ready["attempt_id"], ready["user_id"]))
    named = dict(zip(ready["attempt_id"], _col(ready, "server_user")))
    received = frames[(frames["direction"] == "received") & frames["attempt_id"].isin(owners)
                      & frames["user_id"].notna()]
    foreign = [not events.is_own(user, owners[a], named.get(a)) for a, user in zip(received["attempt_id"],
                                                                                    received["user_id"])]
    return len(received), sum(foreign)


def _own_messages(batch: pd.DataFrame, ready: pd.DataFrame, tagged: int, foreign: int) -> Check:
    name = "own_messages_only"
    if not tagged:
        return inconclusive(name, f"nothing to judge: {len(ready)} of {len(batch)} connections reached readiness "
                                  f"and none received a message carrying a user id")
    return Check(name, foreign == 0, f"{foreign} of {tagged} user-tagged messages on {len(ready)} ready "
                                     f"connections belonged to another user")


# -- reading a result ----------------------------------------------------------------------------

def interpret(result: ScenarioResult) -> str:
    """A short Markdown reading of the result: what the evidence says about the factory."""
    if result.error:
        return f"The run could not be made ({result.error}), so nothing can be said about the factory."
    if result.mode == "reference":
        faulty, fixed = result.arm_metrics.get("faulty", {}), result.arm_metrics.get("fixed", {})
        lines = ["**Faulty arm** (the factory gets an invalid configuration): " + _reading(faulty),
                 "",
                 "**Fixed arm** (valid configuration): " + _reading(fixed)]
        if faulty.get("restart_time_to_ready_ms") is None and fixed.get("restart_time_to_ready_ms") is not None:
            lines += ["", "A restart alone does not help: restarted with the same configuration the service stays "
                          "broken; restarted with a valid one it is ready "
                          f"{fixed['restart_time_to_ready_ms']:.0f} ms after the process starts. Fix the "
                          "configuration, then restart."]
        if "configs_rejected" in fixed:
            lines += ["", f"The factory's own validation rejects {fixed['configs_rejected']} of "
                          f"{fixed['configs_checked']} configurations of the test plan (the validation table under Test execution results): validate the "
                          "configuration at deploy time, before the service takes traffic."]
        return "\n".join(lines)
    return _reading(result.metrics)


def _reading(m: dict[str, Any]) -> str:
    """One arm's metrics in words."""
    total, ready = m.get("connections", 0), m.get("ready", 0)
    at_once, after = m.get("factory_closes_send_at_once", 0), m.get("factory_closes_send_after_ready", 0)
    half_once, half_after = (total + 1) // 2, total // 2
    if m.get("factory_closes") or m.get("health_factory_errors"):
        text = (f"{m.get('factory_closes', 0)} connections closed with a reason naming the factory; among the "
                f"{total} fresh connections {at_once} of {half_once} that sent at once and {after} of {half_after} "
                f"that waited for readiness. ")
        if at_once and after:
            text += ("Waiting for readiness did not help, so this is not the handshake race: the factory fails "
                     "during setup, whatever the client does. ")
        text += f"{m.get('health_factory_errors', 0)} of {m.get('health_checks', 0)} health checks reported " \
                f"factory_status 'error'. "
        text += ("The service did not recover within the deadline." if m.get("restart_time_to_ready_ms") is None
                 else f"It was ready {m['restart_time_to_ready_ms']:.0f} ms after the restart or reconnect.")
        return text
    if m.get("closed_1011"):
        return (f"{m['closed_1011']} of {total} fresh connections closed 1011 without naming the factory, and no "
                "health check reported a factory error: look at the other root causes (race conditions, service "
                "dependencies).")
    if not ready:
        return (f"None of {total} fresh connections reached readiness, yet none closed naming the factory: nothing "
                "here points at the factory; see how the attempts ended (authentication, reachability, silence).")
    text = f"{ready} of {total} fresh connections reached readiness with {m.get('distinct_connection_ids', 0)} " \
           f"distinct connection ids, no health check reported a factory error"
    if m.get("restart_time_to_ready_ms") is not None:
        text += f", and the service was ready {m['restart_time_to_ready_ms']:.0f} ms after a restart or reconnect"
    return text + ": no sign of a factory initialization failure."


def tables_markdown(result: ScenarioResult) -> str:
    """The health answers per arm, and (reference mode) what the factory's validation rejects."""
    from gp_lib.notebook import markdown_table

    parts = []
    health = result.table("health")
    if len(health):
        answers = (health.fillna({"factory_status": "(none)", "services": "", "errors": ""})
                   .groupby(["arm", "answered", "factory_status", "services", "errors"], sort=False)
                   .size().reset_index(name="health checks"))
        parts += ["**system_health_check answers** (identical answers counted once)", "",
                  markdown_table(answers, ["arm", "health checks", "answered", "factory_status", "services",
                                           "errors"])]
    validation = result.observations.get("fixed") or result.observations.get("faulty")
    if validation is not None and "config_validation" in validation.tables:
        table = validation.tables["config_validation"].assign(
            valid=lambda t: t["valid"].map({True: "yes", False: "no"}))
        parts += ["", "**The factory's validation of the test plan's configurations**", "",
                  markdown_table(table, ["configuration", "valid", "errors"])]
    return "\n".join(parts) or "_(no health answers)_"


async def run(params: Params, progress: Callable[..., Any] | None = None) -> ScenarioResult:
    """Drive and judge the scenario in live or reference mode (see the module docstring)."""
    return await run_scenario(sys.modules[__name__], params, progress=progress)
