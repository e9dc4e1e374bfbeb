"""Keep secrets out of every table, trace, log and report.

Secrets are registered once, where they enter the process (read from the
environment, minted, fetched); `redact` then scrubs them from any text. Any
JWT-shaped string and any `jwt.<base64url>` subprotocol offer is scrubbed too,
so a token minted by another process cannot leak either, and so are the
userinfo and sensitive query values (`api_key`, `token`, `password`...) of
every URL.

A server may echo a credential in another form than it was sent, so text is
also read decoded: percent escapes, `\\uXXXX` and `\\xXX` escapes undone and
whitespace dropped (a token split by spaces or line breaks), and base64 or
base64url runs decoded at every alignment. What is found there is redacted in
the text as written.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from typing import Any, Iterator

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
_NOT_TOKEN_CHAR = re.compile(r"[^A-Za-z0-9_-]")
#: Where a `_TOKENS` match can start (lower case): the regex engine cannot skip ahead to these by itself.
_TOKEN_STARTS = ("eyj", "jwt", "bearer")
#: Lower case for ASCII letters only, for text whose `lower()` is longer (a few letters lower-case to two
#: characters): one character for one keeps positions; no other character lower-cases to a letter of
#: `_TOKEN_STARTS`.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: Credentials in URLs: `scheme://user:password@host`, and query parameters that carry a secret.
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://)[^\s/?#@\"'<>\\]+@", re.IGNORECASE)
SENSITIVE_PARAMETERS = ("api_key", "apikey", "api-key", "key", "token", "access_token", "refresh_token", "id_token",
                        "auth", "secret", "client_secret", "password", "passwd", "pwd", "signature", "sig", "jwt",
                        "bypass_key", "session")
_QUERY = re.compile(r"(?P<head>[?&;](?:%s)=)[^&#\s\"'<>\\]+" % "|".join(re.escape(n) for n in SENSITIVE_PARAMETERS),
                    re.IGNORECASE)
#: What the decoded view undoes: percent, \u and \x escapes (also after an escaped backslash, as in JSON
#: inside JSON), escaped and plain whitespace.
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\x[0-9A-Fa-f]{2}|\\[nrt]")
_ENCODED = re.compile(_ESCAPE.pattern + r"|\s+")
#: Base64 of a token is over 100 characters, of a registered secret at least 8 (those are matched as text too).
_BASE64_MIN = 40
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{%d,}" % _BASE64_MIN)  # from a run's start only
_ALPHABET = str.maketrans("-_", "+/")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from now on, in every form it may be echoed in.

    JWT-shaped values need no registering: every one is scrubbed by shape, encoded or not.
    """
    global _secrets_pattern
    if not value or len(value) < 4 or _FULL_JWT.fullmatch(value):
        return
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], re.sub(r"\s+", "", value)}
    forms |= set(_base64_cores(value))
    if forms <= _secrets:
        return
    _secrets.update(form for form in forms if len(form) >= 4)
    ordered = sorted(_secrets, key=len, reverse=True)
    _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _base64_cores(value: str) -> list[str]:
    """The part of base64 and base64url text that any encoding of `value` holds, at each of the three
    byte alignments it can have inside longer data (the characters that depend on neighbours dropped)."""
    raw = value.encode()
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[(offset * 4 + 2) // 3 + (1 if offset else 0):len(encoded) - 4]
        if len(core) >= 8:
            cores += [core, core.translate(str.maketrans("+/", "-_"))]
    return cores


def _token_replacement(match: re.Match[str]) -> str:
    if match.group("offer"):
        return f"{match.group('offer')}.{REDACTED}"
    if match.group("bearer"):
        return match.group("bearer") + REDACTED
    return REDACTED


def redact(text: str | None) -> str | None:
    """Text with every registered secret, every token-shaped string and every URL credential removed."""
    if not text:
        return text
    lowered = _lowered(text)
    if any(start in lowered for start in _TOKEN_STARTS):
        text = _tokens_sub(text, lowered)
    text = _redact_encoded(text)  # before the plain secrets: redacting one could break a token's shape
    if _secrets_pattern is not None and any(form in text for form in _secrets):
        text = _secrets_pattern.sub(REDACTED, text)
    if "://" in text:
        text = _USERINFO.sub(lambda m: m.group("head") + REDACTED + "@", text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m.group("head") + REDACTED, text)
    return text


def _lowered(text: str) -> str:
    """`text` in lower case, character for character (so that positions in it are positions in `text`)."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)  # slower, but aligned


def _tokens_sub(text: str, lowered: str) -> str:
    """`_TOKENS.sub(_token_replacement, text)`, trying the regex only where a match can start: in long
    text (traces) the plain `sub` tries it at every character."""
    starts = sorted({i for start in _TOKEN_STARTS for i in _find_all(lowered, start)})
    pieces, position, jwt_fails_until = [], 0, 0
    for start in starts:
        is_jwt_start = lowered.startswith("eyj", start)
        if start < position or (is_jwt_start and start < jwt_fails_until):
            continue
        match = _TOKENS.match(text, start)  # `\b` still sees the character before `start`
        if match:
            pieces += [text[position:start], _token_replacement(match)]
            position = match.end()
        elif is_jwt_start:
            # a token's first part runs to the end of this run of token characters whatever eyJ it starts
            # at, so every later eyJ in the run fails as this one did: trying each is quadratic on a hostile
            # `eyJeyJeyJ...` (a 100 KB field took 20 s)
            end = _NOT_TOKEN_CHAR.search(text, start)
            jwt_fails_until = end.start() if end else len(text)
    return "".join(pieces) + text[position:] if pieces else text


def _find_all(text: str, word: str) -> Iterator[int]:
    at = text.find(word)
    while at >= 0:
        yield at
        at = text.find(word, at + 1)


# -- encoded forms -------------------------------------------------------------------------------

def _redact_encoded(text: str) -> str:
    """Redact what only a decoding shows: base64 runs hiding a token or secret, and escaped or
    whitespace-split secrets and tokens (found in the decoded view, redacted where they are written)."""
    spans = []
    if len(text) >= _BASE64_MIN:
        spans += [m.span() for m in _BASE64_RUN.finditer(text) if _hides_a_secret(m.group(0))]
    view = _view(text)
    if view != text and (_FULL_JWT.search(view) or (_secrets_pattern is not None
                                                    and any(form in view for form in _secrets))):
        mapped = _View(text)
        found = [m.span() for m in _FULL_JWT.finditer(mapped.text)]
        if _secrets_pattern is not None:
            found += [m.span() for m in _secrets_pattern.finditer(mapped.text)]
        spans += [mapped.span(*span) for span in found]
    if not spans:
        return text
    pieces, position = [], 0
    for start, end in sorted(spans):
        while start > position and text[start - 1] == "\\":  # the backslashes before an escape go too:
            start -= 1                                        # JSON text stays JSON
        if end > position:
            pieces += [text[position:max(start, position)], REDACTED]
            position = end
    return "".join(pieces) + text[position:]


def _view(text: str) -> str:
    """`_ENCODED.sub(_decoded, text)`, fast: an escape holds no whitespace and starts with `%` or a backslash,
    which no whitespace run does, so the escapes are those of each whitespace-free piece, decoded alone."""
    pieces = text.split()  # the same whitespace as `\s`
    if "%" in text or "\\" in text:
        pieces = [_ESCAPE.sub(_decoded, piece) if "%" in piece or "\\" in piece else piece for piece in pieces]
    return "".join(pieces)


def _hides_a_secret(run: str) -> bool:
    """Whether base64(url) text decodes, at some alignment, to a token or a registered secret."""
    run = run.translate(_ALPHABET)
    for skip in range(4):
        usable = len(run) - skip - (len(run) - skip) % 4
        try:
            decoded = base64.b64decode(run[skip:skip + usable]).decode("latin-1")
        except (binascii.Error, ValueError):
            continue
        if _FULL_JWT.search(decoded) or (_secrets_pattern is not None and _secrets_pattern.search(decoded)):
            return True
    return False


def _decoded(match: re.Match[str]) -> str:
    token = match.group(0)
    if token.isspace() or token in ("\\n", "\\r", "\\t"):
        return ""
    return chr(int(token[2:] if token[0] == "\\" else token[1:], 16))


class _View:
    """`text` decoded as `_ENCODED` says, and the way back from view positions to text positions."""

    def __init__(self, text: str):
        parts: list[str] = []
        self.view_starts: list[int] = []    # per segment: where it starts in the view
        self.segments: list[tuple[int, int, bool]] = []  # per segment: (start in text, length in text, literal)
        position = length = 0
        for match in _ENCODED.finditer(text):
            if match.start() > position:
                self._add(parts, text[position:match.start()], position, True, length)
                length += match.start() - position
            shown = _decoded(match)
            if shown:
                self._add(parts, shown, match.start(), False, length, match.end() - match.start())
                length += 1
            position = match.end()
        if position < len(text):
            self._add(parts, text[position:], position, True, length)
        self.text = "".join(parts)

    def _add(self, parts: list[str], shown: str, start: int, literal: bool, at: int, size: int = 0) -> None:
        parts.append(shown)
        self.view_starts.append(at)
        self.segments.append((start, size or len(shown), literal))

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The text positions of view characters `start` to `end` (exclusive)."""
        return self._position(start, first=True), self._position(end - 1, first=False)

    def _position(self, index: int, *, first: bool) -> int:
        segment = bisect.bisect_right(self.view_starts, index) - 1
        origin, size, literal = self.segments[segment]
        if literal:
            return origin + index - self.view_starts[segment] + (0 if first else 1)
        return origin if first else origin + size


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
