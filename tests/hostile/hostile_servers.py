"""Real misbehaving servers on 127.0.0.1, for the hostile-target tests.

Each server speaks raw HTTP/1.1 and raw WebSocket frames on asyncio streams,
so it can break the protocol in ways a correct library would refuse to: a
redirect on the upgrade, frames of any size or shape, garbage, silence. It
runs on an event loop of its own in a thread, so a `gp` subprocess or an
in-process client can talk to it, and it records the head of every request
it receives (`requests`), so a test can tell what a client sent where.

    with HostileServer(BEHAVIOURS["injection"]) as server:
        ...  # connect to server.url

Every wait has a deadline and every loop a count: a server stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

TIME_SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
#: The JWT secret the tests mint with; the token-echo server echoes it too, as a server with a leaky log would.
SECRET = "hostile-jwt-secret-0123456789-abcdefghij"
#: A credential placed in URLs (userinfo, api_key): it must never be written anywhere either.
URL_SECRET = "url-cred-5ecr3t-QWERTY-987654"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_LIMIT = 64 * 1024
HOLD_S = 30.0  # the longest a silent server keeps a connection before it lets go


@dataclass
class Request:
    """The head of one request a hostile server received."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def token(self) -> str | None:
        """The bearer token the client presented, if any."""
        value = self.headers.get("authorization", "")
        return value[7:] if value.lower().startswith("bearer ") else None


@dataclass
class Conn:
    """One accepted connection: its request and the streams to misbehave on."""

    request: Request
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: "HostileServer"
    upgraded: bool = False

    async def respond(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        self.writer.write("\r\n".join(head).encode("latin-1") + body)
        await self.writer.drain()

    async def upgrade(self) -> None:
        """Answer 101 as RFC 6455 asks (no subprotocol chosen)."""
        key = self.request.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.upgraded = True
        self.writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode("utf-8", "surrogatepass"))

    async def send_json(self, message: Any) -> None:
        await self.send_text(json.dumps(message))

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        self.writer.write(frame(opcode, payload))
        await self.writer.drain()

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame, then wait (bounded) for the client's before hanging up."""
        await self.send_frame(0x8, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader.read(READ_LIMIT), 2.0 * TIME_SCALE)

    async def hold(self) -> None:
        """Keep the connection open, ignoring what arrives, until the client closes (a close frame is answered,
        as any server does), leaves, or HOLD_S passes."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(HOLD_S):
                while data := await self.reader.read(READ_LIMIT):
                    if data[0] == 0x88 and self.upgraded:  # the client's close frame (FIN + opcode 8)
                        await self.send_frame(0x8, (1000).to_bytes(2, "big"))
                        return


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, length])
    elif length < 2**16:
        head = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
    return head + payload


Behaviour = Callable[[Conn], Awaitable[None]]


@dataclass
class HostileServer:
    """A server that answers every connection with `behaviour`; `requests` holds what it received."""

    behaviour: Behaviour
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    peer: "HostileServer | None" = None   # a second server a behaviour may redirect to

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HostileServer":
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._listener = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=READ_LIMIT)
            self.port = self._listener.sockets[0].getsockname()[1]
            started.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("hostile server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            self._listener.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HOLD_S + 10):
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                await self.behaviour(Conn(request, reader, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * TIME_SCALE)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = (lines[0].split(" ") + ["", "", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(min(length, READ_LIMIT))  # drained, not kept
    return Request(method, path, headers)


# -- the encodings a server may echo a credential in -------------------------------------------

def encodings(secret: str) -> dict[str, str]:
    """`secret` as a careless server might echo it."""
    raw = secret.encode()
    return {
        "plain": secret,
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "json_escaped": "".join(f"\\u{ord(c):04x}" for c in secret),
        "percent": "".join(f"%{b:02X}" for b in raw),
        "split": " ".join(secret[i:i + 9] for i in range(0, len(secret), 9)),
    }


# -- behaviours -----------------------------------------------------------------------------------

READY = {"type": "connection_established", "data": {"connection_id": "c-1", "user_id": "hostile-user"}}


async def redirect_upgrade(conn: Conn) -> None:
    """302 on the upgrade to another port, with a credential in the Location."""
    peer = conn.server.peer
    location = f"ws://user:{URL_SECRET}@127.0.0.1:{peer.port if peer else 9}/ws?api_key={URL_SECRET}"
    await conn.respond(302, {"Location": location})


async def recorder(conn: Conn) -> None:
    """Where redirects point: it only records what arrived, and refuses."""
    await conn.respond(404)


async def nested_json(conn: Conn) -> None:
    await conn.upgrade()
    await conn.send_json(READY)
    depth = 100_000
    await conn.send_text('{"type": "agent_started", "data": ' + "[" * depth + "]" * depth + "}")
    await conn.send_text("[" * 2000 + "]" * 2000)
    await conn.close(1000, "done")


async def huge_frame(conn: Conn) -> None:
    """A 6 MB frame: over the client's max_size, which then closes 1009."""
    await conn.upgrade()
    await conn.send_json(READY)
    await conn.send_text(json.dumps({"type": "agent_thinking", "data": {"thought": "x" * 6_000_000}}))
    await conn.hold()


