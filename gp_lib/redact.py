"""Keep secrets out of every table, trace, log and report.

Secrets are registered once, where they enter the process (read from the
environment, minted, fetched); `redact` then scrubs them from any text. Any
JWT-shaped string and any `jwt.<base64url>` subprotocol offer is scrubbed too,
so a token minted by another process cannot leak either.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "<redacted>"

_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None

# Three base64url segments, the first one a JSON header: '{"' encodes as 'eyJ'.
_JWT = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
_TOKENS = re.compile(
    rf"(?P<jwt>{_JWT})"
    r"|\b(?P<offer>jwt|jwt-auth|bearer)\.[A-Za-z0-9_=.-]{16,}"
    r"|(?P<bearer>Bearer\s+)[A-Za-z0-9_.=-]{8,}",
    re.IGNORECASE,
)
_FULL_JWT = re.compile(_JWT)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from now on.

    JWT-shaped values need no registering: every one is scrubbed by shape.
    """
    global _secrets_pattern
    if value and len(value) >= 4 and value not in _secrets and not _FULL_JWT.fullmatch(value):
        # as written, and as it appears inside JSON text (quotes, backslashes, non-ASCII escaped)
        _secrets.update({value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]})
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _token_replacement(match: re.Match[str]) -> str:
    if match.group("offer"):
        return f"{match.group('offer')}.{REDACTED}"
    if match.group("bearer"):
        return match.group("bearer") + REDACTED
    return REDACTED


def redact(text: str | None) -> str | None:
    """Text with every registered secret and every token-shaped string removed."""
    if not text:
        return text
    if _secrets_pattern is not None:
        text = _secrets_pattern.sub(REDACTED, text)
    return _TOKENS.sub(_token_replacement, text)


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
