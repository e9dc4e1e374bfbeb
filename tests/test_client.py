"""The traced client against small purpose-built servers on loopback.

Each route of the test server does one thing a misbehaving target does; the
client must turn every one of them into an outcome in the attempts table.
"""

import asyncio
import base64
import hashlib
import json
import os
import socket

import pytest
from websockets.asyncio.server import serve

from gp_lib import auth
from gp_lib.client import TracedConnection

SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
TOKEN = auth.mint_token("client-test-secret-0123456789", "u1")


async def _route(ws):
    path = ws.request.path
    if path == "/ready":
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c1"}}))
    elif path == "/system_message":
        await ws.send(json.dumps({"type": "system_message", "data": {"event": "connection_established",
                                                                     "connection_ready": True}}))
    elif path == "/handshake":
        await ws.send(json.dumps({"type": "handshake_response", "thread_id": "t9", "run_id": "r9"}))
        ack = json.loads(await ws.recv())
        if ack == {"type": "handshake_acknowledged", "thread_id": "t9", "run_id": "r9"}:
            await ws.send(json.dumps({"type": "handshake_complete"}))
    elif path == "/close1011":
        await ws.close(1011, "Factory initialization failed")
        return
    elif path == "/auth1008":
        await ws.send(json.dumps({"type": "error", "error_code": "AUTH_FAILED", "message": "token expired"}))
        await ws.close(1008, "Authentication failed")
        return
    elif path.startswith("/close1008"):  # /close1008/<reason>, closed before readiness
        await ws.close(1008, path.partition("/close1008")[2].lstrip("/").replace("-", " "))
        return
    elif path == "/drop":
        ws.transport.abort()
        return
    elif path == "/garbage":
        await ws.send(json.dumps({"type": "connection_ready"}))
        await ws.send("<html>oops</html>")
        await ws.send(b"\x00\x01")
        await ws.send(json.dumps({"no": "type"}))
    elif path == "/echo_token":
        await ws.send(json.dumps({"type": "connection_established"}))
        await ws.send(json.dumps({"type": "echo", "authorization": ws.request.headers.get("Authorization"),
                                  "offer": ws.request.headers.get("Sec-WebSocket-Protocol")}))
    elif path == "/bad_utf8":
        await ws.send(json.dumps({"type": "connection_established"}))
        await ws.send(b"\xff\xfe", text=True)  # a text frame that is not UTF-8 breaks the protocol
    elif path == "/too_big":
        await ws.send(json.dumps({"type": "connection_established"}))
        await ws.send("x" * (2**22 + 1))  # one byte over the client's max_size
    elif path == "/binary_json":
        await ws.send(json.dumps({"type": "connection_established"}))
        await ws.send(json.dumps({"type": "pong"}).encode())
    elif path == "/flood":
        await ws.send(json.dumps({"type": "connection_established"}))
        for n in range(50):
            await ws.send(json.dumps({"type": "heartbeat" if n % 2 else "tick", "n": n}))
    # /silent and everything else: stay quiet until the client leaves
    try:
        async for message in ws:
            if json.loads(message).get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
    except Exception:
        pass


def _http(connection, request):
    if request.path == "/http500":
        return connection.respond(500, "upstream exploded\n")
    if request.path == "/http401":
        return connection.respond(401, "missing token\n")
    return None


def _select(connection, offers):
    return offers[0] if offers else None


@pytest.fixture
async def server():
    async with serve(_route, "127.0.0.1", 0, process_request=_http, select_subprotocol=_select) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def _attempt(url, body=None, **kwargs):
    conn = TracedConnection(url, attempt_id="a1", token=kwargs.pop("token", TOKEN), user_id="u1", **kwargs)
    async with conn:
        if body:
            await body(conn)
    return conn.record


async def test_ready_ping_close_is_ok(server):
    async def body(conn):
        assert await conn.wait_ready(2 * SCALE)
        await conn.send({"type": "ping"})
        assert [m["type"] for m in await conn.receive_until(lambda m: m["type"] == "pong", 2 * SCALE)] == ["pong"]
    record = await _attempt(server + "/ready", body)
    assert record.outcome == "ok" and record.close_code == 1000 and record.closed_by == "client"
    assert 0 < record.t_open_ms <= record.t_ready_ms <= record.t_first_send_ms <= record.t_close_ms
    assert record.handshake_status == 101 and record.frames_sent == 1
    assert [f["type"] for f in record.frames if f["direction"] == "mark"] == ["open", "ready", "close"]


