"""Message shapes of the Golden Path WebSocket protocol, with no I/O.

Everything here is a pure function of frames: `decode` turns any frame into a
bounded `Message`, so the client, the validators, the diagnosis, the importers
and the reference server share one reading of it and test it without a
network. The dialects of PROTOCOL.md are accepted on receive:
enveloped (`{"type", "data": {...}}`), flat (fields at the top level) and
mixed layouts; float or ISO-8601 timestamps; `error` and `error_message`
frames; the four readiness forms including the three-step handshake.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

# -- the five agent events, in their required order ---------------------------

AGENT_STARTED = "agent_started"
AGENT_THINKING = "agent_thinking"
TOOL_EXECUTING = "tool_executing"
TOOL_COMPLETED = "tool_completed"
AGENT_COMPLETED = "agent_completed"
AGENT_ERROR = "agent_error"

EVENT_NAMES = (AGENT_STARTED, AGENT_THINKING, TOOL_EXECUTING, TOOL_COMPLETED, AGENT_COMPLETED)
#: Frames that belong to an agent run (the five events and the error that ends a run).
RUN_EVENT_TYPES = frozenset(EVENT_NAMES) | {AGENT_ERROR}

# -- readiness -----------------------------------------------------------------

READY_TYPES = frozenset({"connection_established", "connection_ready", "handshake_complete"})
HANDSHAKE_RESPONSE = "handshake_response"
HANDSHAKE_ACK = "handshake_acknowledged"

# -- other message types -------------------------------------------------------

ERROR_TYPES = frozenset({"error", "error_message"})
STATUS_TYPES = frozenset({"status_update", "thread_status", "execution_status"})
AGENT_REQUEST_ALIASES = frozenset({"agent_request", "start_agent", "user_message", "chat"})
SERVICES = ("agent_supervisor", "thread_service", "llm_service", "database")

#: The type `decode` gives a frame that is not JSON or has no type.
INVALID_TYPE = "<invalid>"

# -- close codes (PROTOCOL.md section 8) ---------------------------------------

CLOSE_CODES = {
    1000: "normal",
    1001: "going away",
    1003: "unsupported subprotocol",
    1006: "abnormal (no close frame)",
    1008: "policy violation (auth, limits)",
    1009: "message too big",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
}
INTERNAL_ERROR = 1011
POLICY_VIOLATION = 1008

AUTH_WORDS = ("auth", "token", "jwt", "credential", "signature", "expired", "forbidden")

# Phrases that make an error readable by a user of the chat: it says the
# service is down for now and what to do. "Service not ready: llm_service" is
# not one of them: it names internals and offers nothing.
GRACEFUL_PHRASES = (
    "temporarily unavailable",
    "currently unavailable",
    "try again",
    "please retry",
    "degraded mode",
    "fallback",
)


# -- decoding: the one decoder every reader of frames uses ----------------------------------

#: The largest frame accepted at all: the client closes 1009 above it, the decoder refuses it.
MAX_FRAME_BYTES = 2**22
#: Nesting kept; deeper values are replaced by a marker.
MAX_DEPTH = 32
#: Characters kept of any one string value; the rest is cut with a marker that gives the length.
MAX_STRING_CHARS = 4_096
#: Characters kept of any one object key (a field name; a longer one is someone's payload).
MAX_KEY_CHARS = 256
#: Items kept of any one object or list.
MAX_ITEMS = 256
#: Characters of a frame's text kept as evidence (the `payload` of the frames table).
MAX_RAW_CHARS = 16_384
#: Event names some servers put in `data.type` under one of these outer types (the real backend,
#: docs/protocol.md section 10: websocket_core/handlers.py at aebb16f7, lines 377-491).
WRAPPER_TYPES = frozenset({"system_message", "agent_progress", "agent_response_complete"})


class Message(dict):
    """One decoded frame: the JSON object, bounded, with a normalised `type`.

    `type` is always a non-empty string: the frame's own, the event name a
    wrapper carries in `data.type` (the wrapper's is kept in `outer_type`), or
    `INVALID_TYPE` when the frame could not be decoded, with `problem` saying
    why. `raw` is the text kept as evidence (cut to `MAX_RAW_CHARS` with a
    marker; `raw_length` is the length as received); `cut` says whether any
    value was shortened to keep within the bounds.
    """

    def __init__(self, fields: dict[str, Any], *, raw: str = "", raw_length: int = 0,
                 problem: str | None = None, outer_type: str | None = None, cut: bool = False):
        super().__init__(fields)
        self.raw = raw
        self.raw_length = raw_length
        self.problem = problem
        self.outer_type = outer_type
        self.cut = cut

    @property
    def valid(self) -> bool:
        return self.problem is None


def decode(frame: Any) -> Message:
    """Decode one frame, whatever it holds, into a `Message`; never raises.

    Every bound is applied here (size, depth, items, string length), so no
    caller has to trust what a server sent: a frame that is not a JSON object
    with a string type is a `Message` of type `INVALID_TYPE` with its `problem`.
    """
    if not isinstance(frame, (str, bytes, bytearray)):  # None, or a table's NaN
        return _invalid("", 0, "empty frame")
    if isinstance(frame, (bytes, bytearray)):
        length = len(frame)
        if length > MAX_FRAME_BYTES:
            return _invalid(repr(bytes(frame[:200])), length, f"frame of {length} bytes, over the {MAX_FRAME_BYTES} limit")
        try:
            text = bytes(frame).decode("utf-8")
        except UnicodeDecodeError:
            return _invalid(repr(bytes(frame[:200])), length, "binary frame, not UTF-8")
    else:
        text, length = str(frame), len(frame)
        if length > MAX_FRAME_BYTES:
            return _invalid(text, length, f"frame of {length} characters, over the {MAX_FRAME_BYTES} limit")
    value, problem, cut = load_json(text)
    if problem is not None:
        return _invalid(text, length, problem)
    if not isinstance(value, dict):
        return _invalid(text, length, "JSON but not an object")
    kind, outer = _event_type(value)
    raw = text if len(text) <= MAX_RAW_CHARS and not cut else _evidence(value)
    if kind is None:
        return Message({**value, "type": INVALID_TYPE}, raw=raw, raw_length=length, problem="no type", cut=cut)
    return Message({**value, "type": kind}, raw=raw, raw_length=length, outer_type=outer, cut=cut)


def load_json(text: Any, limit: int = MAX_FRAME_BYTES) -> tuple[Any, str | None, bool]:
    """`(value, problem, cut)`: JSON text decoded within the bounds, or None and why not.

    For every JSON that comes from outside (frames, HTTP bodies, imported
    files): `json.loads` alone raises RecursionError on deep nesting and
    keeps megabyte strings whole.
    """
    if not isinstance(text, (str, bytes, bytearray)):
        return None, "not text", False
    if len(text) > limit:
        return None, f"{len(text)} characters, over the {limit} limit", False
    try:
        value = json.loads(text)
    except RecursionError:
        return None, "JSON nested too deeply", False
    except ValueError:
        return None, "not JSON", False
    value, cut = _bounded(value, 0)
    return value, None, cut


def message_from_row(row: Mapping[str, Any]) -> Message:
    """The message of a frames-table row: its payload decoded, else (a payload cut or redacted
    beyond reading, a trace from elsewhere) a message built from the row's columns."""
    message = decode(row.get("payload") or "")
    if message.valid:
        return message
    kind = row.get("type")
    if not isinstance(kind, str) or not kind or kind in ("open", "ready", "close", "error"):
        return message
    fields = {name: row.get(name) for name in ROW_FIELDS}
    fields = {k: v for k, v in fields.items() if isinstance(v, (str, int, float)) and v == v}
    return Message(fields, raw=message.raw, raw_length=message.raw_length)


#: The columns of a frames-table row that hold message fields.
ROW_FIELDS = ("type", "run_id", "user_id", "thread_id", "tool_name")


def _invalid(text: str, length: int, problem: str) -> Message:
    return Message({"type": INVALID_TYPE}, raw=cut_text(text, MAX_RAW_CHARS), raw_length=length, problem=problem)


def cut_text(text: str, limit: int | None) -> str:
    """`text` within `limit` characters: longer text is cut and says how long it was (as first received,
    when it was cut before)."""
    if limit is None or len(text) <= limit:
        return text
    earlier = _CUT_MARKER.search(text)
    return f"{text[:limit]}…[cut: {earlier.group(1) if earlier else len(text)} characters]"


_CUT_MARKER = re.compile(r"…\[cut: (\d+) characters\]$")


def _bounded(value: Any, depth: int) -> tuple[Any, bool]:
    """`value` within the bounds (depth, items, string length), and whether anything was cut."""
    if isinstance(value, str):
        return (value, False) if len(value) <= MAX_STRING_CHARS else (cut_text(value, MAX_STRING_CHARS), True)
    if not isinstance(value, (dict, list)):
        return value, False
    if depth >= MAX_DEPTH:
        return f"…[cut: nested deeper than {MAX_DEPTH} levels]", True
    cut = len(value) > MAX_ITEMS
    if isinstance(value, dict):
        kept: Any = {}
        for key, inner in list(value.items())[:MAX_ITEMS]:
            short_key = cut_text(key, MAX_KEY_CHARS)
            kept[short_key], inner_cut = _bounded(inner, depth + 1)
            cut = cut or inner_cut or short_key != key
        if len(value) > MAX_ITEMS:
            kept["…"] = f"[cut: {len(value)} keys]"
        return kept, cut
    items = []
    for inner in value[:MAX_ITEMS]:
        item, inner_cut = _bounded(inner, depth + 1)
        items.append(item)
        cut = cut or inner_cut
    if len(value) > MAX_ITEMS:
        items.append(f"…[cut: {len(value)} items]")
    return items, cut


def _event_type(message: dict[str, Any]) -> tuple[str | None, str | None]:
    """`(type, outer type)`: an agent event wrapped as `data.type` under a wrapper type is that event."""
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        return None, None
    inner = message.get("data")
    if kind in WRAPPER_TYPES and isinstance(inner, dict) and isinstance(inner.get("type"), str) \
            and inner["type"] in RUN_EVENT_TYPES:
        return inner["type"], kind
    return kind, None


def _evidence(bounded: dict[str, Any]) -> str:
    """The text kept for a frame that was too long or had values cut: the bounded message re-encoded."""
    encoded = json.dumps(bounded, ensure_ascii=False, separators=(",", ":"), default=str)
    return cut_text(encoded, MAX_RAW_CHARS)


def field(message: dict[str, Any], name: str, default: Any = None) -> Any:
    """Read a field from the top level first, then from `data` (and `payload`)."""
    if name in message and message[name] is not None:
        return message[name]
    for container in ("data", "payload"):
        inner = message.get(container)
        if isinstance(inner, dict) and inner.get(name) is not None:
            return inner[name]
    return default


def text_field(message: dict[str, Any], name: str, limit: int = 200) -> str | None:
    """A field as bounded text (ids a server chose), or None."""
    value = field(message, name)
    return None if value is None or isinstance(value, (dict, list)) else cut_text(str(value), limit)


def same_user(a: Any, b: Any) -> bool:
    """Whether two user ids name one user, where a server may show one masked as its first
    characters and "..." (the real backend's readiness marker: `demo-use...`)."""
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        return False
    if a == b:
        return True
    for masked, full in ((a, b), (b, a)):
        if masked.endswith("...") and len(masked) > 3 and full.startswith(masked[:-3]):
            return True
    return False


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a float, an int (seconds or milliseconds) or ISO-8601 text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        return value / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return parse_timestamp(float(text))
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    return None


def event_time(message: dict[str, Any]) -> float | None:
    """The message's own timestamp, in epoch seconds, wherever it is kept."""
    return parse_timestamp(field(message, "timestamp"))


# -- readiness -----------------------------------------------------------------

def is_ready_marker(message: dict[str, Any]) -> bool:
    """True for every readiness form PROTOCOL.md section 4 lists."""
    kind = message.get("type")
    if kind in READY_TYPES:
        return True
    if kind == "system_message":
        return field(message, "event") == "connection_established" or field(message, "connection_ready") is True
    return False


def unanswered_sends(frames: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One attempt's sent messages (its handshake acknowledgement aside) when nothing answered the first of
    them, else none: a heartbeat, or a readiness marker after a message sent before it, is no answer.
    A server that then closes the socket has a message loop that dies on what it reads (docs/protocol.md 10);
    the caller decides which closes count. A row's `message`, when the caller decoded it, is read as is."""
    frames = list(frames)
    sent = [f for f in frames if f.get("direction") == "sent" and f.get("type") != HANDSHAKE_ACK]
    if not sent:
        return []
    first = min(_t_ms(f) for f in sent)
    answered = any(f.get("direction") == "received" and f.get("type") != "heartbeat" and _t_ms(f) > first
                   and not is_ready_marker(_decoded(f)) for f in frames)
    return [] if answered else sorted(sent, key=_t_ms)


def _decoded(frame: Mapping[str, Any]) -> dict[str, Any]:
    message = frame.get("message")
    return message if isinstance(message, dict) else message_from_row(frame)


def _t_ms(frame: Mapping[str, Any]) -> float:
    """A frame's `t_ms`; a missing or unreadable one sorts last and answers nothing."""
    t = frame.get("t_ms")
    return float(t) if isinstance(t, (int, float)) and t == t else math.inf


def handshake_reply(message: dict[str, Any]) -> dict[str, Any] | None:
    """The client's answer to a `handshake_response`, or None for anything else."""
    if message.get("type") != HANDSHAKE_RESPONSE:
        return None
    reply: dict[str, Any] = {"type": HANDSHAKE_ACK}
    for name in ("thread_id", "run_id", "connection_id"):
        value = field(message, name)
        if value is not None:
            reply[name] = value
    return reply


# -- errors and degraded service -------------------------------------------------

def is_error(message: dict[str, Any]) -> bool:
    return message.get("type") in ERROR_TYPES or message.get("type") == AGENT_ERROR


def ends_run(message: dict[str, Any]) -> bool:
    """True for a frame after which no more of a run is coming: agent_completed, agent_error or an error."""
    return message.get("type") == AGENT_COMPLETED or is_error(message)


def message_text(message: dict[str, Any]) -> str:
    """All human-readable text a frame carries, joined: what a user would see."""
    parts: list[str] = []
    for name in ("message", "error_message", "content", "text", "result", "final_response", "reason"):
        value = field(message, name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, dict):
            for inner in ("message", "text", "summary", "answer"):
                if isinstance(value.get(inner), str):
                    parts.append(value[inner])
    suggestions = field(message, "recovery_suggestions")
    if isinstance(suggestions, list):
        parts.extend(s for s in suggestions if isinstance(s, str))
    return " ".join(parts)


def error_code(message: dict[str, Any]) -> str | None:
    code = field(message, "error_code") or field(message, "code")
    return str(code) if code is not None else None


def is_graceful_text(text: str) -> bool:
    """True when text tells a user the service is down for now and what to do."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in GRACEFUL_PHRASES)


def is_fallback_completion(message: dict[str, Any]) -> bool:
    """An `agent_completed` whose text says a fallback or degraded mode answered."""
    if message.get("type") != AGENT_COMPLETED:
        return False
    lowered = message_text(message).lower()
    return "fallback" in lowered or "degraded" in lowered or "temporarily unavailable" in lowered


def is_auth_close(reason: str | None, auth_error_seen: bool, ready: bool) -> bool:
    """Whether a 1008 close was an authentication rejection rather than a limit or protocol complaint.

    1008 also means "connection or rate limit": an auth error frame or a
    reason that names auth settles it; an empty reason before readiness is
    taken as auth, the common case; any other reason is not.
    """
    if auth_error_seen or names_auth(reason or ""):
        return True
    return not reason and not ready


def names_auth(text: str) -> bool:
    """True when text is about authentication (a token, a signature, credentials)."""
    lowered = text.lower()
    return any(word in lowered for word in AUTH_WORDS)


def is_auth_failure(message: dict[str, Any]) -> bool:
    code = (error_code(message) or "").upper()
    return is_error(message) and ("AUTH" in code or "TOKEN" in code)


# -- status -----------------------------------------------------------------------

def is_status(message: dict[str, Any]) -> bool:
    return message.get("type") in STATUS_TYPES
