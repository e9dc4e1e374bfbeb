"""Message shapes of the Golden Path WebSocket protocol, with no I/O.

Everything here is a pure function of decoded frames, so the client, the
validators, the diagnosis and the reference server can share it and test it
without a network. The dialects of PROTOCOL.md are accepted on receive:
enveloped (`{"type", "data": {...}}`), flat (fields at the top level) and
mixed layouts; float or ISO-8601 timestamps; `error` and `error_message`
frames; the four readiness forms including the three-step handshake.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

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
AGENT_REQUEST_ALIASES = frozenset({"agent_request", "start_agent", "user_message"})
SERVICES = ("agent_supervisor", "thread_service", "llm_service", "database")

#: Field value the parser gives a frame that is not JSON or has no type.
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


# -- parsing -------------------------------------------------------------------

def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Decode one frame into a dict that always has a `type`.

    A frame that is not a JSON object, or has no string `type`, comes back as
    `{"type": "<invalid>", "raw": <text>, "problem": <why>}`: evidence, never
    an exception.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return {"type": INVALID_TYPE, "raw": repr(text[:200]), "problem": "binary frame, not UTF-8"}
    try:
        value = json.loads(text)
    except ValueError:
        return {"type": INVALID_TYPE, "raw": text[:2000], "problem": "not JSON"}
    except RecursionError:
        return {"type": INVALID_TYPE, "raw": text[:2000], "problem": "JSON nested too deeply"}
    if not isinstance(value, dict):
        return {"type": INVALID_TYPE, "raw": text[:2000], "problem": "JSON but not an object"}
    if not isinstance(value.get("type"), str) or not value["type"]:
        return {**value, "type": INVALID_TYPE, "raw": text[:2000], "problem": "no type"}
    return value


def field(message: dict[str, Any], name: str, default: Any = None) -> Any:
    """Read a field from the top level first, then from `data` (and `payload`)."""
    if name in message and message[name] is not None:
        return message[name]
    for container in ("data", "payload"):
        inner = message.get(container)
        if isinstance(inner, dict) and inner.get(name) is not None:
            return inner[name]
    return default


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
