"""Mint, inspect, verify and fetch the HS256 JWTs of PROTOCOL.md section 2.

Secrets never travel as arguments from notebooks or parameter files: they are
read from the environment variable a parameter names (`secret_from_env`), and
every secret and token is registered with `gp_lib.redact` as it enters.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import jwt

from gp_lib.redact import redact, register_secret


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The secret is the backend's, not ours to choose: a short one is no reason to warn on every token."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")
        yield

ISSUER = "netra-auth-service"
ALGORITHM = "HS256"
DEFAULT_LIFETIME_S = 30 * 60
MAX_AGE_S = 24 * 3600
CLOCK_SKEW_S = 60
AUTH_TRANSPORTS = ("both", "header", "subprotocol")
#: The largest token response read from the auth service.
MAX_AUTH_BODY = 1 << 20
#: Subprotocol prefixes a server accepts; the client offers the first.
SUBPROTOCOL_PREFIXES = ("jwt.", "jwt-auth.", "bearer.")


class AuthError(Exception):
    """Authentication could not be set up: the message says what and why."""


class TokenError(AuthError):
    """A token failed verification; `problem` is the first plain-words reason."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


# -- secrets ----------------------------------------------------------------------

def secret_from_env(env_name: str) -> str:
    """The secret held by environment variable `env_name`.

    Raises:
        AuthError: the variable is unset or empty, naming it.
    """
    value = os.environ.get(env_name, "")
    if not value:
        raise AuthError(f"environment variable {env_name} is not set; it must hold the JWT signing secret "
                        f"(the parameter jwt_secret_env names which variable to read)")
    register_secret(value)
    return value


# -- minting ----------------------------------------------------------------------

def mint_token(
    secret: str,
    user_id: str,
    *,
    email: str | None = None,
    permissions: Iterable[str] = ("read", "write"),
    lifetime_s: float = DEFAULT_LIFETIME_S,
    issuer: str = ISSUER,
    extra_claims: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed access token carrying the claims strict validators expect."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "email": email or f"{user_id}@golden-path.test",
        "permissions": list(permissions),
        "iat": issued,
        "exp": int(issued + lifetime_s),
        "type": "access",
        "token_type": "access",
        "iss": issuer,
        "jti": uuid.uuid4().hex,
    }
    claims.update(extra_claims or {})
    claims = {k: v for k, v in claims.items() if v is not None}
    with _quiet():
        token = jwt.encode(claims, secret, algorithm=ALGORITHM)
    register_secret(token)
    return token


# -- inspection and verification ----------------------------------------------------

