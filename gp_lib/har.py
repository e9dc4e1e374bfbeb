"""Browser HAR files as the attempts and frames tables, so a session saved from DevTools is judged like a run.

During an incident the frames a user's browser saw are often the best
evidence there is: DevTools (Network panel, "Save all as HAR with content")
keeps them. Chromium writes each WebSocket as an entry with
`_resourceType: "websocket"` and its frames in `_webSocketMessages`. This
module maps such a file onto the toolkit's tables:

| HAR | tables |
| --- | --- |
| entry with `_resourceType` "websocket" (or a `_webSocketMessages` list) | one attempts row, `attempt_id` `har-<entry index>` |
| `startedDateTime` | `started_at`, and time zero of the attempt (else the first message's time) |
| `request.url` | `url` column, without its query string (tokens travel there) |
| `sub` of a JWT in the URL, a header or a `jwt.` subprotocol offer | `user_id` (the token itself is never kept); else the `user_id` the frames carry |
| `response.status` | `handshake_status`: 101 upgraded, 401/403 `auth_rejected`, else `refused` |
| `timings` blocked + dns + connect + send + wait | `t_open_ms` |
| message `type` send / receive | frames row `sent` / `received`; `t_ms` = (`time` - time zero) x 1000 |
| `opcode` 1 text, 2 binary (base64 `data`) | the frame, decoded by `protocol.decode` |
| `opcode` 8 close | `close_code` and `close_reason`; HAR rarely has one, so the close code is usually unknown (NA) |
| `opcode` 9, 10 and `type` "error" | marks (`ping`, `pong`, `error`) |

Outcome, inferred plainly: no 101 gives `auth_rejected` (401, 403) or
`refused`; a recorded close gives `closed_1011`, `auth_rejected` (1008 after an
auth error, naming auth, or unexplained before readiness), `ok` (1000) or `closed_other`; with no
close recorded: `auth_rejected` after an auth error frame, `ready_timeout`
without a readiness marker, else `ok`.

What is malformed (an entry or message with missing fields, wrong types,
data that is not JSON) becomes a sentence in `problems`, naming its JSON
path; the rest of the file still imports. Only a file that is not a HAR at
all raises.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from gp_lib import auth, protocol
from gp_lib.redact import redact
from gp_lib.trace import AttemptRecord, frame_row, to_tables

SCENARIO = "captured"
DIRECTIONS = {"send": "sent", "receive": "received"}
MARK_OPCODES = {9: "ping", 10: "pong"}
TIMING_PARTS = ("blocked", "dns", "connect", "send", "wait")
#: The largest HAR read (a browser session with its frames is megabytes; this is far past any).
MAX_HAR_BYTES = 512 << 20
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


@dataclass
class HarImport:
    """The tables of a HAR file, and what in it could not be read."""

    attempts: pd.DataFrame
    frames: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    entries: int = 0               # entries in the file, of any kind
    websocket_entries: int = 0


def load_har(path: str | Path) -> HarImport:
    """Import every WebSocket entry of a HAR file.

    Raises:
        ValueError: the file is not JSON or has no `log.entries` list, naming the file.
    """
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size > MAX_HAR_BYTES:
        raise ValueError(f"{path}: {size} bytes, over the {MAX_HAR_BYTES}-byte limit of a HAR import")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: not a readable JSON file (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({' '.join(str(exc).split())[:200]})") from None
    entries = data.get("log", {}).get("entries") if isinstance(data, dict) and isinstance(data.get("log"), dict) \
        else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a HAR file (no log.entries list)")
    return import_entries(entries)


def import_entries(entries: list[Any]) -> HarImport:
    """The tables of a HAR's `log.entries` list (see the module docstring for the mapping)."""
    records: list[AttemptRecord] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        where = f"log.entries[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        if entry.get("_resourceType") != "websocket" and "_webSocketMessages" not in entry:
            continue
        records.append(_attempt(entry, f"har-{index:03d}", where, problems))
    attempts, frames = to_tables(records)
    return HarImport(attempts, frames, problems, len(entries), len(records))


# -- one entry ---------------------------------------------------------------------------------