@pytest.mark.parametrize("path", ["/system_message", "/handshake"])
async def test_other_readiness_forms(server, path):
    async def body(conn):
        assert await conn.wait_ready(2 * SCALE)
    record = await _attempt(server + path, body)
    assert record.outcome == "ok" and record.t_ready_ms is not None
    if path == "/handshake":
        sent = [f for f in record.frames if f["direction"] == "sent"]
        assert [f["type"] for f in sent] == ["handshake_acknowledged"]
        assert record.t_first_send_ms is None  # the handshake answer is not "the first message"


async def test_silence_is_a_ready_timeout(server):
    async def body(conn):
        assert not await conn.wait_ready(0.2 * SCALE)
    record = await _attempt(server + "/silent", body)
    assert record.outcome == "ready_timeout" and record.t_ready_ms is None


async def test_unanswered_request_is_a_receive_timeout(server):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
        await conn.send({"type": "agent_request"})
        assert await conn.receive_until(lambda m: m["type"] == "agent_completed", 0.2 * SCALE) == []
    assert (await _attempt(server + "/ready", body)).outcome == "receive_timeout"


async def test_collect_does_not_judge_silence(server):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
        assert await conn.collect(0.1 * SCALE) == []
    assert (await _attempt(server + "/ready", body)).outcome == "ok"


async def test_1011_close_with_reason(server):
    async def body(conn):
        assert not await conn.wait_ready(2 * SCALE)
        assert not await conn.send({"type": "ping"})
    record = await _attempt(server + "/close1011", body)
    assert record.outcome == "closed_1011" and record.close_code == 1011
    assert record.close_reason == "Factory initialization failed" and record.closed_by == "server"


async def test_auth_error_then_1008(server):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
    record = await _attempt(server + "/auth1008", body)
    assert record.outcome == "auth_rejected" and record.close_code == 1008


@pytest.mark.parametrize("reason, outcome", [("Authentication-failed", "auth_rejected"), ("", "auth_rejected"),
                                             ("rate-limit-exceeded", "closed_other"),
                                             ("too-many-connections", "closed_other")])
async def test_a_1008_is_auth_only_when_nothing_says_otherwise(server, reason, outcome):
    """1008 also means a rate or connection limit: only a reason naming auth, or none at all, is a rejection."""
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
    record = await _attempt(server + "/close1008/" + reason, body)
    assert record.close_code == 1008 and record.outcome == outcome


async def test_dropped_connection_is_1006(server):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
    record = await _attempt(server + "/drop", body)
    assert record.outcome == "closed_other" and record.close_code == 1006 and record.closed_by == "none"


async def test_garbage_frames_are_counted_not_fatal(server):
    async def body(conn):
        assert await conn.wait_ready(2 * SCALE)
        got = await conn.collect(0.3 * SCALE)
        assert [m["type"] for m in got] == ["<invalid>"] * 3
    record = await _attempt(server + "/garbage", body)
    assert record.outcome == "ok" and record.invalid_frames == 3


@pytest.mark.parametrize("path, outcome", [("/http500", "refused"), ("/http401", "auth_rejected")])
async def test_refused_upgrade_keeps_status(server, path, outcome):
    record = await _attempt(server + path)
    assert record.outcome == outcome and record.handshake_status == int(path[-3:])
    assert record.t_open_ms is None and path[-3:] in record.error


async def test_closed_port_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = await _attempt(f"ws://127.0.0.1:{port}/ws")
    assert record.outcome == "refused" and record.error_type == "ConnectionRefusedError"


async def test_tcp_that_never_answers_is_an_open_timeout():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        record = await _attempt(f"ws://127.0.0.1:{port}/ws", open_timeout_s=0.3 * SCALE)
    assert record.outcome == "open_timeout"


