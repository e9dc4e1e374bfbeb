"""The two tidy tables every run produces, and their JSONL files.

Outcomes: how a connection attempt can end. One list, one place; every module
uses these names.

* ``ok``               the attempt did what it set out to do and the client closed it
* ``closed_1011``      the server closed with 1011 (internal error): the incident class
* ``closed_other``     the server closed with another code, or the connection dropped (1006)
* ``auth_rejected``    HTTP 401/403 instead of the upgrade, or a server close 1008 after an AUTH
                       error frame, naming auth, or unexplained before readiness (a limit is closed_other)
* ``refused``          TCP refused, or the upgrade answered with another HTTP status
* ``redirected``       the upgrade answered with a redirect (3xx), not followed: it would carry the
                       credentials elsewhere (the Location, redacted, is in ``error``)
* ``dns_error``        the host name did not resolve
* ``tls_error``        the TLS handshake failed
* ``open_timeout``     no upgrade within the open timeout
* ``ready_timeout``    upgraded, but no readiness marker within the ready timeout
* ``receive_timeout``  ready, but the awaited answer did not come before its deadline
* ``protocol_error``   the peer broke HTTP or WebSocket framing (the client then fails the
                       connection itself, 1002/1007/1009, e.g. a frame over the size limit),
                       or an invalid URL
* ``client_error``     the client's own limits, not the target's: out of file descriptors
                       (EMFILE), ephemeral ports (EADDRNOTAVAIL), buffers or memory

Tables (DESIGN.md, data model): `attempts`, one row per connection attempt, and
`frames`, one row per frame sent or received or lifecycle mark. Times are
milliseconds from the attempt's start on a monotonic clock. Payloads are
redacted before they reach a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from gp_lib import protocol
from gp_lib.protocol import field as read
from gp_lib.redact import redact

OUTCOMES = (
    "ok", "closed_1011", "closed_other", "auth_rejected", "refused", "redirected", "dns_error",
    "tls_error", "open_timeout", "ready_timeout", "receive_timeout", "protocol_error", "client_error",
)
UNREACHABLE_OUTCOMES = frozenset({"refused", "redirected", "dns_error", "tls_error", "open_timeout"})
#: Outcomes that say nothing about the target: the client ran out of its own resources.
CLIENT_OUTCOMES = frozenset({"client_error"})
#: Characters kept of each server-chosen text field in a table row; longer text is cut with a marker
#: that gives its length (`protocol.cut_text`), so a 1 MB id cannot stall a plot or swell a report.
MAX_FIELD_CHARS = {"user_id": 200, "run_id": 200, "thread_id": 200, "tool_name": 200, "type": 200,
                   "server_user": 200, "close_reason": 300, "subprotocol": 300, "error": 1000,
                   "payload": protocol.MAX_RAW_CHARS}
#: The longest line `load_jsonl` reads (a row holds one frame's evidence and bounded fields; a line
#: of a trace from elsewhere may be longer, but not without limit).
MAX_JSONL_LINE = 4 * protocol.MAX_FRAME_BYTES

ATTEMPT_COLUMNS = (
    "attempt_id", "user_id", "scenario", "arm", "condition", "started_at",
    "t_open_ms", "t_ready_ms", "t_first_send_ms", "t_close_ms",
    "close_code", "close_reason", "closed_by", "handshake_status", "subprotocol",
    "error_type", "error", "outcome", "frames_sent", "frames_received", "invalid_frames", "auth_transport",
    "server_user",
)
FRAME_COLUMNS = (
    "attempt_id", "t_ms", "direction", "type", "run_id", "user_id", "thread_id", "tool_name", "payload",
)
DIRECTIONS = ("sent", "received", "mark")


@dataclass
class AttemptRecord:
    """One attempt's row and its frames, as the client fills them in."""

    attempt_id: str
    user_id: str | None = None
    scenario: str = ""
    arm: str = "live"
    condition: str = ""
    started_at: str = ""
    t_open_ms: float | None = None
    t_ready_ms: float | None = None
    t_first_send_ms: float | None = None
    t_close_ms: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None
    handshake_status: int | None = None
    subprotocol: str | None = None
    error_type: str | None = None
    error: str | None = None
    outcome: str | None = None
    frames_sent: int = 0
    frames_received: int = 0
    invalid_frames: int = 0
    auth_transport: str | None = None     # where the token went: header, subprotocol, both, or none
    server_user: str | None = None        # the user the readiness marker named (a server may mask it or
                                          # give everyone one demo user): who the server thinks this socket is
    extra: dict[str, Any] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The attempts-table row: the fixed columns, then the scenario's extras."""
        values = {name: getattr(self, name) for name in ATTEMPT_COLUMNS}
        for name in ("user_id", "close_reason", "error", "subprotocol", "server_user"):
            values[name] = bounded(name, values[name])
        return {**values, **self.extra}


