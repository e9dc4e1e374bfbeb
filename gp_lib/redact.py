"""Keep secrets out of every table, trace, log and report.

Secrets are registered once, where they enter the process (read from the
environment, minted, fetched); `redact` then scrubs them from any text. Any
JWT-shaped string and any `jwt.<base64url>` subprotocol offer is scrubbed too,
so a token minted by another process cannot leak either.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_secrets: set[str] = set()

# Three base64url segments, the first one a JSON header: '{"' encodes as 'eyJ'.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_OFFER = re.compile(r"\b(jwt|jwt-auth|bearer)\.[A-Za-z0-9_=.-]{16,}", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9_.=-]{8,}", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from now on."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str | None) -> str | None:
    """Text with every registered secret and every token-shaped string removed."""
    if not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _JWT.sub(REDACTED, text)
    text = _OFFER.sub(lambda m: f"{m.group(1)}.{REDACTED}", text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


def is_secret_name(name: str) -> bool:
    """True for parameter names whose values must never be shown."""
    lowered = name.lower()
    return any(word in lowered for word in ("secret", "password", "token", "bypass_key", "api_key")) and not lowered.endswith("_env")