async def test_not_http_is_a_protocol_error():
    async def garbage(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        record = await _attempt(f"ws://127.0.0.1:{port}/ws")
    assert record.outcome == "protocol_error"


@pytest.fixture
async def tls_server(tmp_path):
    """A WebSocket server behind a self-signed certificate the client does not trust."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    async with serve(_route, "127.0.0.1", 0, ssl=context) as srv:
        yield f"wss://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def test_untrusted_certificate_is_a_tls_error(tls_server):
    record = await _attempt(tls_server + "/ready", open_timeout_s=2 * SCALE)
    assert record.outcome == "tls_error" and "certificate" in record.error.lower()


async def test_unresolvable_host_is_a_dns_error():
    record = await _attempt("ws://no-such-host.invalid/ws", open_timeout_s=2 * SCALE)
    assert record.outcome in ("dns_error", "open_timeout")  # a resolver may time out rather than answer


async def test_send_delay_is_measured_from_the_upgrade(server):
    async def body(conn):
        await conn.send({"type": "ping"}, at_ms=30)
    record = await _attempt(server + "/silent", body)
    assert 30 <= record.t_first_send_ms - record.t_open_ms < 30 + 50 * SCALE


@pytest.mark.parametrize("transport", ["header", "subprotocol", "both"])
async def test_token_is_sent_but_never_recorded(server, transport):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
        echo = await conn.receive_until(lambda m: m["type"] == "echo", 2 * SCALE)
        assert echo and (echo[0]["authorization"] is not None) == (transport != "subprotocol")
        assert (echo[0]["offer"] is not None) == (transport != "header")
    record = await _attempt(server + "/echo_token", body, auth_transport=transport)
    text = json.dumps(record.frames) + json.dumps(record.row(), default=str)
    assert TOKEN not in text and auth.subprotocol_offer(TOKEN) not in text
    if transport != "header":
        assert record.subprotocol == "jwt.<redacted>"


async def test_unread_messages_are_bounded(server, monkeypatch):
    monkeypatch.setattr("gp_lib.client.MAX_UNREAD", 5)
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
        async with asyncio.timeout(5 * SCALE):   # nobody reads while the server floods
            while conn.record.frames_received < 51:
                await asyncio.sleep(0.01)
        got = await conn.collect(0.1 * SCALE)
        assert len(got) == 5 and [m["n"] for m in got] == [0, 2, 4, 6, 8]
    record = await _attempt(server + "/flood", body, max_frames=100)
    assert record.frames_received == 51


async def test_frames_are_bounded_and_heartbeats_skipped(server):
    async def body(conn):
        await conn.wait_ready(2 * SCALE)
        got = await conn.collect(0.3 * SCALE)
        assert len(got) == 25 and all(m["type"] == "tick" for m in got)
    record = await _attempt(server + "/flood", body, max_frames=10)
    assert len(record.frames) == 10 and record.frames_received == 51


@pytest.mark.parametrize("path, error_type", [("/bad_utf8", "UnicodeDecodeError"), ("/too_big", "PayloadTooBig")])
async def test_a_frame_that_breaks_the_protocol_is_a_protocol_error(server, path, error_type):
    async def body(conn):
        assert await conn.wait_ready(2 * SCALE)
        assert await conn.collect(2 * SCALE) == []  # the client fails the connection instead of delivering it
    record = await _attempt(server + path, body)
    assert record.outcome == "protocol_error" and record.error_type == error_type


async def test_a_binary_json_frame_keeps_its_payload(server):
    async def body(conn):
        assert await conn.wait_ready(2 * SCALE)
        assert [m["type"] for m in await conn.receive_until(lambda m: m["type"] == "pong", 2 * SCALE)] == ["pong"]
    record = await _attempt(server + "/binary_json", body)
    pong = next(f for f in record.frames if f["type"] == "pong")
    assert json.loads(pong["payload"]) == {"type": "pong"}


async def test_cancelling_a_close_is_not_swallowed(server):
    """A caller's deadline (asyncio.timeout, wait_for) must still cancel an attempt that is closing."""
    conn = TracedConnection(server + "/close1011", attempt_id="a1", token=TOKEN)
    assert await conn.open() and not await conn.wait_ready(2 * SCALE)  # the server closed; the reader is done
    stuck = asyncio.Event()
    conn._reader = asyncio.create_task(stuck.wait())  # injected: a reader that has not finished yet
    closing = asyncio.create_task(conn.close())
    await asyncio.sleep(0)  # close() is now waiting for that reader
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert conn._reader.cancelled()


async def test_a_1011_that_crosses_the_client_close_is_still_a_1011():
    """The server's own close frame says 1011 while the client's 1000 is on its way: the 1011 is the evidence."""
    async def crossing(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await reader.readexactly(2)  # the first bytes of the client's close frame: it has closed first
        reason = b"Internal error"
        writer.write(bytes([0x88, 2 + len(reason)]) + (1011).to_bytes(2, "big") + reason)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(crossing, "127.0.0.1", 0)
    async with server:
        record = await _attempt(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", token=None)
    assert record.close_code == 1011 and record.close_reason == "Internal error"
    assert record.outcome == "closed_1011"
