"""The reference server in the real backend's dialect (`netra`, docs/protocol.md section 10), over real sockets:
its subprotocol answer, its refusals before the upgrade, its failure signatures and its demo mode."""

from __future__ import annotations

import json
import time

import pytest
from refserver_client import Wire, http_json, scaled
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, NegotiationError

from gp_lib.auth import connect_kwargs, subprotocol_offer
from gp_lib.protocol import EVENT_NAMES, INTERNAL_ERROR, field, is_error, is_ready_marker
from gp_lib.refserver import running_server

DOWN = {"dependencies": "close", "services_down": ["agent_supervisor"]}


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 2, "agent_step_ms": 1}, "netra") as handle:
        yield handle


async def test_a_jwt_offer_is_answered_with_the_bare_scheme_which_a_strict_client_must_have_offered(server, wire):
    """unified_jwt_protocol_handler.py: `jwt.<token>` selects `jwt-auth`, never the offer itself."""
    token = wire.token("alice")
    with pytest.raises(NegotiationError, match="unsupported subprotocol: jwt-auth"):
        async with connect(server.url, open_timeout=scaled(5), **connect_kwargs(token, "subprotocol")):
            pass
    async with connect(server.url, open_timeout=scaled(5), **connect_kwargs(token, "subprotocol", None,
                                                                            ("jwt-auth",))) as ws:
        assert ws.subprotocol == "jwt-auth"
    raw = f"jwt.{token}"  # the raw token after `jwt.` is accepted too
    async with connect(server.url, open_timeout=scaled(5), subprotocols=[raw, "jwt-auth"]) as ws:
        assert ws.subprotocol == "jwt-auth" and is_ready_marker(json.loads(await ws.recv()))
    assert subprotocol_offer(token) != raw


async def test_offers_none_of_which_it_supports_are_refused_before_the_upgrade(server, wire):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url, open_timeout=scaled(5), subprotocols=["chat.v1"],
                           additional_headers={"Authorization": f"Bearer {wire.token('alice')}"}):
            pass
    assert refused.value.response.status_code == 403 and b"No supported subprotocols" in refused.value.response.body


async def test_the_marker_and_a_run_started_with_start_agent(wire):
    async with wire.session("alice-1234") as session:
        marker = session.frames[-1]
        await session.send(type="start_agent", payload={"user_request": "cut costs", "thread_id": "t-n"})
        await session.until("agent_completed")
    assert field(marker, "mode") == "main" and field(marker, "user_id") == "alice-12..."
    assert field(marker, "connection_id") and field(marker, "golden_path_events") == list(EVENT_NAMES)
    run = [f for f in session.frames if f["type"] in EVENT_NAMES]
    assert [f["type"] for f in run] == ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                        "agent_thinking", "agent_completed"]
    assert [f.outer_type for f in run] == ["system_message", "agent_progress", "agent_progress", "agent_progress",
                                           "agent_progress", None]
    assert {field(f, "user_id") for f in run} == {"alice-1234"} and {field(f, "thread_id") for f in run} == {"t-n"}


async def test_messages_it_does_not_know_are_acknowledged_not_answered(wire):
    async with wire.session() as session:
        for kind in ("system_health_check", "status_request", "message"):
            await session.send(type=kind, thread_id="t-x", content="hi")
            ack = await session.until("ack")
            assert field(ack, "received_type") == kind


async def test_a_setup_failure_is_an_error_frame_naming_the_exception_then_1011_main_mode_error(server, wire):
    """websocket_ssot.py 1814-1825: CONNECTION_ERROR with details.error_type, then close "<mode> mode error"."""
    server.set_faults(factory="config")
    async with wire.session(ready=False) as session:
        error = await session.recv()
        code, reason = await session.closed()
    status, health = http_json("GET", f"{server.http_url}/ws/health")
    assert is_error(error) and error["type"] == "error_message" and field(error, "error_code") == "CONNECTION_ERROR"
    assert field(error, "details") == {"error_type": "FactoryInitializationError", "mode": "main"}
    assert (code, reason) == (INTERNAL_ERROR, "main mode error")
    # websocket_ssot.py 1847-1895: /ws/health answers 200 whatever it says
    assert status == 200 and health["status"] == "unhealthy" and "max_connections" in health["error"]


async def test_a_race_is_the_same_signature_before_readiness(server, wire):
    server.set_faults(race=True, setup_ms=200)
    async with wire.session(ready=False) as session:
        await session.send(type="ping")
        error = await session.recv()
        code, reason = await session.closed()
    assert field(error, "details")["error_type"] == "RuntimeError" and (code, reason) == (INTERNAL_ERROR,
                                                                                         "main mode error")


async def test_while_a_service_is_down_every_upgrade_is_refused_403_and_health_says_why(server, wire):
    server.set_faults(**DOWN)
    with pytest.raises(InvalidStatus) as refused:
        async with wire.session():
            pass
    assert refused.value.response.status_code == 403
    assert b"Service not ready: agent_supervisor" in refused.value.response.body
    assert http_json("GET", f"{server.http_url}/health") == (200, {"status": "ok"})
    status, health = http_json("GET", f"{server.http_url}/ws/health")
    assert status == 200 and health["status"] == "degraded" and health["mode"] == "ssot_consolidated"
    assert health["service_availability"]["allow_websocket_connections"] is False


async def test_the_staging_readiness_guard_stalls_then_answers_500():
    with running_server(DOWN, "netra,not_ready=stall_http_500,stall_s=0.3") as stalling:
        wire = Wire(stalling.url, stalling.secret, stalling.dialect)
        started = time.perf_counter()
        with pytest.raises(InvalidStatus) as refused:
            async with wire.session():
                pass
        stalled_s = time.perf_counter() - started
    assert refused.value.response.status_code == 500 and stalled_s >= 0.3


async def test_a_crashed_message_loop_closes_1000_main_cleanup_and_never_answers(server, wire):
    server.set_faults(events="loop_crash")
    async with wire.session() as session:
        await session.send(type="ping")
        code, reason = await session.closed()
    assert (code, reason) == (1000, "main cleanup")
    assert [f["type"] for f in session.frames] == ["connection_established"]


async def test_demo_mode_admits_any_token_or_none_as_demo_user_001():
    with running_server({"setup_ms": 1}, "netra_demo") as demo:
        wire = Wire(demo.url, demo.secret, demo.dialect)
        async with wire.session(token="not-a-token") as session:
            marker = session.frames[-1]
        async with connect(demo.url, open_timeout=scaled(5)) as ws:  # no token at all
            anonymous = json.loads(await ws.recv())
    assert field(marker, "user_id") == field(anonymous, "user_id") == "demo-use..."
