"""One traced WebSocket connection attempt: connect, wait for readiness, send, receive, close.

Whatever the target does (refuses, rejects the upgrade, closes, sends garbage,
stays silent) ends up as data in an `AttemptRecord`, never as an exception:
scenarios can be written as straight-line code. A background reader stamps
every frame on arrival, so timings do not depend on when the caller reads.

    async with TracedConnection(url, attempt_id="a1", token=token, user_id="u1") as conn:
        if await conn.wait_ready():
            await conn.send({"type": "ping"})
            await conn.receive_until(lambda m: m["type"] == "pong", timeout_s=5)
    record = conn.record   # outcome, timings, close code and reason, frames
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import ssl
import time
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urljoin, urlparse

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI, PayloadTooBig,
                                   ProtocolError, TooManyFragments)
from websockets.uri import parse_uri

from gp_lib import auth, protocol
from gp_lib.redact import redact, register_secret
from gp_lib.trace import AttemptRecord, frame_row

Predicate = Callable[[dict[str, Any]], bool]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_UNREAD = 10_000  # messages kept for the caller to read; more are counted but dropped
#: Why the library fails a connection whose peer broke WebSocket framing (it then closes 1002, 1007 or 1009 itself).
PEER_VIOLATIONS = (ProtocolError, PayloadTooBig, TooManyFragments, UnicodeDecodeError)
REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})
#: errno values that mean the client ran out of its own resources, not that the target refused.
CLIENT_EXHAUSTION = {errno.EMFILE: "file descriptors", errno.ENFILE: "file descriptors (system-wide)",
                     errno.EADDRNOTAVAIL: "ephemeral ports or local addresses", errno.ENOBUFS: "socket buffers",
                     errno.ENOMEM: "memory"}


class _Connect(connect):
    """websockets' `connect`, but a redirect is followed only when asked, and only to the same origin.

    websockets follows 3xx by default and, across origins, drops only the
    Authorization, Cookie and Proxy-Authorization headers: the `jwt.<token>`
    subprotocol offer and headers such as X-User-ID would still reach the
    other host. So a redirect ends the attempt (outcome `redirected`) unless
    `follow_redirects` is set and the Location has the same scheme, host and port.
    """

    def __init__(self, *args: Any, follow_redirects: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.follow_redirects = follow_redirects

    def process_redirect(self, exc: Exception) -> Exception | str:
        if not self.follow_redirects:
            return exc
        origin = self.ws_uri
        try:
            followed = super().process_redirect(exc)
        except (LookupError, ValueError):  # two Location headers, or one that is not a URL
            return exc
        if isinstance(followed, str):
            new = parse_uri(followed)
            if (new.secure, new.host, new.port) != (origin.secure, origin.host, origin.port):
                return exc
        return followed


def _location(url: str, headers: Any) -> str:
    """Where a redirect points, as evidence; a hostile answer's Location may be doubled or not a URL."""
    try:
        return urljoin(url, headers.get("Location", ""))
    except (LookupError, ValueError):
        return "(an unreadable Location)"


def _proxy_setting(url: str) -> bool | None:
    """No proxy for loopback (and no per-connection proxy lookup); the environment's proxy otherwise."""
    return None if urlparse(url).hostname in LOOPBACK else True


