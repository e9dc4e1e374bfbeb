"""The reference server: a real `websockets` server that reproduces each 1011 root cause on demand.

It speaks the protocol of PROTOCOL.md in any `Dialect`, and each root cause
of section 9 is a switch in `Faults` that can change while it runs. With no
fault on, it is the fixed backend: it queues messages sent before setup,
answers missing dependencies gracefully, builds every connection manager from
a valid configuration, and emits the five events to the requesting user. So
one scenario run against it twice, faulty and fixed, shows both the issue and
its remediation.

A connection goes through:

1. the HTTP upgrade (`_process_request`): health routes, then the token from the
   `Authorization` header or a subprotocol offer; no token is HTTP 401;
2. authentication: an invalid token gets an `AUTH_FAILED` error and close 1008;
3. setup (`_setup`): registration, the injected setup delay, the manager built by
   the factory, then the readiness marker; meanwhile the receive loop answers
   `system_health_check` at once and queues everything else (or, under the race
   fault, fails on it with 1011);
4. the message table (`_dispatch`), in arrival order.

Use it in-process (`async with ReferenceServer(secret) as server`) or as a
subprocess (`gp_lib.refserver.running_server`, `python -m gp_lib.refserver`).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gp_lib.auth import TokenError, mint_token, token_from_offer, verify_token
from gp_lib.protocol import (AGENT_REQUEST_ALIASES, HANDSHAKE_ACK, INTERNAL_ERROR, INVALID_TYPE, POLICY_VIOLATION,
                             SERVICES, decode, field as read_field)
from gp_lib.refserver.agent import UNAVAILABLE_TEXT, RunBook, run_agent, run_fallback, run_stalled
from gp_lib.dialects import Dialect
from gp_lib.refserver.factory import ConnectionManager, ConnectionManagerFactory, FactoryInitializationError
from gp_lib.refserver.faults import Faults

logger = logging.getLogger("gp_lib.refserver")

WS_PATH = "/ws"
RACE_REASON = "Internal error: message handled before connection setup"
FACTORY_REASON = "Factory initialization failed"
AUTH_REASON = "Authentication failed"
HANDSHAKE_REASON = "handshake not acknowledged"
#: What an agent run needs; `require_llm` adds llm_service.
RUN_NEEDS = ("agent_supervisor", "thread_service", "database")
#: What `message_received` needs.
MESSAGE_NEEDS = ("thread_service", "database")
MAX_QUEUED = 1000
RETRY_SUGGESTIONS = ("Try again in a moment.",)


@dataclass
class _Auth:
    """What the upgrade request proved: a user, or the problem with its token."""

    user_id: str | None
    offer: str | None
    problem: str | None = None


@dataclass
class _Connection:
    """The server's state for one open socket."""

    ws: ServerConnection
    user_id: str
    ready: bool = False
    manager: ConnectionManager | None = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    ack: asyncio.Future | None = None
    close_code: int | None = None
    upgraded: float = field(default_factory=time.monotonic)   # when the upgrade completed: setup counts from it


