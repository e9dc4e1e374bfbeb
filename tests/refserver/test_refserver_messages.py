"""The message table of PROTOCOL.md section 5, HTTP routes, and runs that outlive their socket."""

from __future__ import annotations

import pytest
from refserver_client import Wire, http_json

from gp_lib.protocol import (AGENT_COMPLETED, AGENT_STARTED, EVENT_NAMES, field, is_error, is_ready_marker,
                             is_status, message_text, parse_timestamp)
from gp_lib.refserver import Faults, ReferenceServer, running_server

HEALTHY_RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking",
               "agent_completed"]


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 2, "agent_step_ms": 1}) as handle:
        yield handle


async def test_connection_established_carries_ids(wire):
    async with wire.session("alice") as session:
        marker = session.frames[-1]
    assert marker["type"] == "connection_established" and is_ready_marker(marker)
    assert field(marker, "user_id") == "alice" and field(marker, "connection_id")
    assert parse_timestamp(field(marker, "timestamp")) is not None


@pytest.mark.parametrize("request_type, answer", [("ping", "pong"), ("heartbeat", "heartbeat_ack")])
async def test_simple_requests_get_their_answer(wire, request_type, answer):
    async with wire.session() as session:
        await session.send(type=request_type)
        reply = await session.recv()
    assert reply["type"] == answer
    assert parse_timestamp(field(reply, "timestamp")) is not None


async def test_unknown_type_is_acknowledged_not_closed(wire):
    async with wire.session() as session:
        await session.send(type="telemetry_blob", value=3)
        reply = await session.recv()
        assert reply["type"] == "ack" and field(reply, "received_type") == "telemetry_blob"
        await session.send(type="ping")
        assert (await session.recv())["type"] == "pong"


@pytest.mark.parametrize("garbage", ["this is not json", '{"no_type": true}', "[1, 2]", b"\xff\xfe binary",
                                     "[" * 100_000 + "]" * 100_000])
async def test_garbage_frame_gets_an_error_frame_not_a_close(wire, garbage):
    async with wire.session() as session:
        await session.ws.send(garbage)
        reply = await session.recv()
        assert is_error(reply) and message_text(reply)
        await session.send(type="ping")
        assert (await session.recv())["type"] == "pong"
        assert session.ws.close_code is None


def _request(kind: str, thread_id: str) -> dict:
    if kind == "user_message":
        return {"type": "user_message", "payload": {"content": "cut my costs", "thread_id": thread_id}}
    return {"type": kind, "agent": "cost_optimizer", "message": "cut my costs", "thread_id": thread_id}


@pytest.mark.parametrize("kind", ["agent_request", "start_agent", "user_message"])
async def test_agent_request_aliases_run_the_five_events(wire, kind):
    async with wire.session("alice") as session:
        await session.send(**_request(kind, f"t-{kind}"))
        await session.until(AGENT_COMPLETED)
    run = [f for f in session.frames if f["type"] in EVENT_NAMES]
    assert [f["type"] for f in run] == HEALTHY_RUN
    assert {field(f, "run_id") for f in run} != {None} and len({field(f, "run_id") for f in run}) == 1
    assert {field(f, "user_id") for f in run} == {"alice"}
    assert {field(f, "thread_id") for f in run} == {f"t-{kind}"}
    assert all(field(f, "agent_name") and parse_timestamp(field(f, "timestamp")) for f in run)
    assert {field(f, "tool_name") for f in run if f["type"].startswith("tool_")} == {"cost_analyzer"}
    assert field(run[3], "result") and message_text(run[-1])


async def test_message_is_received_then_answered_by_a_run(wire):
    async with wire.session() as session:
        await session.send(type="message", content="hello", thread_id="t-msg")
        await session.until(AGENT_COMPLETED)
    assert session.types()[1:] == ["message_received", *HEALTHY_RUN]
    assert field(session.frames[1], "thread_id") == "t-msg"


async def test_status_request_reports_a_run_after_reconnect(wire):
    async with wire.session("carol") as session:
        await session.send(**_request("agent_request", "t-reconnect"))
        started = await session.until(AGENT_STARTED)
    async with wire.session("carol") as session:
        for _ in range(50):
            await session.send(type="status_request", thread_id="t-reconnect")
            status = await session.until(is_status)
            if field(status, "state") == "completed":
                break
    assert field(status, "state") == "completed"
    assert field(status, "run_id") == field(started, "run_id")
    assert field(status, "last_event") == AGENT_COMPLETED


async def test_status_of_an_unknown_or_foreign_thread_is_unknown(wire):
    async with wire.session("dave") as session:
        await session.send(**_request("agent_request", "t-dave"))
        await session.until(AGENT_COMPLETED)
    async with wire.session("erin") as session:
        for thread in ("t-nobody", "t-dave"):
            await session.send(type="status_request", thread_id=thread)
            status = await session.until(is_status)
            assert field(status, "state") == "unknown" and field(status, "run_id") is None


async def test_system_health_check_reports_factory_and_services(wire):
    async with wire.session() as session:
        await session.send(type="system_health_check")
        status = await session.until("system_status")
    assert field(status, "factory_status") == "ok"
    assert field(status, "services") == {"agent_supervisor": "up", "thread_service": "up", "llm_service": "up",
                                         "database": "up"}
    assert field(status, "errors") == []


# -- HTTP on the WebSocket port ----------------------------------------------------------

def test_health_routes(server):
    assert http_json("GET", server.http_url + "/health") == (200, {"status": "ok"})
    status, body = http_json("GET", server.http_url + "/ws/health")
    assert status == 200 and body["status"] == "healthy"
    assert body["components"]["factory"]["status"] == "ok"
    assert body["service_availability"]["critical_services"]["agent_supervisor"] == "up"
    assert http_json("GET", server.http_url + "/elsewhere")[0] == 404


def test_dialect_without_http_routes_answers_404():
    with running_server(dialect="http_routes=false") as handle:
        assert http_json("GET", handle.http_url + "/health")[0] == 404
        assert http_json("GET", handle.http_url + "/ws/health")[0] == 404


async def test_heartbeat_dialect_sends_heartbeats_after_readiness():
    with running_server({"setup_ms": 2}, "heartbeat_interval_s=0.05") as handle:
        async with Wire(handle.url, handle.secret).session() as session:
            beat = await session.until("heartbeat", timeout=2.0)
    assert parse_timestamp(field(beat, "timestamp")) is not None


async def test_reference_server_runs_in_process_too():
    secret = "in-process-secret-" + "q" * 16
    async with ReferenceServer(secret, faults=Faults(setup_ms=1)) as server:
        async with Wire(server.url, secret).session("frank") as session:
            await session.send(type="ping")
            assert (await session.recv())["type"] == "pong"
        assert server.stats()["ready_total"] == 1
        assert "in-process-secret" not in repr(server)
