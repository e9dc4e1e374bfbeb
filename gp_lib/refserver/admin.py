"""The admin side of the reference server: fault switches, counters, and a stand-in auth service.

Scenarios flip faults while the server runs and read its counters, and
staging-style tests need the auth service's e2e token endpoint; both live
here, on a separate port bound to 127.0.0.1 only, so nothing outside the
machine can change the faults or mint tokens; and nothing inside it that is a
web page either: a request with an `Origin` header is refused (403), the
`Host` must be the loopback address with the admin port (else 421), and writes
need `Content-Type: application/json` (else 415). It is a deliberately tiny
HTTP/1.1 server (one request per connection, JSON in and out) on asyncio
streams, to need nothing beyond the standard library.

Routes:

    GET  /faults               the current faults
    PUT  /faults, POST /faults  merge a partial JSON object; 400 names a bad field
    POST /faults/reset         back to the faults the server started with
    GET  /stats                {"connections_total", "open", "closes": {"1011": n}, "ready_total"}
    GET  /health               {"status": "ok"}
    POST /auth/e2e/test-auth   the staging auth service's e2e endpoint (PROTOCOL.md section 2)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import json
import logging
from typing import Any

from gp_lib.refserver.server import ReferenceServer

logger = logging.getLogger("gp_lib.refserver.admin")

ADMIN_HOST = "127.0.0.1"
#: The names the admin API answers to in the Host header (with its port): anything else is DNS rebinding.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
E2E_AUTH_PATH = "/auth/e2e/test-auth"
ACCESS_LIFETIME_S = 900
REFRESH_LIFETIME_S = 7 * 24 * 3600
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0

Reply = tuple[int, dict[str, Any]]


class AdminServer:
    """The admin HTTP server of one `ReferenceServer`.

    Args:
        server: the reference server it controls.
        port: port on 127.0.0.1; 0 picks a free one.
        environment: "production" refuses e2e test auth with 403.
        bypass_key: the `X-E2E-Bypass-Key` the e2e endpoint requires; None answers 503.
    """

    def __init__(self, server: ReferenceServer, *, port: int = 0, environment: str = "test",
                 bypass_key: str | None = None):
        self.server = server
        self.requested_port = port
        self.environment = environment
        self._bypass_key = bypass_key
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(self._handle, ADMIN_HOST, self.requested_port,
                                                    limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the admin server is not started")
        return self._listener.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{ADMIN_HOST}:{self.port}"

    # -- routes -----------------------------------------------------------------------------

    def route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """`(status, JSON body)` for one request; headers are keyed in lower case."""
        path = path.split("?", 1)[0].rstrip("/") or "/"
        routes = {
            "/faults": {"GET": self._get_faults, "PUT": self._set_faults, "POST": self._set_faults},
            "/faults/reset": {"POST": self._reset_faults},
            "/stats": {"GET": lambda h, b: (200, self.server.stats())},
            "/health": {"GET": lambda h, b: (200, {"status": "ok"})},
            E2E_AUTH_PATH: {"POST": self._test_auth},
        }
        if path not in routes:
            return 404, {"error": f"no route {path}"}
        handler = routes[path].get(method)
        if handler is None:
            return 405, {"error": f"{method} not allowed on {path} (allowed: {', '.join(routes[path])})"}
        return handler(headers, body)

    def refusal(self, method: str, headers: dict[str, str]) -> Reply | None:
        """Why a request is refused before routing, or None: a web page in the user's browser must not
        reach this API. Browsers send an Origin on cross-origin requests, a Host of the page's own name on
        DNS rebinding, and can send a "simple" POST only as text/plain or a form."""
        if "origin" in headers:
            return 403, {"error": "requests with an Origin header are refused: the admin API is not for web pages"}
        if headers.get("host", "").lower() not in {f"{host}:{self.port}" for host in LOOPBACK_NAMES}:
            return 421, {"error": f"Host must be 127.0.0.1:{self.port} (or localhost, [::1]), "
                                  f"not {headers.get('host', 'none')[:80]!r}"}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if method in ("POST", "PUT") and content_type != "application/json":
            return 415, {"error": f"{method} needs Content-Type: application/json, not {content_type[:80]!r}"}
        return None

    def _get_faults(self, headers: dict[str, str], body: bytes) -> Reply:
        return 200, self.server.faults.to_dict()

    def _set_faults(self, headers: dict[str, str], body: bytes) -> Reply:
        try:
            changes = json.loads(body or b"{}")
            self.server.faults = self.server.faults.merged(changes)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError too
            return 400, {"error": str(exc)}
        logger.info("faults now %s", self.server.faults.active or "none")
        return 200, self.server.faults.to_dict()

    def _reset_faults(self, headers: dict[str, str], body: bytes) -> Reply:
        return 200, self.server.reset_faults().to_dict()

    def _test_auth(self, headers: dict[str, str], body: bytes) -> Reply:
        if not self._bypass_key:
            return 503, {"error": "e2e test auth is not configured: E2E_OAUTH_SIMULATION_KEY is not set on the server"}
        if self.environment == "production":
            return 403, {"error": "e2e test auth is refused in production"}
        given = headers.get("x-e2e-bypass-key", "")
        if not given or not hmac.compare_digest(given.encode(), self._bypass_key.encode()):
            return 401, {"error": "missing or invalid X-E2E-Bypass-Key"}
        try:
            payload = json.loads(body or b"null")
        except (ValueError, RecursionError):
            payload = None
        email = payload.get("email") if isinstance(payload, dict) else None
        if not isinstance(email, str) or not email.strip():
            return 422, {"error": "body must be a JSON object with a string email"}
        name = payload.get("name") if isinstance(payload.get("name"), str) else email.split("@")[0]
        permissions = payload.get("permissions")
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            permissions = ["read", "write"]
        user_id = "e2e_" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]
        access = self.server.mint_token(user_id, email=email, permissions=permissions, lifetime_s=ACCESS_LIFETIME_S)
        refresh = self.server.mint_token(user_id, email=email, permissions=permissions, lifetime_s=REFRESH_LIFETIME_S,
                                         extra_claims={"type": "refresh", "token_type": "refresh"})
        return 200, {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                     "expires_in": ACCESS_LIFETIME_S, "user": {"id": user_id, "email": email, "name": name}}

    # -- HTTP/1.1 --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, headers, body = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                status, reply = 400, {"error": f"bad request: {exc or type(exc).__name__}"}
            else:
                status, reply = self.refusal(method, headers) or self.route(method, path, headers, body)
            writer.write(_response(status, reply))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """`(method, path, headers, body)` of one request; headers keyed in lower case."""
    head = await reader.readuntil(b"\r\n\r\n")  # the reader's limit bounds it
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"malformed request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        raise ValueError(f"Content-Length must be an integer up to {MAX_BODY_BYTES}")
    body = await reader.readexactly(int(length)) if int(length) else b""
    return parts[0].upper(), parts[1], headers, body


def _response(status: int, body: dict[str, Any]) -> bytes:
    payload = (json.dumps(body) + "\n").encode()
    phrase = http.HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + payload