class ReferenceServer:
    """The WebSocket server of the toolkit, with fault injection.

    Args:
        secret: the HS256 secret tokens must be signed with.
        faults: the faults on at start (default: none).
        dialect: how messages are worded (default: `Dialect()`).
        host, port: where to listen; port 0 picks a free port.
    """

    def __init__(self, secret: str, *, faults: Faults | None = None, dialect: Dialect | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        if not secret:
            raise ValueError("secret must be a non-empty string")
        self._secret = secret
        self.initial_faults = faults or Faults()
        self.faults = self.initial_faults
        self.dialect = dialect or Dialect()
        self.host = host
        self.requested_port = port
        self.runs = RunBook()
        self._server: Server | None = None
        self._auth: weakref.WeakKeyDictionary[ServerConnection, _Auth] = weakref.WeakKeyDictionary()
        self._connections: list[_Connection] = []
        self._in_setup = 0
        self._tasks: set[asyncio.Task] = set()
        self._connections_total = 0
        self._ready_total = 0
        self._closes: Counter[int] = Counter()

    def __repr__(self) -> str:
        return f"ReferenceServer(url={self.url if self._server else None!r}, faults={self.faults.active})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening."""
        self._server = await serve(self._handle, self.host, self.requested_port,
                                   process_request=self._process_request,
                                   select_subprotocol=self._select_subprotocol,
                                   # websockets drops a handshake after 10 s: a stall must end in its 500
                                   open_timeout=max(10.0, self.dialect.stall_s + 5.0))

    async def close(self) -> None:
        """Close every connection (1001), stop listening and cancel the runs."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    # -- state shown to the admin API and health routes -------------------------------------------

    def reset_faults(self) -> Faults:
        """Back to the faults the server started with."""
        self.faults = self.initial_faults
        return self.faults

    def stats(self) -> dict[str, Any]:
        """Connection counts: total, open, closes by code, readiness markers sent."""
        return {"connections_total": self._connections_total, "open": len(self._connections),
                "closes": {str(code): n for code, n in sorted(self._closes.items())},
                "ready_total": self._ready_total}

    def mint_token(self, user_id: str, **claims: Any) -> str:
        """A token this server accepts, for `user_id` (keyword arguments as `gp_lib.auth.mint_token`)."""
        return mint_token(self._secret, user_id, **claims)

    def factory(self) -> ConnectionManagerFactory:
        """The connection-manager factory under the current faults."""
        config: dict[str, Any] = {"websocket_host": self.host, "websocket_port": self.port,
                                  "max_connections": 1000, "auth_required": True}
        if self.faults.factory:
            config.update(self.faults.factory_config)
        return ConnectionManagerFactory(config)

    def services(self) -> dict[str, str]:
        return {name: "down" if name in self.faults.services_down else "up" for name in SERVICES}

    def health(self) -> dict[str, Any]:
        """The body of `GET /ws/health`."""
        errors = self.factory().errors
        services = self.services()
        down = [name for name, state in services.items() if state == "down"]
        status = "unhealthy" if errors else "degraded" if down else "healthy"
        components = {"factory": {"status": "error" if errors else "ok", "errors": errors},
                      "connection_manager": {"status": "ok", "open_connections": len(self._connections)},
                      **{name: {"status": state} for name, state in services.items()}}
        body = {"status": status, **self.dialect.health_data, "components": components,
                "service_availability": {"allow_websocket_connections": not (down and self._refuses_when_down()),
                                         "critical_services": services, "unavailable": down}}
        if errors:
            body["error"] = "; ".join(errors)
        return body

    def _refuses_when_down(self) -> bool:
        """Whether a missing service makes this server refuse upgrades (a dialect's `not_ready`)."""
        return self.faults.dependencies == "close" and self.dialect.not_ready != "close"

    # -- the HTTP upgrade ------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in ("/health", "/ws/health") and self.dialect.http_routes:
            if path == "/health":
                return _json_response(ws, http.HTTPStatus.OK, {"status": "ok"})
            body = self.health()
            unhealthy = body["status"] == "unhealthy" and self.dialect.unhealthy_503
            status = http.HTTPStatus.SERVICE_UNAVAILABLE if unhealthy else http.HTTPStatus.OK
            return _json_response(ws, status, body)
        if path != WS_PATH:
            return _json_response(ws, http.HTTPStatus.NOT_FOUND, {"error": f"no route {path}"})
        refusal = await self._refusal(ws, request)
        if refusal is not None:
            return refusal
        if not self.dialect.auth_enforced:  # a demo mode: any token or none, everyone the same user
            self._auth[ws] = _Auth(self.dialect.demo_user, self._find_token(request)[1])
            return None
        token, offer = self._find_token(request)
        if token is None:
            where = ("a jwt./jwt-auth./bearer. subprotocol offer (the Authorization header is not read here)"
                     if self.dialect.auth == "subprotocol_only" else
                     "the Authorization header or a jwt./jwt-auth./bearer. subprotocol offer")
            return _json_response(ws, http.HTTPStatus.UNAUTHORIZED, {"error": f"authentication required: no token in {where}"})
        try:
            claims = verify_token(token, self._secret)
        except TokenError as exc:
            if self.dialect.auth_reject == "http":
                return _json_response(ws, http.HTTPStatus.UNAUTHORIZED, {"error": f"invalid token: {exc.problem}"})
            self._auth[ws] = _Auth(None, offer, exc.problem)
            return None
        self._auth[ws] = _Auth(str(claims["sub"]), offer)
        return None

    async def _refusal(self, ws: ServerConnection, request: Request) -> Response | None:
        """An upgrade refused before authentication: unsupported offers, or services down (per dialect)."""
        offers = [o.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for o in v.split(",") if o.strip()]
        if offers and self.dialect.unknown_offers == "refuse" and not any(_scheme(o) for o in offers):
            return _json_response(ws, http.HTTPStatus.FORBIDDEN, {"error": "No supported subprotocols"})
        if not (self._refuses_when_down() and self.faults.services_down):
            return None
        reason = f"Service not ready: {', '.join(self.faults.services_down)}"
        if self.dialect.not_ready == "stall_http_500":  # a readiness guard that queues, then gives up
            await asyncio.sleep(self.dialect.stall_s)
            return _json_response(ws, http.HTTPStatus.INTERNAL_SERVER_ERROR, {"error": reason})
        return _json_response(ws, http.HTTPStatus.FORBIDDEN, {"error": reason})

    def _find_token(self, request: Request) -> tuple[str | None, str | None]:
        """`(token, offer)`: from the first subprotocol offer that carries one, else the header."""
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            for offer in (part.strip() for part in value.split(",")):
                token = token_from_offer(offer) if offer else None
                if token:
                    return token, offer
        if self.dialect.auth == "any":
            scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), None
        return None, None

    def _select_subprotocol(self, ws: ServerConnection, subprotocols: Any) -> str | None:
        """Echo the offer that carried the token, or (dialect `offer_echo: scheme`) its scheme alone,
        whether or not the client offered that; accept no other subprotocol."""
        auth = self._auth.get(ws)
        if auth is None or auth.offer is None:
            return None
        if self.dialect.offer_echo == "scheme":
            return _scheme(auth.offer)
        return auth.offer if auth.offer in subprotocols else None

    # -- one connection ------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        auth = self._auth.pop(ws, None) or _Auth(None, None, "no token")
        self._connections_total += 1
        conn = _Connection(ws, user_id=auth.user_id or "")
        self._spawn(self._count_close(conn))
        if auth.problem is not None:
            await self._send(conn, self.dialect.error(
                f"Authentication failed: {auth.problem}", "AUTH_FAILED",
                suggestions=("Use a token signed with this server's JWT secret, with token_type and a valid issuer.",)))
            await self._close(conn, POLICY_VIOLATION, AUTH_REASON)
            return
        self._connections.append(conn)
        worker = asyncio.create_task(self._serve(conn))
        try:
            await self._receive(conn)
        finally:
            self._connections.remove(conn)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _receive(self, conn: _Connection) -> None:
        """The receive loop, from the upgrade on, concurrent with setup."""
        try:
            async for raw in conn.ws:
                await self._on_frame(conn, raw)
                if conn.close_code is not None:
                    return
        except ConnectionClosed:
            return

    async def _on_frame(self, conn: _Connection, raw: str | bytes) -> None:
        message = decode(raw)
        kind = message["type"]
        if kind == INVALID_TYPE:
            await self._send(conn, self.dialect.error(f"Invalid message: {message.problem}", "INVALID_MESSAGE",
                                                      suggestions=("Send a JSON object with a string type.",)))
        elif kind == "system_health_check" and self.dialect.health_check:
            await self._send(conn, self._system_status())
        elif not conn.ready and kind == HANDSHAKE_ACK and conn.ack is not None and not conn.ack.done():
            conn.ack.set_result(message)
        elif not conn.ready and self.faults.race:
            logger.warning("race fault: %s from %s handled before setup finished", kind, conn.user_id)
            await self._fail(conn, RACE_REASON, "RuntimeError")
        elif conn.inbox.qsize() >= MAX_QUEUED:
            await self._close(conn, POLICY_VIOLATION, "too many queued messages")
        else:
            conn.inbox.put_nowait(message)

    async def _serve(self, conn: _Connection) -> None:
        """Setup, then the queued messages in arrival order."""
        if not await self._setup(conn):
            return
        heartbeat = None
        if self.dialect.heartbeat_interval_s:
            heartbeat = asyncio.create_task(self._heartbeat(conn))
        try:
            while True:
                await self._dispatch(conn, await conn.inbox.get())
        finally:
            if heartbeat is not None:
                heartbeat.cancel()

    async def _setup(self, conn: _Connection) -> bool:
        """The per-connection setup; True when the readiness marker went out."""
        faults = self.faults
        others = self._in_setup
        self._in_setup += 1
        try:  # until setup's end counted from the upgrade: a loop busy with other handshakes does not lengthen it
            delay_s = (faults.setup_ms + faults.setup_ms_per_concurrent * others) / 1000
            await asyncio.sleep(max(0.0, conn.upgraded + delay_s - time.monotonic()))
        finally:
            self._in_setup -= 1
        try:
            conn.manager = self.factory().create_manager(conn.user_id)
        except FactoryInitializationError as exc:
            logger.warning("factory fault: %s", exc)
            await self._fail(conn, FACTORY_REASON, type(exc).__name__)
            return False
        extra: dict[str, Any] = {}
        if self.dialect.ready == "handshake":
            conn.ack = asyncio.get_running_loop().create_future()
            extra = {"thread_id": f"thread_{uuid.uuid4().hex[:16]}", "run_id": f"run_{uuid.uuid4().hex[:16]}"}
            await self._send(conn, self.dialect.message("handshake_response", **extra))
            try:
                await asyncio.wait_for(conn.ack, self.dialect.handshake_timeout_s)
            except TimeoutError:
                await self._close(conn, POLICY_VIOLATION, HANDSHAKE_REASON)
                return False
        marker = self.dialect.ready_marker(conn.manager.connection_id, conn.user_id, **extra)
        conn.ready = True
        self._ready_total += 1
        await self._send(conn, marker)
        return True

    async def _heartbeat(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(self.dialect.heartbeat_interval_s)
            await self._send(conn, self.dialect.message("heartbeat"))

    # -- the message table ---------------------------------------------------------------------------

    async def _dispatch(self, conn: _Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.faults.events == "loop_crash":  # the message loop dies on the message: a normal close, no answer
            logger.warning("loop_crash fault: %s from %s left unanswered", kind, conn.user_id)
            await self._close(conn, 1000, _reason(self.dialect.crash_reason))
        elif kind == "ping":
            echo = read_field(message, "timestamp")
            await self._send(conn, self.dialect.message("pong", **({"client_timestamp": echo} if echo else {})))
        elif kind in AGENT_REQUEST_ALIASES:
            await self._agent_request(conn, message)
        elif kind == "message" and self.dialect.message_received:
            await self._agent_request(conn, message, received=True)
        elif kind == "status_request" and self.dialect.status_request:
            status = self.runs.status(read_field(message, "thread_id"), conn.user_id)
            await self._send(conn, self.dialect.message("status_update", **status))
        elif kind == "heartbeat":
            await self._send(conn, self.dialect.message("heartbeat_ack"))
        else:
            await self._send(conn, self.dialect.message("ack", received_type=kind))

    async def _agent_request(self, conn: _Connection, message: dict[str, Any], *, received: bool = False) -> None:
        """An agent run, after `message_received` when `received`; dependencies decide how it goes."""
        faults = self.faults
        thread_id = read_field(message, "thread_id")
        thread_id = thread_id if isinstance(thread_id, str) and thread_id else f"thread_{uuid.uuid4().hex[:16]}"
        if received:
            missing = self._missing(message, MESSAGE_NEEDS)
            if missing:
                await self._unavailable(conn, missing, thread_id=thread_id)
                return
            await self._send(conn, self.dialect.message("message_received", thread_id=thread_id,
                                                        message_id=f"msg_{uuid.uuid4().hex[:16]}"))
        needs = RUN_NEEDS + (("llm_service",) if self.dialect.test_flags and _flag(message, "require_llm") else ())
        missing = self._missing(message, needs)
        if missing and faults.dependencies == "close":
            await self._unavailable(conn, missing, thread_id=thread_id)
            return
        agent = read_field(message, "agent") or read_field(message, "agent_name")
        run = self.runs.start(conn.user_id, thread_id, agent if isinstance(agent, str) else None)
        emit = partial(self._emit, conn)
        step_s = faults.agent_step_ms / 1000
        if not missing:
            work = run_agent(run, emit, step_s=step_s, events_fault=faults.events,
                             emit_elsewhere=partial(self._emit_elsewhere, conn))
        elif faults.dependencies == "silent":
            work = run_stalled(run, emit)
        else:
            work = run_fallback(run, emit, partial(self._warn, conn), step_s=step_s, missing=missing)
        self._spawn(work)

    def _missing(self, message: dict[str, Any], needs: tuple[str, ...]) -> list[str]:
        down = set(self.faults.services_down)
        if self.dialect.test_flags and _flag(message, "simulate_agent_unavailable"):
            down.add("agent_supervisor")
        return [name for name in SERVICES if name in needs and name in down]

    async def _unavailable(self, conn: _Connection, missing: list[str], **context: Any) -> None:
        """A request that cannot be served: silence, close 1011, or the graceful answer."""
        mode = self.faults.dependencies
        if mode == "silent":
            return
        if mode == "close":
            await self._close(conn, INTERNAL_ERROR, _reason(f"Service not ready: {', '.join(missing)}"))
            return
        await self._warn(conn, UNAVAILABLE_TEXT, {**context, "unavailable": missing})

    async def _warn(self, conn: _Connection, text: str, details: dict[str, Any]) -> None:
        await self._send(conn, self.dialect.error(text, "SERVICE_UNAVAILABLE", suggestions=RETRY_SUGGESTIONS, **details))

    async def _emit(self, conn: _Connection, kind: str, fields: dict[str, Any]) -> None:
        await self._send(conn, self.dialect.message(kind, **fields))

    async def _emit_elsewhere(self, conn: _Connection, kind: str, fields: dict[str, Any]) -> None:
        """The misroute fault: to the most recently connected other user, or nowhere."""
        others = [c for c in self._connections if c.ready and c.user_id != conn.user_id]
        if others:
            await self._emit(others[-1], kind, fields)

    def _system_status(self) -> dict[str, Any]:
        errors = self.factory().errors
        services = self.services()
        problems = errors + [f"{name} is down" for name, state in services.items() if state == "down"]
        return self.dialect.message("system_status", factory_status="error" if errors else "ok",
                                    services=services, errors=problems)

    # -- sending and closing --------------------------------------------------------------------------

    async def _send(self, conn: _Connection, frame: dict[str, Any]) -> None:
        """Send one frame; a frame for a closed socket is dropped."""
        try:
            await conn.ws.send(json.dumps(frame))
        except ConnectionClosed:
            pass

    async def _fail(self, conn: _Connection, reason: str, error_type: str) -> None:
        """A failure during setup, as the dialect shows it: close 1011 naming the cause, or an error frame
        with the exception's type and then 1011 "<mode> mode error" (the real backend's main mode)."""
        if self.dialect.failure == "reason":
            await self._close(conn, INTERNAL_ERROR, reason)
            return
        await self._send(conn, self.dialect.error(f"Connection error in {self.dialect.mode} mode", "CONNECTION_ERROR",
                                                  error_type=error_type, mode=self.dialect.mode))
        await self._close(conn, INTERNAL_ERROR, _reason(self.dialect.mode_error_reason()))

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        if conn.close_code is None:
            conn.close_code = code
        await conn.ws.close(code, reason)

    async def _count_close(self, conn: _Connection) -> None:
        await conn.ws.wait_closed()
        self._closes[conn.close_code or conn.ws.close_code or 1006] += 1

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _scheme(offer: str) -> str | None:
    """`jwt-auth` or `bearer`: what a server that answers with the scheme selects for an offer."""
    lowered = offer.lower()
    if lowered.startswith("bearer"):
        return "bearer"
    return "jwt-auth" if lowered.startswith(("jwt.", "jwt-auth")) or lowered == "jwt" else None


def _flag(message: dict[str, Any], name: str) -> bool:
    return read_field(message, name) is True


def _reason(text: str) -> str:
    """A close reason cut to the 123 bytes a close frame allows."""
    return text.encode()[:123].decode(errors="ignore")


def _json_response(ws: ServerConnection, status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    response = ws.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
