"""Dialects: how a server words the protocol of PROTOCOL.md, as data the reference server and the client share.

Real targets differ in message layout, readiness marker, timestamps, error
frames, where they take the token and what they answer to it, which message
types they know, and how each root cause looks from outside. A `Dialect`
describes one such server in plain fields, so that:

- the reference server renders every frame and every fault from it (`message`,
  `error`, `ready_marker`, the `failure`/`not_ready`/`crash_reason` fields);
- the client sends what the server understands (`agent_request_message`,
  `offers`) and knows which checks the server can answer at all
  (`health_check`, `status_request`, `test_flags`): a check that needs what the
  dialect lacks is inconclusive, never failed;
- a live run can name the dialect a target speaks (`detect`).

A new dialect, the real backend's or a user's own, is one declaration in
`PRESETS` (or a mapping in a parameter file: `dialect: {base: netra, ...}`),
plus its tests. Specs: a preset name, `preset,key=value,...`, or a JSON/YAML
mapping of fields with an optional `base` preset.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from gp_lib.protocol import load_json

LAYOUTS = ("enveloped", "flat", "mixed")
READY_FORMS = ("connection_established", "system_message", "connection_ready", "handshake")
TIMESTAMP_FORMS = ("float", "iso")
ERROR_FORMS = ("error", "error_message", "error_message_data")
AUTH_FORMS = ("any", "subprotocol_only")
AUTH_REJECT_FORMS = ("close", "http")
ECHO_FORMS = ("offer", "scheme")
USER_ID_FORMS = ("full", "masked")
REQUEST_FORMS = ("agent_request", "start_agent", "user_message")
FAILURE_FORMS = ("reason", "mode_error")
UNKNOWN_OFFER_FORMS = ("ignore", "refuse")
NOT_READY_FORMS = ("close", "http_403", "stall_http_500")
#: Fields the mixed layout keeps at the top level; the rest go into `data`.
MIXED_TOP_LEVEL = ("run_id", "user_id", "thread_id", "agent_name", "tool_name")
#: The outer type of an event sent as `data.type` by some of the real backend's handlers
#: (websocket_core/handlers.py at aebb16f7, lines 377-452); its other events keep the mixed layout.
WRAPPED_EVENTS = {"agent_started": "system_message", "agent_thinking": "agent_progress",
                  "tool_executing": "agent_progress", "tool_completed": "agent_progress"}
MASKED_ID_CHARS = 8

_CHOICES = {
    "layout": LAYOUTS, "ready": READY_FORMS, "timestamps": TIMESTAMP_FORMS, "errors": ERROR_FORMS,
    "auth": AUTH_FORMS, "auth_reject": AUTH_REJECT_FORMS, "offer_echo": ECHO_FORMS, "user_ids": USER_ID_FORMS,
    "agent_request": REQUEST_FORMS, "failure": FAILURE_FORMS, "not_ready": NOT_READY_FORMS,
    "unknown_offers": UNKNOWN_OFFER_FORMS,
}
_SECONDS = ("heartbeat_interval_s", "handshake_timeout_s", "stall_s")


@dataclass(frozen=True)
class Dialect:
    """One deployment variant of the protocol.

    Attributes:
        name: what reports call it.
        layout: "enveloped" (`type`, `data`, `timestamp`, `server_id`), "flat" or "mixed".
        ready: the readiness marker: "connection_established", "system_message",
            "connection_ready" or "handshake" (the three-step handshake).
        ready_ids: the marker carries `connection_id` and `user_id`.
        ready_data: constant fields the marker's `data` also carries (e.g. the real backend's `mode`).
        envelope: top-level fields the enveloped layout adds, always null.
        user_ids: how the marker shows the user: "full", or "masked" (first 8 characters, then "...").
        timestamps: "float" (epoch seconds) or "iso" (ISO-8601 text) in messages; the envelope's own
            `timestamp` is always a float.
        errors: "error" (`{"type": "error", "message"}`), "error_message" (fields at the top level)
            or "error_message_data" (the same fields in `data`).
        wrapped_events: agent events come as `data.type` under an outer type (`WRAPPED_EVENTS`).
        auth: "any" (header or subprotocol) or "subprotocol_only" (the header is ignored, as behind
            a load balancer that strips it).
        auth_reject: "close" (error AUTH_FAILED then close 1008) or "http" (HTTP 401 instead of the
            upgrade) for an invalid token.
        auth_enforced: tokens are checked; False admits any token or none as `demo_user` (a demo mode).
        demo_user: who everyone is when tokens are not checked.
        offer_echo: the subprotocol the server selects: "offer" (the offer that carried the token) or
            "scheme" (`jwt-auth` or `bearer`, the offer's scheme without the token).
        unknown_offers: subprotocol offers none of which it supports: "ignore" (upgrade without one)
            or "refuse" (HTTP 403 before the upgrade).
        agent_request: how a client starts an agent run: "agent_request" (`agent`, `message`),
            "start_agent" (`payload.user_request`) or "user_message" (`payload.content`).
        health_check: `system_health_check` is answered with `system_status` and `factory_status`.
        status_request: `status_request` is answered with `status_update`.
        message_received: a `message` is answered with `message_received` before its run.
        test_flags: `simulate_agent_unavailable` and `require_llm` are honoured.
        failure: how a setup failure (race, factory) ends the socket: "reason" (close 1011 naming the
            cause) or "mode_error" (an error frame with `details.error_type`, then 1011 "<mode> mode error").
        mode: the mode a "mode_error" names.
        not_ready: how a request meets a missing service when the server does not answer gracefully:
            "close" (close 1011 "Service not ready"), "http_403" (every upgrade refused while a service is
            down), or "stall_http_500" (every upgrade stalls `stall_s`, then HTTP 500).
        crash_reason: the reason of the normal close (1000) after a message loop crash.
        http_routes: serve `/health` and `/ws/health` (else 404).
        health_data: constant fields `/ws/health` also carries.
        unhealthy_503: `/ws/health` answers HTTP 503 when it says unhealthy (else 200 with that body).
        heartbeat_interval_s: send a `heartbeat` frame this often after readiness; 0 is off.
        handshake_timeout_s: how long the handshake dialect waits for `handshake_acknowledged`.
        stall_s: how long a "stall_http_500" upgrade stalls.
    """

    name: str = "default"
    layout: str = "enveloped"
    ready: str = "connection_established"
    ready_ids: bool = True
    ready_data: dict[str, Any] = field(default_factory=dict)
    envelope: tuple[str, ...] = ("server_id",)
    user_ids: str = "full"
    timestamps: str = "float"
    errors: str = "error"
    wrapped_events: bool = False
    auth: str = "any"
    auth_reject: str = "close"
    auth_enforced: bool = True
    demo_user: str = "demo-user-001"
    offer_echo: str = "offer"
    unknown_offers: str = "ignore"
    agent_request: str = "agent_request"
    health_check: bool = True
    status_request: bool = True
    message_received: bool = True
    test_flags: bool = True
    failure: str = "reason"
    mode: str = "main"
    not_ready: str = "close"
    crash_reason: str = ""
    http_routes: bool = True
    health_data: dict[str, Any] = field(default_factory=dict)
    unhealthy_503: bool = True
    heartbeat_interval_s: float = 0.0
    handshake_timeout_s: float = 10.0
    stall_s: float = 15.0

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"dialect {name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool) and not isinstance(value, bool):
                raise ValueError(f"dialect {f.name} must be true or false, not {value!r}")
        for name in ("name", "mode", "crash_reason", "demo_user"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 100:
                raise ValueError(f"dialect {name} must be text of at most 100 characters, not {value!r}")
        for name in _SECONDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
                raise ValueError(f"dialect {name} must be a number of seconds from 0 to 3600, not {value!r}")
            object.__setattr__(self, name, float(value))
        if self.handshake_timeout_s == 0:
            raise ValueError("dialect handshake_timeout_s must be more than 0")
        for name in ("ready_data", "health_data"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or len(json.dumps(value, default=str)) > 2000:
                raise ValueError(f"dialect {name} must be a mapping of constant fields (at most 2000 characters)")
            object.__setattr__(self, name, dict(value))
        envelope = (self.envelope,) if isinstance(self.envelope, str) else self.envelope
        if not isinstance(envelope, (list, tuple)) or not all(isinstance(n, str) and n for n in envelope):
            raise ValueError(f"dialect envelope must be a list of field names, not {self.envelope!r}")
        object.__setattr__(self, "envelope", tuple(envelope))

    # -- parsing -----------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | None) -> Dialect:
        """A dialect from a preset name, `preset,key=value,...`, or a mapping (JSON text too).

        Raises:
            ValueError: an unknown preset, key or value, naming it.
        """
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        text = (spec or "").strip()
        if text.startswith("{"):
            data, problem, _ = load_json(text, limit=20_000)
            if problem is not None:
                raise ValueError(f"dialect {text[:60]!r} is neither a preset nor a JSON object ({problem})")
            return cls.from_dict(data)
        changes: dict[str, Any] = {}
        names: list[str] = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                changes.update({k: v for k, v in preset(key).items() if k != "name"})
                names.append(key)
            else:
                changes[key] = _parse_value(key, value.strip())
        if "name" not in changes:  # named as written: `flat+iso`, `netra (changed)`
            changes["name"] = "+".join(names) or "default"
            if any("=" in item for item in text.split(",")):
                changes["name"] += " (changed)"
        return cls.from_dict(changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Dialect:
        """A dialect from a partial mapping of fields; `base` names the preset it starts from.

        Raises:
            ValueError: an unknown field or bad value, naming it.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a dialect must be a preset name or a mapping, not {type(data).__name__}")
        data = dict(data)
        base = data.pop("base", None)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ValueError(f"unknown dialect key {key!r} (known: base, {', '.join(known)})")
        start = dict(preset(str(base))) if base is not None else {}
        if base is not None and "name" not in data:
            start["name"] = f"{base} (changed)" if data else str(base)
        return cls(**{**start, **data})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["envelope"] = list(self.envelope)
        return data

    def to_spec(self) -> str:
        """The dialect as one argument (`gp serve --dialect`): its JSON fields that differ from the default."""
        default = Dialect().to_dict()
        return json.dumps({k: v for k, v in self.to_dict().items() if default.get(k) != v}, sort_keys=True)

    # -- what a client sends -----------------------------------------------------------------

    def agent_request_message(self, text: str, *, agent: str | None = None, thread_id: str | None = None,
                              **flags: Any) -> dict[str, Any]:
        """The message that starts an agent run, as this server expects it; `flags` only if it honours them."""
        flags = flags if self.test_flags else {}
        if self.agent_request == "start_agent":
            payload = {"user_request": text, **({"agent_name": agent} if agent else {}),
                       **({"thread_id": thread_id} if thread_id else {}), **flags}
            return {"type": "start_agent", "payload": payload}
        if self.agent_request == "user_message":
            payload = {"content": text, **({"thread_id": thread_id} if thread_id else {}), **flags}
            return {"type": "user_message", "payload": payload}
        return {"type": "agent_request", "agent": agent or "triage_agent", "message": text,
                **({"thread_id": thread_id} if thread_id else {}), **flags}

    def offers(self) -> tuple[str, ...]:
        """Bare subprotocols a client must offer besides `jwt.<token>`: a server that selects the scheme
        (`jwt-auth`) instead of echoing the offer fails the handshake of a client that did not offer it."""
        return ("jwt-auth",) if self.offer_echo == "scheme" else ()

    def shown_user(self, user_id: str) -> str:
        """The user id as the readiness marker shows it."""
        if self.user_ids == "masked":
            return user_id[:MASKED_ID_CHARS] + "..." if user_id else "unknown"
        return user_id

    # -- what a server sends -------------------------------------------------------------

    def timestamp(self) -> float | str:
        """Now, in this dialect's timestamp format."""
        now = time.time()
        if self.timestamps == "iso":
            return datetime.fromtimestamp(now, timezone.utc).isoformat()
        return now

    def message(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A frame of type `kind` carrying `fields`, laid out per this dialect."""
        if self.wrapped_events and kind in WRAPPED_EVENTS:
            return self._described(WRAPPED_EVENTS[kind], {"type": kind, "event": kind, **fields})
        stamp = self.timestamp()
        if self.layout == "flat":
            return {"type": kind, **fields, "timestamp": stamp}
        if self.layout == "mixed":
            top = {k: fields[k] for k in MIXED_TOP_LEVEL if k in fields}
            rest = {k: v for k, v in fields.items() if k not in top}
            return {"type": kind, **top, "data": rest, "timestamp": stamp}
        return self._envelope(kind, fields)

    def _envelope(self, kind: str, data: dict[str, Any], stamp: float | str | None = None) -> dict[str, Any]:
        stamp = self.timestamp() if stamp is None else stamp
        return {"type": kind, "data": data, "timestamp": stamp, **{name: None for name in self.envelope}}

    def _described(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Everything in `data` with its own timestamp in this dialect's form, the envelope's a float
        (the real backend's `create_server_message`: websocket_core/types.py, 210-216)."""
        return self._envelope(kind, {**data, "timestamp": self.timestamp()}, stamp=time.time())

    def ready_marker(self, connection_id: str, user_id: str, **extra: Any) -> dict[str, Any]:
        """The readiness marker (the last step of a handshake included)."""
        ids = {"connection_id": connection_id, "user_id": self.shown_user(user_id)} if self.ready_ids else {}
        fields = {**self.ready_data, **ids, **extra}
        if self.ready == "system_message":
            return self.message("system_message", event="connection_established", connection_ready=True, **fields)
        kind = "handshake_complete" if self.ready == "handshake" else self.ready
        if self.ready_data:  # a server that describes itself in the marker keeps everything in `data`
            return self._described(kind, fields)
        return self.message(kind, **fields)

    def error(self, text: str, code: str, *, suggestions: tuple[str, ...] = (), **details: Any) -> dict[str, Any]:
        """An error frame in this dialect's error form (PROTOCOL.md section 7)."""
        if self.errors == "error":
            return {"type": "error", "message": text, "error_code": code, **details, "timestamp": self.timestamp()}
        fields = {"error_code": code, "error_message": text, "details": details,
                  "recovery_suggestions": list(suggestions) or None}
        if self.errors == "error_message_data":
            return self._described("error_message", fields)
        return {"type": "error_message", **fields, "timestamp": self.timestamp()}

    def mode_error_reason(self) -> str:
        return f"{self.mode} mode error"


# -- the declarations ---------------------------------------------------------------------------

#: The real backend the test plan was written for (netra-systems/zen at aebb16f7, docs/protocol.md section 10):
#: routes/websocket_ssot.py builds the marker at lines 974-988 (user id masked at 977), main-mode errors
#: at 1814-1825 (close "<mode> mode error"), the cleanup close "main cleanup" at 1033/1840;
#: unified_jwt_protocol_handler.py selects `jwt-auth` for a `jwt.<token>` offer; auth_permissiveness.py
#: admits every user as demo-user-001 while DEMO_MODE is on (its default); types.py has no
#: system_health_check, status_request, message_received or test flags. Tokens are checked here (AUTH_FAILED
#: then 1008, websocket_ssot.py 842-843); `netra_demo` is its DEMO_MODE, where they are not.
NETRA = {
    "name": "netra", "layout": "mixed", "timestamps": "iso", "errors": "error_message_data",
    "envelope": ["server_id", "correlation_id"], "user_ids": "masked", "wrapped_events": True,
    "ready_data": {"mode": "main",
                   "golden_path_events": ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                          "agent_completed"],
                   "features": {"full_business_logic": True, "golden_path_integration": True,
                                "cloud_run_optimized": True, "emergency_fallback": True,
                                "agent_orchestration": True}},
    "health_data": {"mode": "ssot_consolidated"}, "unhealthy_503": False,  # websocket_ssot.py 1847-1895
    "offer_echo": "scheme", "unknown_offers": "refuse", "agent_request": "start_agent", "health_check": False,
    "status_request": False, "message_received": False, "test_flags": False, "failure": "mode_error",
    "not_ready": "http_403", "crash_reason": "main cleanup",
}

#: Named dialects: each is the change from the default one.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "flat": {"layout": "flat"},
    "mixed": {"layout": "mixed"},
    "system_message": {"ready": "system_message", "ready_ids": False},
    "connection_ready": {"ready": "connection_ready"},
    "handshake": {"ready": "handshake", "ready_ids": False},
    "iso": {"timestamps": "iso"},
    "error_message": {"errors": "error_message"},
    "stripped_header": {"auth": "subprotocol_only"},
    "netra": NETRA,
    "netra_demo": {**NETRA, "name": "netra_demo", "auth_enforced": False},
}