def _attempt(entry: dict[str, Any], attempt_id: str, where: str, problems: list[str]) -> AttemptRecord:
    request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
    response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
    url = request.get("url")
    if not isinstance(url, str) or not url:
        problems.append(f"{where}.request.url: missing")
        url = None
    try:
        safe_url = _safe_url(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket; the URL itself may hold a token, so it is not quoted
        problems.append(f"{where}.request.url: not a URL ({exc})")
        safe_url = None
    status = response.get("status")
    if isinstance(status, bool) or not isinstance(status, int):
        problems.append(f"{where}.response.status: missing or not a number")
        status = None
    elif not 0 <= status <= 999:
        problems.append(f"{where}.response.status: {status} is not an HTTP status")
        status = None
    messages = _messages(entry, where, problems)
    started = _epoch(protocol.parse_timestamp(entry.get("startedDateTime")))
    if started is None:
        problems.append(f"{where}.startedDateTime: missing or not a date; times count from the first message")
        started = messages[0]["time"] if messages else None

    record = AttemptRecord(attempt_id=attempt_id, scenario=SCENARIO, arm="live", handshake_status=status,
                           extra={"url": safe_url})
    if started is not None:
        record.started_at = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="milliseconds") \
            .replace("+00:00", "Z")
    upgraded = status == 101 or (status is None and bool(messages))
    if upgraded:
        record.t_open_ms = _open_ms(entry.get("timings"))
        record.frames.append(frame_row(attempt_id, record.t_open_ms or 0.0, "mark", None, kind="open"))
    auth_error = False
    for message in messages:
        auth_error |= _frame(record, message, round((message["time"] - started) * 1000.0, 3))
    record.user_id = _token_user(request) or _frames_user(record)
    record.outcome = _outcome(record, upgraded, auth_error)
    if not upgraded and status is not None:
        record.error = f"HTTP {status} instead of the upgrade"
    return record


def _messages(entry: dict[str, Any], where: str, problems: list[str]) -> list[dict[str, Any]]:
    """The entry's well-formed messages, in file order; the others become problems."""
    raw = entry.get("_webSocketMessages")
    if raw is None:
        problems.append(f"{where}._webSocketMessages: missing; no frames imported")
        return []
    if not isinstance(raw, list):
        problems.append(f"{where}._webSocketMessages: not a list; no frames imported")
        return []
    kept = []
    for number, message in enumerate(raw):
        at = f"{where}._webSocketMessages[{number}]"
        if not isinstance(message, dict):
            problems.append(f"{at}: not an object")
            continue
        kind, time, opcode, data = (message.get(k) for k in ("type", "time", "opcode", "data"))
        opcode = 1 if opcode is None else opcode
        if kind not in (*DIRECTIONS, "error"):
            problems.append(f"{at}.type: {kind!r} is none of send, receive, error")
        elif isinstance(time, bool) or not isinstance(time, (int, float)) or _epoch(time) is None:
            problems.append(f"{at}.time: missing or not epoch seconds")
        elif isinstance(opcode, bool) or not isinstance(opcode, int):
            problems.append(f"{at}.opcode: {opcode!r} is not a number")
        elif not isinstance(data, str):
            problems.append(f"{at}.data: missing or not text")
        else:
            parsed = protocol.decode(data) if kind != "error" and opcode == 1 else None  # kept for `_frame`
            if parsed is not None and not parsed.valid:
                problems.append(f"{at}.data: {parsed.problem}; kept as an invalid frame")
            kept.append({"type": kind, "time": _epoch(time), "opcode": opcode, "data": data, "parsed": parsed})
    return kept