def frame_row(attempt_id: str, t_ms: float, direction: str, message: dict[str, Any] | None,
              kind: str | None = None, raw: str | None = None) -> dict[str, Any]:
    """A frames-table row from a decoded message (or a lifecycle mark).

    `raw` is the frame's text as it crossed the wire, kept as the payload;
    without it the message is encoded.
    """
    message = message or {}
    payload = raw if raw is not None else (json.dumps(message, default=str, separators=(",", ":")) if message else "")
    return {
        "attempt_id": attempt_id,
        "t_ms": round(t_ms, 3),
        "direction": direction,
        "type": bounded("type", kind or message.get("type")),
        "run_id": bounded("run_id", read(message, "run_id")),
        "user_id": bounded("user_id", read(message, "user_id")),
        "thread_id": bounded("thread_id", read(message, "thread_id")),
        "tool_name": bounded("tool_name", read(message, "tool_name")),
        "payload": bounded("payload", payload),
    }


def bounded(column: str, value: Any) -> str | None:
    """A field the peer chose, as table text: secrets removed (a server may echo anything into an id),
    cut to `MAX_FIELD_CHARS[column]` with a marker that keeps its length."""
    if value is None:
        return None
    text = redact(value if isinstance(value, str) else str(value)) or ""
    return protocol.cut_text(text, MAX_FIELD_CHARS.get(column, protocol.MAX_STRING_CHARS))


# -- tables ------------------------------------------------------------------------

def empty_attempts() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in ATTEMPT_COLUMNS})


def empty_frames() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in FRAME_COLUMNS})


