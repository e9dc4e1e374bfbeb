"""Root cause 1, the handshake race: a message sent before readiness is fatal only under the fault."""

from __future__ import annotations

import asyncio
import time

import pytest
from refserver_client import Wire, scaled

from gp_lib.protocol import INTERNAL_ERROR, field, is_ready_marker
from gp_lib.refserver import running_server

ATTEMPTS = 5
SETUP_MS = 50


@pytest.fixture(scope="module")
def server():
    with running_server({"race": True, "setup_ms": SETUP_MS, "setup_ms_per_concurrent": 0}) as handle:
        yield handle



async def test_sending_at_once_after_open_closes_1011(wire):
    for attempt in range(ATTEMPTS):
        async with wire.session(f"early{attempt}", ready=False) as session:
            await session.send(type="ping")
            code, reason = await session.closed()
        assert code == INTERNAL_ERROR, (attempt, code, reason)
        assert "before connection setup" in reason and len(reason.encode()) <= 123
        assert not any(is_ready_marker(f) for f in session.frames)


async def test_waiting_for_readiness_avoids_the_race(wire):
    for attempt in range(ATTEMPTS):
        async with wire.session(f"patient{attempt}") as session:
            await session.send(type="ping")
            assert (await session.recv())["type"] == "pong"
            assert session.ws.close_code is None


async def test_health_check_is_answered_before_setup_even_under_the_fault(wire):
    async with wire.session(ready=False) as session:
        await session.send(type="system_health_check")
        first = await session.recv()
        marker = await session.recv()
    assert first["type"] == "system_status" and field(first, "factory_status") == "ok"
    assert is_ready_marker(marker)


async def test_without_the_fault_early_messages_are_queued_and_answered_in_order(server, wire):
    server.set_faults(race=False)
    for attempt in range(ATTEMPTS):
        async with wire.session(f"queued{attempt}", ready=False) as session:
            await session.send(type="ping")
            await session.send(type="heartbeat")
            await session.send(type="status_request", thread_id="t-none")
            await session.until("status_update")
        assert session.types() == ["connection_established", "pong", "heartbeat_ack", "status_update"]


async def test_setup_grows_with_concurrent_connections(server, wire):
    # a long base setup (300 ms) keeps all three in setup together even if their upgrades land far apart
    server.set_faults(race=False, setup_ms=300, setup_ms_per_concurrent=100)

    async def time_to_ready(user: str) -> float:
        started = time.monotonic()
        async with wire.session(user):
            return time.monotonic() - started

    alone = await time_to_ready("solo")
    together = await asyncio.wait_for(asyncio.gather(*(time_to_ready(f"crowd{i}") for i in range(3))), scaled(5))
    assert alone >= 0.3
    # The last of three overlapping setups waits for the other two: 300 + 2 x 100 ms.
    assert max(together) >= 0.49, together


async def test_handshake_dialect_is_racy_until_handshake_complete():
    with running_server({"race": True, "setup_ms": 2}, "handshake") as handle:
        wire = Wire(handle.url, handle.secret)
        async with wire.session(ready=False) as session:
            response = await session.until("handshake_response")
            await session.send(type="ping")
            code, _ = await session.closed()
        assert field(response, "thread_id") and code == INTERNAL_ERROR
        async with wire.session() as session:
            assert session.frames[-1]["type"] == "handshake_complete"
            await session.send(type="ping")
            assert (await session.recv())["type"] == "pong"


async def test_handshake_not_acknowledged_closes_1008():
    with running_server({"setup_ms": 2}, "handshake,handshake_timeout_s=0.1") as handle:
        async with Wire(handle.url, handle.secret).session(ready=False) as session:
            await session.until("handshake_response")
            code, reason = await session.closed()
    assert (code, reason) == (1008, "handshake not acknowledged")


async def test_setup_is_counted_from_the_upgrade_so_a_busy_server_loop_does_not_lengthen_it():
    """Other work holds the server's loop between the upgrade and the start of this connection's setup (as a
    burst of handshakes does); readiness still comes D after the upgrade, not D after the loop was free."""
    from gp_lib.refserver import Faults, ReferenceServer

    setup_s, blocked_s = scaled(0.2), scaled(0.15)

    class BusyServer(ReferenceServer):
        async def _setup(self, conn):
            time.sleep(blocked_s)  # the loop is busy elsewhere: nothing of the server runs
            return await super()._setup(conn)

    secret = "in-process-secret-" + "r" * 16
    async with BusyServer(secret, faults=Faults(setup_ms=setup_s * 1000, setup_ms_per_concurrent=0)) as server:
        connecting = time.perf_counter()  # a moment before the upgrade (loopback: a few ms)
        async with Wire(server.url, secret).session("busy", ready=False) as session:
            await session.ready(timeout=2.0)
            elapsed = time.perf_counter() - connecting
    assert setup_s <= elapsed < setup_s + blocked_s * 0.5  # not setup + blocked
