"""Dialects: how a server words the protocol of PROTOCOL.md, as data the reference server and the client share.

Real targets differ in message layout, readiness marker, timestamp format,
error frames, where they accept the token and whether they serve HTTP routes.
A client that works against one variant can fail against another, so the
reference server can speak each of them. A `Dialect` is chosen at start with
`--dialect NAME` (a preset) or `--dialect key=value,...` (changes from the
default; a preset name may come first, e.g. `flat,auth_reject=http`).

The `Dialect` also renders frames, so that every wire shape lives here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

LAYOUTS = ("enveloped", "flat", "mixed")
READY_FORMS = ("connection_established", "system_message", "connection_ready", "handshake")
TIMESTAMP_FORMS = ("float", "iso")
ERROR_FORMS = ("error", "error_message")
AUTH_FORMS = ("any", "subprotocol_only")
AUTH_REJECT_FORMS = ("close", "http")
#: Fields the mixed layout keeps at the top level; the rest go into `data`.
MIXED_TOP_LEVEL = ("run_id", "user_id", "thread_id", "agent_name", "tool_name")

_CHOICES = {
    "layout": LAYOUTS,
    "ready": READY_FORMS,
    "timestamps": TIMESTAMP_FORMS,
    "errors": ERROR_FORMS,
    "auth": AUTH_FORMS,
    "auth_reject": AUTH_REJECT_FORMS,
}


@dataclass(frozen=True)
class Dialect:
    """One deployment variant of the protocol.

    Attributes:
        layout: "enveloped" (`type`, `data`, `timestamp`, `server_id`), "flat" or "mixed".
        ready: the readiness marker: "connection_established", "system_message",
            "connection_ready" or "handshake" (the three-step handshake).
        timestamps: "float" (epoch seconds) or "iso" (ISO-8601 text).
        errors: "error" (`{"type": "error", "message"}`) or "error_message".
        auth: "any" (header or subprotocol) or "subprotocol_only" (the header is ignored,
            as behind a load balancer that strips it).
        auth_reject: "close" (error AUTH_FAILED then close 1008) or "http" (HTTP 401
            instead of the upgrade) for an invalid token.
        http_routes: serve `/health` and `/ws/health` (else 404).
        heartbeat_interval_s: send a `heartbeat` frame this often after readiness; 0 is off.
        handshake_timeout_s: how long the handshake dialect waits for `handshake_acknowledged`.
    """

    layout: str = "enveloped"
    ready: str = "connection_established"
    timestamps: str = "float"
    errors: str = "error"
    auth: str = "any"
    auth_reject: str = "close"
    http_routes: bool = True
    heartbeat_interval_s: float = 0.0
    handshake_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"dialect {name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        if not isinstance(self.http_routes, bool):
            raise ValueError(f"dialect http_routes must be true or false, not {self.http_routes!r}")
        for name in ("heartbeat_interval_s", "handshake_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
                raise ValueError(f"dialect {name} must be a number of seconds from 0 to 3600, not {value!r}")
            object.__setattr__(self, name, float(value))
        if self.handshake_timeout_s == 0:
            raise ValueError("dialect handshake_timeout_s must be more than 0")

    # -- parsing -----------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str | None) -> Dialect:
        """A dialect from a preset name, `key=value,...`, or both (`flat,errors=error_message`).

        Raises:
            ValueError: an unknown preset, key or value, naming it.
        """
        changes: dict[str, Any] = {}
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                if key not in PRESETS:
                    raise ValueError(f"unknown dialect preset {key!r} (known: {', '.join(PRESETS)})")
                changes.update(PRESETS[key])
            else:
                changes[key] = _parse_value(key, value.strip())
        return cls.from_dict(changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Dialect:
        """A dialect from a partial dict of fields.

        Raises:
            ValueError: an unknown field or bad value, naming it.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ValueError(f"unknown dialect key {key!r} (known: {', '.join(known)})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_spec(self) -> str:
        """The `key=value,...` form of the fields that differ from the default."""
        default = Dialect()
        parts = [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in self.to_dict().items() if getattr(default, k) != v]
        return ",".join(parts) or "default"

    # -- rendering -------------------------------------------------------------------------

    def timestamp(self) -> float | str:
        """Now, in this dialect's timestamp format."""
        now = time.time()
        if self.timestamps == "iso":
            return datetime.fromtimestamp(now, timezone.utc).isoformat()
        return now

    def message(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A frame of type `kind` carrying `fields`, laid out per this dialect."""
        stamp = self.timestamp()
        if self.layout == "flat":
            return {"type": kind, **fields, "timestamp": stamp}
        if self.layout == "mixed":
            top = {k: fields[k] for k in MIXED_TOP_LEVEL if k in fields}
            rest = {k: v for k, v in fields.items() if k not in top}
            return {"type": kind, **top, "data": rest, "timestamp": stamp}
        return {"type": kind, "data": fields, "timestamp": stamp, "server_id": None}

    def error(self, text: str, code: str, *, suggestions: tuple[str, ...] = (), **details: Any) -> dict[str, Any]:
        """An error frame in this dialect's error form (PROTOCOL.md section 7)."""
        if self.errors == "error_message":
            return {"type": "error_message", "error_code": code, "error_message": text, "details": details,
                    "recovery_suggestions": list(suggestions), "timestamp": self.timestamp()}
        return {"type": "error", "message": text, "error_code": code, **details, "timestamp": self.timestamp()}


#: Named presets: each is the change from the default dialect.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "flat": {"layout": "flat"},
    "mixed": {"layout": "mixed"},
    "system_message": {"ready": "system_message"},
    "connection_ready": {"ready": "connection_ready"},
    "handshake": {"ready": "handshake"},
    "iso": {"timestamps": "iso"},
    "error_message": {"errors": "error_message"},
    "stripped_header": {"auth": "subprotocol_only"},
}


def _parse_value(key: str, text: str) -> Any:
    if key == "http_routes":
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"dialect http_routes must be true or false, not {text!r}")
    if key in ("heartbeat_interval_s", "handshake_timeout_s"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"dialect {key} must be a number of seconds, not {text!r}") from None
    return text