def to_tables(records: Iterable[AttemptRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The attempts and frames tables of a list of records."""
    records = list(records)
    rows = [r.row() for r in records]
    frames = [f for r in records for f in r.frames]
    attempts = pd.DataFrame(rows) if rows else empty_attempts()
    frame_table = pd.DataFrame(frames, columns=list(FRAME_COLUMNS)) if frames else empty_frames()
    return _typed(attempts), frame_table


_TIMES = ("t_open_ms", "t_ready_ms", "t_first_send_ms", "t_close_ms")
_CODES = ("close_code", "handshake_status")


def _typed(attempts: pd.DataFrame) -> pd.DataFrame:
    for name in _TIMES:
        attempts[name] = pd.to_numeric(attempts[name], errors="coerce")
    for name in _CODES:
        attempts[name] = pd.to_numeric(attempts[name], errors="coerce").astype("Int64")
    return attempts


def concat(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tables, skipping empty ones (pandas warns on those)."""
    tables = [t for t in tables if t is not None and len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


# -- figures every run reports ------------------------------------------------------------

def percentile(values: Any, q: float) -> float | None:
    """The q-quantile (0 to 1) of the numeric values, to 0.1; None when there are none."""
    values = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").dropna()
    return round(float(values.quantile(q)), 1) if len(values) else None


def sent_before_ready(attempts: pd.DataFrame) -> pd.Series:
    """The one definition of "sent before the readiness marker", for every report and the diagnosis: the
    attempt's first message went out before the marker arrived, or the marker never came."""
    send = pd.to_numeric(attempts["t_first_send_ms"], errors="coerce")
    ready = pd.to_numeric(attempts["t_ready_ms"], errors="coerce")
    return send.notna() & (ready.isna() | (send < ready))


def admitted(attempts: pd.DataFrame) -> pd.Series:
    """Attempts the server let in: upgraded, and not rejected for authentication."""
    opened = pd.to_numeric(attempts["t_open_ms"], errors="coerce").notna()
    return opened & (attempts["outcome"] != "auth_rejected")


def connection_metrics(attempts: pd.DataFrame) -> dict[str, Any]:
    """The connection figures every scenario reports, named as k6 names them where the meaning is the same.

    ws_connecting is the time to the upgrade, ready the time to the readiness
    marker, ws_session_duration from upgrade to close; all from the attempt's start.
    """
    def column(name: str) -> pd.Series:
        return pd.to_numeric(attempts[name], errors="coerce") if name in attempts else pd.Series(dtype=float)

    opened, ready, closed = column("t_open_ms"), column("t_ready_ms"), column("t_close_ms")
    return {
        "ws_connecting_p50_ms": percentile(opened, 0.5),
        "ws_connecting_p95_ms": percentile(opened, 0.95),
        "ready_p50_ms": percentile(ready, 0.5),
        "ready_p95_ms": percentile(ready, 0.95),
        "ws_session_duration_p50_ms": percentile(closed - opened, 0.5),
        "ws_msgs_sent": int(column("frames_sent").fillna(0).sum()),
        "ws_msgs_received": int(column("frames_received").fillna(0).sum()),
    }


# -- JSONL files ---------------------------------------------------------------------

def save_jsonl(path: str | Path, attempts: pd.DataFrame, frames: pd.DataFrame) -> Path:
    """Write both tables to one JSONL file: each line is `{"record": "attempt"|"frame", ...}`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for kind, table in (("attempt", attempts), ("frame", frames)):
            for row in table.to_dict(orient="records"):
                clean = {k: _plain(v) for k, v in row.items()}
                out.write(json.dumps({"record": kind, **clean}, default=str) + "\n")
    return path


def load_jsonl(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a file written by `save_jsonl` back into (attempts, frames).

    Raises:
        ValueError: naming the file and line of a line that is not a JSON record, or a
            timing or code column that the attempt records lack.
    """
    attempts, frames = [], []
    with Path(path).open(encoding="utf-8") as source:
        number = 0
        while line := source.readline(MAX_JSONL_LINE + 1):  # never more than one line's limit in memory
            number += 1
            if len(line) > MAX_JSONL_LINE:
                raise ValueError(f"{path}:{number}: a line over the {MAX_JSONL_LINE}-character limit")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            except RecursionError:
                raise ValueError(f"{path}:{number}: not JSON (nested too deeply)") from None
            kind = row.pop("record", None) if isinstance(row, dict) else None
            if kind not in ("attempt", "frame"):
                raise ValueError(f"{path}:{number}: record is neither 'attempt' nor 'frame'")
            problem = _field_problem(row)
            if problem:
                raise ValueError(f"{path}:{number}: {problem}")
            (attempts if kind == "attempt" else frames).append(row)
    attempt_table = pd.DataFrame(attempts) if attempts else empty_attempts()
    missing = [name for name in (*_TIMES, *_CODES) if name not in attempt_table]
    if missing:  # the figures every check reads; other columns may be absent
        raise ValueError(f"{path}: attempt records lack the column {missing[0]!r}")
    frame_table = pd.DataFrame(frames) if frames else empty_frames()
    for name in FRAME_COLUMNS:
        if name not in frame_table:
            frame_table[name] = None
    return _typed(attempt_table), frame_table


def _field_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a record's fields, if anything: every value a scalar, times
    numbers, codes whole numbers of a sane size (a trace may come from anywhere)."""
    for name, value in row.items():
        if isinstance(value, (dict, list)):
            return f"field {name!r} holds a {type(value).__name__}, not a single value"
    for name in _TIMES:
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"field {name!r} must be a number of milliseconds or null, not {value!r}"
    for name in _CODES:
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value < 100_000 or value != int(value)):  # NaN, inf fail the range
            return f"field {name!r} must be a whole number below 100000 or null, not {value!r}"
    return None


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: NaN and pandas NA become null, numpy scalars become Python."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        return value.item()
    return value