async def big_string(conn: Conn) -> None:
    """A 1 MB string in the fields that reach tables and reports."""
    await conn.upgrade()
    huge = "U" * 1_000_000
    await conn.send_json({"type": "connection_established", "data": {"connection_id": "c-1", "user_id": huge}})
    await conn.send_json({"type": "error", "error": {"code": "E", "message": huge}, "run_id": huge})
    await conn.hold()


async def token_echo(conn: Conn) -> None:
    """Echo the presented token and the JWT secret, in every encoding, in every field a server fills."""
    token = conn.request.token or ""
    await conn.upgrade()
    echoes = {f"{what}_{name}": text for what, secret in (("token", token), ("secret", SECRET))
              for name, text in encodings(secret).items()}
    await conn.send_json({**READY, "echo": echoes})
    for name, text in echoes.items():
        await conn.send_json({"type": "error", "error": {"code": "AUTH_DEBUG", "message": f"you sent {text}"},
                              "user_id": text, "run_id": name})
    # raw text, not JSON: a JSON \u escape that stays an escape in the payload
    await conn.send_text('{"type": "agent_started", "user_id": "' + encodings(token)["json_escaped"] + '"}')
    await conn.send_text("not json " + encodings(token)["split"])
    await conn.hold()


INJECTION = "x\r\n# Owned\r\n<script>alert(1)</script><img src=x onerror=alert(2)>\x1b[31mRED\x1b]0;pwned\x07|`"


async def injection(conn: Conn) -> None:
    """Markdown, HTML and terminal control text in user ids, error texts and the close reason."""
    await conn.upgrade()
    await conn.send_json({"type": "connection_established", "data": {"connection_id": INJECTION, "user_id": INJECTION}})
    await conn.send_json({"type": "error", "error": {"code": INJECTION, "message": INJECTION}})
    await asyncio.sleep(0.05)
    await conn.close(1011, "\r\n# pwned <script>x</script>\x1b[2J\x1b]0;t\x07")


async def silent_tcp(conn: Conn) -> None:
    """Accept, read the upgrade request, never answer."""
    await conn.hold()


async def silent_ws(conn: Conn) -> None:
    """Upgrade, then say nothing."""
    await conn.upgrade()
    await conn.hold()


async def garbage_http(conn: Conn) -> None:
    conn.writer.write(b"\x00\xff\xfeGARBAGE \x1b[31m not http at all\r\n\r\n" + os.urandom(256))
    await conn.writer.drain()


async def garbage_ws(conn: Conn) -> None:
    await conn.upgrade()
    await conn.send_json(READY)
    conn.writer.write(b"\x7f\xff" + os.urandom(512))  # reserved opcode, bogus length
    await conn.writer.drain()
    await conn.hold()


async def redirect_auth(conn: Conn) -> None:
    """An auth service that redirects the token request to another port (302, then 307 on a second path)."""
    peer = conn.server.peer
    status = 307 if conn.request.path.startswith("/temporary") else 302
    await conn.respond(status, {"Location": f"http://127.0.0.1:{peer.port if peer else 9}/auth/e2e/test-auth"})


#: Every hostile server by name.
BEHAVIOURS: dict[str, Behaviour] = {
    "redirect_upgrade": redirect_upgrade,
    "nested_json": nested_json,
    "huge_frame": huge_frame,
    "big_string": big_string,
    "token_echo": token_echo,
    "injection": injection,
    "silent_tcp": silent_tcp,
    "silent_ws": silent_ws,
    "garbage_http": garbage_http,
    "garbage_ws": garbage_ws,
    "redirect_auth": redirect_auth,
}


@contextlib.contextmanager
def serving(name: str):
    """The named hostile server, with a recorder beside it for the redirecting ones."""
    with HostileServer(recorder) as peer, HostileServer(BEHAVIOURS[name], peer=peer) as server:
        yield server


def url_with_credentials(server: HostileServer) -> str:
    """The server's URL carrying credentials in userinfo and in the query, as careless users paste them."""
    return f"ws://admin:{URL_SECRET}@127.0.0.1:{server.port}/ws?api_key={urllib.parse.quote(URL_SECRET)}&room=1"