def preset(name: str) -> dict[str, Any]:
    """The fields of a named dialect.

    Raises:
        ValueError: an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown dialect preset {name!r} (known: {', '.join(PRESETS)})")
    return {"name": name, **PRESETS[name]}


def _parse_value(key: str, text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if key in _SECONDS:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"dialect {key} must be a number of seconds, not {text!r}") from None
    return text


# -- detection ---------------------------------------------------------------------------------

def detect(marker: Mapping[str, Any] | None, health_bodies: Mapping[str, Any] | None = None,
           selected: str | None = None) -> tuple[Dialect, str]:
    """The dialect a target speaks, from its readiness marker, its health bodies and the subprotocol
    it selected; and one sentence that says how it was told.

    A declared dialect whose own marker or health fields are all there wins; otherwise the wire shapes
    seen are described, and what cannot be seen from outside (which message types it knows) is
    assumed as PROTOCOL.md has it: checks then find out, and say inconclusive where it does not.
    """
    data = marker.get("data") if isinstance(marker, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    bodies = [b for b in (health_bodies or {}).values() if isinstance(b, Mapping)]
    for name, fields in PRESETS.items():
        own = fields.get("ready_data") or {}
        if own and marker is not None and all(key in data for key in own):
            keys = ", ".join(f"data.{key}" for key in own)
            return Dialect.parse(name), f"{name}: its readiness marker carries {keys}"
        health = fields.get("health_data") or {}
        if health and any(all(b.get(k) == v for k, v in health.items()) for b in bodies):
            pairs = ", ".join(f"{k}: {v}" for k, v in health.items())
            return Dialect.parse(name), f"{name}: its /ws/health says {pairs}"
    if marker is None:
        how = "not detected: no readiness marker came; PROTOCOL.md's default assumed"
        return Dialect(name="default (assumed)", offer_echo="scheme" if selected else "offer"), how
    return _described(marker, data, selected)


def _described(marker: Mapping[str, Any], data: Mapping[str, Any], selected: str | None) -> tuple[Dialect, str]:
    """A dialect from the shapes of a marker the declarations do not know."""
    kind = marker.get("type")
    ready = ("handshake" if kind == "handshake_complete" else kind if kind in READY_FORMS else "connection_established")
    top = set(marker) - {"type", "data", "timestamp"}
    layout = "mixed" if data and top & set(MIXED_TOP_LEVEL) else "enveloped" if data else "flat"
    stamp = data.get("timestamp", marker.get("timestamp"))
    timestamps = "iso" if isinstance(stamp, str) else "float"
    ids = any(isinstance(source.get("connection_id"), str) for source in (marker, data))
    shown = [marker.get("user_id"), data.get("user_id")]
    masked = any(isinstance(u, str) and u.endswith("...") for u in shown)
    dialect = Dialect(name="detected", ready=ready, layout=layout, timestamps=timestamps, ready_ids=ids,
                      user_ids="masked" if masked else "full", offer_echo="scheme" if selected else "offer")
    parts = [f"{kind} marker", layout, f"{timestamps} timestamps",
             "with a connection id" if ids else "without a connection id"]
    if masked:
        parts.append("the user id masked")
    if selected:
        parts.append(f"answers {selected} to a jwt.<token> offer")
    return dialect, ("no declared dialect matched; detected " + ", ".join(parts)
                     + "; which message types it knows is found out by the checks")