class TracedConnection:
    """One connection attempt, recorded into `self.record`.

    Args:
        url: the WebSocket endpoint, `ws://` or `wss://`.
        attempt_id: unique id of this attempt in its run.
        token: the JWT to present, or None to connect unauthenticated.
        user_id: the user the token is for.
        scenario, arm, condition: labels copied into the attempts row.
        auth_transport: `both`, `header` or `subprotocol` (PROTOCOL.md section 2).
        extra_headers: more upgrade headers, e.g. the test-mode headers.
        extra_offers: bare subprotocols offered besides the token's (`Dialect.offers`).
        open_timeout_s: deadline for the upgrade.
        ready_timeout_s: default deadline for the readiness marker.
        close_timeout_s: how long a client close waits for the server's reply.
        max_frames: frames recorded per attempt; the rest are counted only.
        extra: scenario columns added to the attempts row.
        follow_redirects: follow a redirect of the upgrade to the same origin (scheme, host, port);
            never to another, which would receive the credentials. Off by default.
    """

    def __init__(self, url: str, *, attempt_id: str, token: str | None = None, user_id: str | None = None,
                 scenario: str = "", arm: str = "live", condition: str = "", auth_transport: str = "both",
                 extra_headers: dict[str, str] | None = None, extra_offers: tuple[str, ...] = (),
                 open_timeout_s: float = 10.0,
                 ready_timeout_s: float = 10.0, close_timeout_s: float = 2.0, max_frames: int = 10_000,
                 extra: dict[str, Any] | None = None, follow_redirects: bool = False):
        self.url = url
        self.follow_redirects = follow_redirects
        self.token = token
        register_secret(token)
        self.auth_transport = auth_transport
        self.extra_headers = extra_headers
        self.extra_offers = tuple(extra_offers)
        self.open_timeout_s = open_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.close_timeout_s = close_timeout_s
        self.max_frames = max_frames
        self.record = AttemptRecord(attempt_id=attempt_id, user_id=user_id, scenario=scenario, arm=arm,
                                    condition=condition, auth_transport=auth_transport if token else "none",
                                    extra=dict(extra or {}))
        self._t0 = time.perf_counter()
        self._ws: ClientConnection | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._deadline_missed: str | None = None
        self._auth_error_seen = False
        self._peer_violation = False

    # -- state ----------------------------------------------------------------------

    def now_ms(self) -> float:
        """Milliseconds since this attempt started (monotonic)."""
        return (time.perf_counter() - self._t0) * 1000.0

    @property
    def started_monotonic(self) -> float:
        """When this attempt started, on this process's `time.perf_counter` clock (to align processes)."""
        return self._t0

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._closed.is_set()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> bool:
        """Perform the upgrade. False, with the outcome recorded, when it fails."""
        record = self.record
        self._t0 = time.perf_counter()
        record.started_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            kwargs = auth.connect_kwargs(self.token, self.auth_transport, self.extra_headers, self.extra_offers)
            self._ws = await _Connect(self.url, open_timeout=self.open_timeout_s, ping_interval=None,
                                      close_timeout=self.close_timeout_s, max_size=protocol.MAX_FRAME_BYTES,
                                      proxy=_proxy_setting(self.url), follow_redirects=self.follow_redirects,
                                      **kwargs)
        except Exception as exc:  # every failure to connect is evidence, never a crash
            self._connect_failed(exc)
            return False
        record.t_open_ms = self.now_ms()
        record.handshake_status = 101
        record.subprotocol = redact(self._ws.subprotocol)
        self._mark("open")
        self._reader = asyncio.create_task(self._read())
        return True

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait for a readiness marker (answering a three-step handshake on the way).

        False when the connection closed first or the deadline passed; the
        latter records the outcome `ready_timeout`.
        """
        if self._ws is None:
            return False
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        await self._wait_either(self._ready, timeout_s)
        if self._ready.is_set():
            return True
        if not self._closed.is_set():
            self._deadline_missed = self._deadline_missed or "ready_timeout"
        return False

    async def send(self, message: dict[str, Any], *, at_ms: float | None = None) -> bool:
        """Send one JSON message, at `at_ms` after the upgrade when given. False if closed."""
        if not self.is_open:
            return False
        if at_ms is not None and self.record.t_open_ms is not None:
            delay = (self.record.t_open_ms + at_ms - self.now_ms()) / 1000.0
            if delay > 0:
                await asyncio.sleep(delay)
        return await self._send(message)

    async def receive(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message (readiness and heartbeats excluded), or None on close or timeout."""
        if self._ws is None or (self._closed.is_set() and self._inbox.empty()):
            return None
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def receive_until(self, predicate: Predicate, timeout_s: float) -> list[dict[str, Any]]:
        """Messages up to and including the first that satisfies `predicate`.

        When the deadline passes first on an open connection, the outcome
        `receive_timeout` is recorded; a close simply ends the list.
        """
        received: list[dict[str, Any]] = []
        if self._ws is None:
            return received
        deadline = time.perf_counter() + timeout_s
        while True:
            remaining = deadline - time.perf_counter()
            message = await self.receive(max(remaining, 0.0)) if remaining > 0 else None
            if message is None:
                if not self._closed.is_set() and self._inbox.empty():
                    self._deadline_missed = self._deadline_missed or "receive_timeout"
                return received
            received.append(message)
            if predicate(message):
                return received

    async def collect(self, duration_s: float) -> list[dict[str, Any]]:
        """Every message that arrives within `duration_s`; silence is not a failure here."""
        received: list[dict[str, Any]] = []
        deadline = time.perf_counter() + duration_s
        while (remaining := deadline - time.perf_counter()) > 0:
            message = await self.receive(remaining)
            if message is None:
                break
            received.append(message)
        return received

    async def close(self) -> None:
        """Close from the client side (1000) if still open, and stop the reader."""
        if self._ws is None:
            return
        if not self._closed.is_set():
            try:
                await self._ws.close()
            except Exception:  # the peer may vanish mid-close; the reader records how it ended
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, self.close_timeout_s + 1.0)
            except asyncio.TimeoutError:
                pass  # wait_for cancelled the stuck reader; a cancellation of the caller propagates
        self._record_close()

    def finish(self) -> AttemptRecord:
        """Settle the outcome and return the record."""
        record = self.record
        if record.outcome is not None:
            return record
        if record.close_code == protocol.INTERNAL_ERROR:  # the server's own frame said 1011, even if ours crossed it
            record.outcome = "closed_1011"
        elif record.closed_by in ("server", "none"):
            if record.close_code == protocol.POLICY_VIOLATION and protocol.is_auth_close(
                    record.close_reason, self._auth_error_seen, self.is_ready):
                record.outcome = "auth_rejected"
            else:
                record.outcome = "closed_other"
        elif self._peer_violation:
            record.outcome = "protocol_error"
        elif self._deadline_missed:
            record.outcome = self._deadline_missed
        else:
            record.outcome = "ok"
        return record

    async def __aenter__(self) -> "TracedConnection":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
        self.finish()

    # -- internals --------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> bool:
        text = json.dumps(message, separators=(",", ":"))
        t_ms = self.now_ms()
        try:
            await self._ws.send(text)
        except ConnectionClosed:
            return False
        except Exception as exc:
            self._note_error(exc)
            return False
        record = self.record
        if record.t_first_send_ms is None and message.get("type") != protocol.HANDSHAKE_ACK:
            record.t_first_send_ms = t_ms
        record.frames_sent += 1
        self._keep(frame_row(record.attempt_id, t_ms, "sent", message, raw=text))
        return True

    async def _read(self) -> None:
        record = self.record
        ws = self._ws
        try:
            async for raw in ws:
                t_ms = self.now_ms()
                message = protocol.decode(raw)
                record.frames_received += 1
                self._keep(frame_row(record.attempt_id, t_ms, "received", message, raw=message.raw))
                if not message.valid:
                    record.invalid_frames += 1
                if protocol.is_auth_failure(message):
                    self._auth_error_seen = True
                reply = protocol.handshake_reply(message)
                if reply is not None:
                    await self._send(reply)
                    continue
                if protocol.is_ready_marker(message) and not self._ready.is_set():
                    record.t_ready_ms = t_ms
                    record.server_user = protocol.text_field(message, "user_id")
                    self._mark("ready")
                    self._ready.set()
                    continue
                if message["type"] == "heartbeat" or self._inbox.qsize() >= MAX_UNREAD:
                    continue  # a flood nobody reads is counted in frames_received, not kept
                self._inbox.put_nowait(message)
        except ConnectionClosed as exc:
            if isinstance(exc.__cause__, PEER_VIOLATIONS):  # the peer broke framing; the library failed the connection
                self._peer_violation = True
                self._note_error(exc.__cause__)
        except Exception as exc:  # anything else the library raises is evidence too
            self._peer_violation = True
            self._note_error(exc)
        finally:
            self._record_close()
            self._closed.set()
            self._inbox.put_nowait(None)

    def _record_close(self) -> None:
        """Record how the connection ended; called once it is over."""
        record = self.record
        if self._ws is None or record.t_close_ms is not None:
            return
        state = self._ws.protocol
        record.t_close_ms = self.now_ms()
        if isinstance(state.parser_exc, PEER_VIOLATIONS):  # e.g. a frame over max_size: the library closed 1009
            self._peer_violation = True
            self._note_error(state.parser_exc)
        if state.close_rcvd is None and self._peer_violation and state.close_sent is not None:
            record.close_code = state.close_sent.code   # the code the client failed the connection with
            record.closed_by = "client"
        elif state.close_rcvd is not None:
            record.close_code = state.close_rcvd.code
            record.close_reason = redact(state.close_rcvd.reason)
            record.closed_by = "client" if state.close_sent is not None and not state.close_rcvd_then_sent else "server"
        elif state.close_sent is not None:
            record.close_code = 1006
            record.closed_by = "client"
        else:
            record.close_code = 1006
            record.closed_by = "none"
        self._mark("close", {"code": record.close_code, "reason": record.close_reason, "by": record.closed_by})

    def _connect_failed(self, exc: BaseException) -> None:
        record = self.record
        record.t_close_ms = self.now_ms()
        self._note_error(exc)
        exhausted = _exhaustion(exc)
        if exhausted:
            record.outcome = "client_error"
            record.error = f"the client ran out of {exhausted} ({type(exc).__name__}: {exc}); not the target's doing"
        elif isinstance(exc, InvalidStatus) and exc.response.status_code in REDIRECT_STATUSES:
            status = exc.response.status_code
            record.handshake_status = status
            location = _location(self.url, exc.response.headers)
            record.outcome = "redirected"
            record.error = redact(f"HTTP {status} redirect to {location[:300]}, not followed: "
                                  + ("it leaves the origin" if self.follow_redirects
                                     else "it would carry the credentials (follow_redirects is off)"))
        elif isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            record.handshake_status = status
            body = exc.response.body.decode("utf-8", "replace")[:300] if exc.response.body else ""
            record.error = redact(f"HTTP {status} instead of the upgrade" + (f": {body.strip()}" if body.strip() else ""))
            record.outcome = "auth_rejected" if status in (401, 403) else "refused"
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            record.outcome = "open_timeout"
            record.error = f"no upgrade within {self.open_timeout_s:g} s"
        elif isinstance(exc, socket.gaierror):
            record.outcome = "dns_error"
        elif isinstance(exc, ssl.SSLError):
            record.outcome = "tls_error"
        elif isinstance(exc, ConnectionRefusedError):
            record.outcome = "refused"
        elif isinstance(exc, (InvalidURI, ValueError)):
            record.outcome = "protocol_error"
        elif isinstance(exc, InvalidHandshake):
            record.outcome = "protocol_error"
        elif isinstance(exc, OSError):
            record.outcome = "refused"
        else:
            record.outcome = "protocol_error"
        self._mark("error", {"outcome": record.outcome, "error": record.error})

    def _note_error(self, exc: BaseException) -> None:
        """Record the first error; what the peer said in it is cut, redacted text."""
        if self.record.error_type is None:
            self.record.error_type = type(exc).__name__
            self.record.error = redact(str(exc)[:500]) or type(exc).__name__

    def _mark(self, kind: str, detail: dict[str, Any] | None = None) -> None:
        self._keep(frame_row(self.record.attempt_id, self.now_ms(), "mark", detail, kind=kind))

    def _keep(self, row: dict[str, Any]) -> None:
        if len(self.record.frames) < self.max_frames:
            self.record.frames.append(row)

    async def _wait_either(self, event: asyncio.Event, timeout_s: float) -> None:
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._closed.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def _exhaustion(exc: BaseException) -> str | None:
    """Which of the client's own resources `exc` says ran out (descriptors, ports, memory), or None."""
    if isinstance(exc, MemoryError):
        return "memory"
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, OSError) and error.errno in CLIENT_EXHAUSTION:
            return CLIENT_EXHAUSTION[error.errno]
    return None
