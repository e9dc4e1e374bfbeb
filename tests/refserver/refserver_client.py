"""A plain websockets client for the reference server tests, with deadlines everywhere.

Kept out of conftest.py so test modules can import it by a name no other
test directory uses. Every wait has a deadline, scaled by the GP_TIME_SCALE
environment variable on slow machines, and every loop a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.error
import urllib.request
from typing import Any, AsyncIterator, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gp_lib.auth import connect_kwargs, mint_token
from gp_lib.dialects import Dialect
from gp_lib.protocol import HANDSHAKE_RESPONSE, decode, handshake_reply, is_ready_marker

TIME_SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
FRAME_LIMIT = 500


def scaled(seconds: float) -> float:
    """A client-side timeout, stretched on slow machines."""
    return seconds * TIME_SCALE


class Session:
    """One open client connection; every frame received is kept in `frames`."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        """The next frame; AssertionError on timeout, ConnectionClosed when closed."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), scaled(timeout))
        except TimeoutError:
            raise AssertionError(f"no frame within {timeout} s; so far: {self.types()}") from None
        frame = decode(raw)
        self.frames.append(frame)
        return frame

    async def _remaining(self, timeout: float) -> AsyncIterator[float]:
        """The time left before one deadline, once per frame, for at most FRAME_LIMIT frames."""
        deadline = asyncio.get_running_loop().time() + scaled(timeout)
        for _ in range(FRAME_LIMIT):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            yield remaining

    async def until(self, match: str | Callable[[dict[str, Any]], bool], timeout: float = 2.0) -> dict[str, Any]:
        """The first frame that matches a type or predicate, within one deadline."""
        predicate = (lambda f: f["type"] == match) if isinstance(match, str) else match
        async for remaining in self._remaining(timeout):
            try:
                frame = await self.recv(remaining / TIME_SCALE)
            except ConnectionClosed:
                raise AssertionError(f"closed {self.ws.close_code} {self.ws.close_reason!r} before {match!r}; "
                                     f"frames: {self.types()}") from None
            if predicate(frame):
                return frame
        raise AssertionError(f"no {match!r} within {timeout} s; frames: {self.types()}")

    async def ready(self, timeout: float = 2.0) -> dict[str, Any]:
        """Wait for the readiness marker, acknowledging a handshake on the way."""
        frame = await self.until(lambda f: is_ready_marker(f) or f["type"] == HANDSHAKE_RESPONSE, timeout)
        reply = handshake_reply(frame)
        if reply is None:
            return frame
        await self.send(**reply)
        return await self.until(is_ready_marker, timeout)

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Every frame received in the next `seconds` (a bounded observation)."""
        received: list[dict[str, Any]] = []
        async for remaining in self._remaining(seconds):
            try:
                received.append(decode(await asyncio.wait_for(self.ws.recv(), remaining)))
            except (TimeoutError, ConnectionClosed):
                break
        self.frames.extend(received)
        return received

    async def closed(self, timeout: float = 2.0) -> tuple[int | None, str | None]:
        """Read until the server closes; `(close code, reason)`."""
        async for remaining in self._remaining(timeout):
            try:
                self.frames.append(decode(await asyncio.wait_for(self.ws.recv(), remaining)))
            except TimeoutError:
                break
            except ConnectionClosed:
                return self.ws.close_code, self.ws.close_reason
        raise AssertionError(f"not closed within {timeout} s; frames: {self.types()}")

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


class Wire:
    """Connect to one reference server as a user, with tokens signed by its secret."""

    def __init__(self, url: str, secret: str, dialect: Dialect | None = None):
        self.url = url
        self.secret = secret
        self.dialect = dialect or Dialect()

    def token(self, user_id: str = "alice", **claims: Any) -> str:
        return mint_token(self.secret, user_id, **claims)

    @contextlib.asynccontextmanager
    async def session(self, user_id: str = "alice", *, token: str | None = None, transport: str = "both",
                      ready: bool = True, **kwargs: Any) -> AsyncIterator[Session]:
        """A connection as `user_id` (a fresh token unless given); waits for readiness unless `ready=False`."""
        options = connect_kwargs(token or self.token(user_id), transport, extra_offers=self.dialect.offers())
        options.update(kwargs)
        async with connect(self.url, open_timeout=scaled(5), close_timeout=scaled(2), **options) as ws:
            session = Session(ws)
            if ready:
                await session.ready()
            yield session


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """`(status, JSON body)` of one HTTP request; error statuses are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=scaled(5)) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except ValueError:
            return exc.code, {"text": text.decode(errors="replace")}