@dataclass
class TokenReport:
    """What a token says about itself, and what is wrong with it."""

    header: dict[str, Any]
    claims: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_token(token: str, secret: str | None = None, *, now: float | None = None,
                  issuer: str = ISSUER) -> TokenReport:
    """Decode a token without trusting it and list its problems in plain words.

    The signature is checked only when `secret` is given.
    """
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:  # DecodeError, and the header checks PyJWT makes (kid, crit)
        return TokenReport({}, {}, [f"malformed token: {exc}"])
    problems: list[str] = []
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        problems.append(f"unsupported algorithm {algorithm!r} (expected {ALGORITHM})")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _finite_number(exp):
        problems.append("no exp claim" if exp is None else f"exp claim {exp!r} is not a time")
    elif exp <= now:
        problems.append(f"expired {_ago(now - exp)} ago")
    if not _finite_number(iat):
        problems.append("no iat claim" if iat is None else f"iat claim {iat!r} is not a time")
    elif iat > now + CLOCK_SKEW_S:
        problems.append(f"issued in the future ({_ago(iat - now)} ahead, more than {CLOCK_SKEW_S} s of clock skew)")
    elif now - iat > MAX_AGE_S:
        problems.append(f"issued {_ago(now - iat)} ago, older than 24 h")
    if "token_type" not in claims:
        problems.append("no token_type claim")
    elif claims["token_type"] != "access":
        problems.append(f"token_type is {claims['token_type']!r}, not 'access'")
    if claims.get("iss") != issuer:
        problems.append(f"wrong issuer {claims.get('iss')!r} (expected {issuer!r})")
    if not claims.get("sub"):
        problems.append("no sub claim (user id)")
    if secret is not None and algorithm == ALGORITHM:
        try:
            with _quiet():
                jwt.decode(token, secret, algorithms=[ALGORITHM], options={
                    "verify_exp": False, "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError:
            problems.append("bad signature: signed with another secret")
        except jwt.PyJWTError as exc:
            problems.append(f"signature not verifiable: {exc}")
    return TokenReport(header, claims, problems)


def verify_token(token: str, secret: str, *, now: float | None = None, issuer: str = ISSUER) -> dict[str, Any]:
    """The claims of a token that passes every strict check.

    Raises:
        TokenError: the first problem `inspect_token` found.
    """
    report = inspect_token(token, secret, now=now, issuer=issuer)
    if report.problems:
        raise TokenError(report.problems[0])
    return report.claims


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- carrying the token -------------------------------------------------------------

def subprotocol_offer(token: str) -> str:
    """The `jwt.<base64url(token)>` offer, unpadded."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"jwt.{encoded}"


def token_from_offer(offer: str) -> str | None:
    """The token inside a subprotocol offer of any accepted form, or None."""
    for prefix in SUBPROTOCOL_PREFIXES:
        if offer.lower().startswith(prefix):
            body = offer[len(prefix):]
            if prefix == "jwt." and body.count(".") != 2:  # base64url of the token, or the raw token
                try:
                    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return None
            return body
    return None


def connect_kwargs(token: str | None, transport: str = "both", extra_headers: dict[str, str] | None = None,
                   extra_offers: tuple[str, ...] = ()) -> dict[str, Any]:
    """`additional_headers` and `subprotocols` for a websockets connect call.

    `extra_offers` are bare subprotocols offered after the token's, for servers that select
    a scheme (`jwt-auth`) instead of echoing the offer (`Dialect.offers`).

    Raises:
        ValueError: `transport` is not one of AUTH_TRANSPORTS.
    """
    if transport not in AUTH_TRANSPORTS:
        raise ValueError(f"auth_transport must be one of {', '.join(AUTH_TRANSPORTS)}, not {transport!r}")
    headers = dict(extra_headers or {})
    subprotocols: list[str] = []
    if token:
        if transport in ("both", "header"):
            headers["Authorization"] = f"Bearer {token}"
        if transport in ("both", "subprotocol"):
            subprotocols.append(subprotocol_offer(token))
            subprotocols.extend(extra_offers)
    return {"additional_headers": headers, "subprotocols": subprotocols or None}


def test_mode_headers(user_id: str, environment: str) -> dict[str, str]:
    """The optional test-mode headers some deployments read."""
    return {"X-Test-Mode": "true", "X-E2E-Test": "true", "X-Test-Environment": environment, "X-User-ID": user_id}


# -- staging tokens -----------------------------------------------------------------

class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib copies every header but the content ones onto a redirected request, whatever the host
    (CPython issue 77842), so a 3xx would hand the X-E2E-Bypass-Key to the Location: never follow one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class StagingTokenSource:
    """Tokens from the auth service's e2e endpoint, cached until shortly before expiry.

    Args:
        auth_url: base URL of the auth service, e.g. `http://localhost:8081`.
        bypass_key_env: environment variable holding the `X-E2E-Bypass-Key`.
        timeout_s: HTTP timeout for one request.
        refresh_margin_s: a cached token is replaced this long before it expires.
    """

    ENDPOINT = "/auth/e2e/test-auth"

    def __init__(self, auth_url: str, bypass_key_env: str = "E2E_OAUTH_SIMULATION_KEY", *,
                 timeout_s: float = 10.0, refresh_margin_s: float = 60.0):
        self.auth_url = auth_url.rstrip("/")
        self.bypass_key_env = bypass_key_env
        self.timeout_s = timeout_s
        self.refresh_margin_s = refresh_margin_s
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[str, float, str]] = {}
        self._lock = threading.Lock()

    def token(self, email: str, name: str | None = None,
              permissions: Iterable[str] = ("read", "write")) -> tuple[str, str]:
        """`(access_token, user_id)` for `email`, from the cache when still fresh.

        Raises:
            AuthError: naming the status or network failure and what to do.
        """
        key = (email, tuple(sorted(permissions)))
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[1] - self.refresh_margin_s > time.time():
                return cached[0], cached[2]
        token, expires_at, user_id = self._fetch(email, name or email.split("@")[0], list(permissions))
        with self._lock:
            self._cache[key] = (token, expires_at, user_id)
        return token, user_id

    def _fetch(self, email: str, name: str, permissions: list[str]) -> tuple[str, float, str]:
        key = os.environ.get(self.bypass_key_env, "")
        if not key:
            raise AuthError(f"environment variable {self.bypass_key_env} is not set; it must hold the staging "
                            f"E2E bypass key (the parameter bypass_key_env names which variable to read)")
        register_secret(key)
        url = self.auth_url + self.ENDPOINT
        body = json.dumps({"email": email, "name": name, "permissions": permissions}).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-E2E-Bypass-Key": key})
        deadline = time.monotonic() + self.timeout_s
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                body, ended = read_body(response, MAX_AUTH_BODY + 1, deadline)  # one more tells an oversized body
            if not ended:
                raise TimeoutError
            if len(body) > MAX_AUTH_BODY:
                raise AuthError(f"auth service at {url} answered 200 with a body over the {MAX_AUTH_BODY}-byte limit")
            payload = json.loads(body.decode() or "{}")
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = redact(str(exc.headers.get("Location", "nowhere")))[:300]
                raise AuthError(f"auth service at {url} answered {exc.code}, a redirect to {location}; not followed: "
                                "it would carry the bypass key to another address (set auth_url to the final URL)") \
                    from None
            raise AuthError(_status_message(url, exc.code)) from None
        except http.client.HTTPException as exc:
            raise AuthError(f"auth service at {url} did not answer with HTTP ({type(exc).__name__})") from None
        except (TimeoutError, OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise AuthError(f"auth service at {url} did not answer within {self.timeout_s:g} s") from None
            if isinstance(reason, ConnectionRefusedError):
                raise AuthError(f"auth service at {url} refused the connection: is it running?") from None
            raise AuthError(f"auth service at {url} could not be reached: {reason}") from None
        except (ValueError, RecursionError):
            raise AuthError(f"auth service at {url} answered 200 with a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise AuthError(f"auth service at {url} answered 200 with a body that is not a JSON object")
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"auth service at {url} answered 200 without an access_token")
        register_secret(token)
        if isinstance(payload.get("refresh_token"), str):
            register_secret(payload["refresh_token"])
        expires_in = payload.get("expires_in")
        expires_in = float(expires_in) if isinstance(expires_in, (int, float)) else 900.0
        user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
        user_id = str(user.get("id") or inspect_token(token).claims.get("sub") or email)
        return token, time.time() + expires_in, user_id


def read_body(response: Any, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Up to `limit` bytes of an HTTP body, and whether it ended before `deadline`: urllib's timeout is per
    read, so a server dripping a byte at a time would otherwise hold us `limit` timeouts long."""
    read = getattr(response, "read1", response.read)
    body = bytearray()
    while len(body) < limit:
        if time.monotonic() >= deadline:
            return bytes(body), False
        chunk = read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body), True


def _status_message(url: str, status: int) -> str:
    meaning = {
        401: "the bypass key is missing or invalid",
        403: "e2e test auth is refused in production",
        422: "the request body was rejected (email, name, permissions)",
        503: "e2e test auth is not configured on this auth service",
    }.get(status, "unexpected status")
    return f"auth service at {url} answered {status}: {meaning}"