def _frame(record: AttemptRecord, message: dict[str, Any], t_ms: float) -> bool:
    """Add one message to the record; True when it is an authentication error."""
    attempt_id, opcode, data = record.attempt_id, message["opcode"], message["data"]
    if message["type"] == "error":
        record.frames.append(frame_row(attempt_id, t_ms, "mark", {"error": data}, kind="error"))
        record.error = record.error or redact(data[:500])
        return False
    if opcode == 8:
        record.close_code, record.close_reason = _close(data)
        record.t_close_ms = t_ms
        record.frames.append(frame_row(attempt_id, t_ms, "mark", {"code": record.close_code,
                                                                   "reason": record.close_reason}, kind="close"))
        return False
    if opcode in MARK_OPCODES:
        record.frames.append(frame_row(attempt_id, t_ms, "mark", None, kind=MARK_OPCODES[opcode]))
        return False
    parsed = message["parsed"] if message.get("parsed") is not None else protocol.decode(
        _binary(data) if opcode == 2 else data)
    direction = DIRECTIONS[message["type"]]
    record.frames.append(frame_row(attempt_id, t_ms, direction, parsed, raw=parsed.raw))
    if direction == "sent":
        record.frames_sent += 1
        if record.t_first_send_ms is None and parsed["type"] != protocol.HANDSHAKE_ACK:
            record.t_first_send_ms = t_ms
        return False
    record.frames_received += 1
    if not parsed.valid:
        record.invalid_frames += 1
    if protocol.is_ready_marker(parsed) and record.t_ready_ms is None:
        record.t_ready_ms = t_ms
        record.frames.append(frame_row(attempt_id, t_ms, "mark", None, kind="ready"))
    return protocol.is_auth_failure(parsed)


def _epoch(seconds: float | None) -> float | None:
    """`seconds` as epoch seconds when a date can hold them, else None: NaN, infinities and numbers past the
    year 9999 occur in malformed files and must not stop the import."""
    try:
        datetime.fromtimestamp(seconds, timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return float(seconds)


def _binary(data: str) -> bytes | str:
    """Chromium keeps binary frames base64-encoded; text that is not base64 stays as it is."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data


def _close(data: str) -> tuple[int | None, str | None]:
    """Code and reason of a close frame: "1011 reason" text, or the base64 close payload."""
    match = re.match(r"\s*(\d{4})\b\s*(.*)", data, re.S)
    if match:
        return int(match.group(1)), redact(match.group(2).strip()) or None
    payload = _binary(data)
    if isinstance(payload, bytes) and len(payload) >= 2:
        return int.from_bytes(payload[:2], "big"), redact(payload[2:].decode("utf-8", "replace")) or None
    return None, None


def _open_ms(timings: Any) -> float | None:
    """Time to the 101 answer: the HAR timings before the body (-1 means not applicable)."""
    if not isinstance(timings, dict):
        return None
    parts = [timings.get(name) for name in TIMING_PARTS]
    parts = [p for p in parts if isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0]
    return round(float(sum(parts)), 3) if parts else None


def _outcome(record: AttemptRecord, upgraded: bool, auth_error: bool) -> str:
    if not upgraded:
        return "auth_rejected" if record.handshake_status in (401, 403) else "refused"
    code = record.close_code
    if code == protocol.INTERNAL_ERROR:
        return "closed_1011"
    if auth_error or (code == protocol.POLICY_VIOLATION
                      and protocol.is_auth_close(record.close_reason, auth_error, record.t_ready_ms is not None)):
        return "auth_rejected"
    if code is not None:
        return "ok" if code == 1000 else "closed_other"
    return "ready_timeout" if record.t_ready_ms is None else "ok"


# -- who the user was, without keeping the token ---------------------------------------------------

def _token_user(request: dict[str, Any]) -> str | None:
    """The `sub` claim of the first token in the URL, a header or a subprotocol offer (read, never kept)."""
    texts = [request.get("url")]
    headers = request.get("headers") if isinstance(request.get("headers"), list) else []
    texts += [h.get("value") for h in headers if isinstance(h, dict)]
    for text in texts:
        if not isinstance(text, str):
            continue
        for part in re.split(r"[,\s]+", text):
            token = auth.token_from_offer(part) if part.lower().startswith(auth.SUBPROTOCOL_PREFIXES) else None
            found = _JWT.search(token or part)
            if found:
                sub = auth.inspect_token(found.group(0)).claims.get("sub")
                if sub:
                    return str(sub)
    return None


def _frames_user(record: AttemptRecord) -> str | None:
    """The user the server named first (the readiness marker usually does), else the first named."""
    named = [f["user_id"] for f in record.frames if f["direction"] == "received" and f["user_id"]]
    return named[0] if named else None


def _safe_url(url: str | None) -> str | None:
    """The URL without query or fragment, redacted: where the socket went, never its credentials."""
    if url is None:
        return None
    parts = urlsplit(url)
    return redact(urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")))
