"""Root cause 2, missing service dependencies: silence or 1011 under the fault, a graceful answer without."""

from __future__ import annotations

import pytest
from refserver_client import http_json

from gp_lib.protocol import (AGENT_COMPLETED, AGENT_STARTED, INTERNAL_ERROR, field, is_error, is_fallback_completion,
                             is_graceful_text, is_status, message_text)
from gp_lib.refserver import running_server

#: Long enough for a whole healthy run (six events, 2 ms apart) many times over.
SILENCE_S = 0.3


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 2, "agent_step_ms": 2}) as handle:
        yield handle



def agent_request(thread_id: str, **flags) -> dict:
    return {"type": "agent_request", "agent": "cost_optimizer", "message": "cut my costs", "thread_id": thread_id,
            **flags}


async def test_silent_fault_sends_agent_started_then_nothing(server, wire):
    server.set_faults(dependencies="silent", services_down=["agent_supervisor"])
    async with wire.session() as session:
        await session.send(**agent_request("t-silent"))
        assert (await session.recv())["type"] == AGENT_STARTED
        assert await session.quiet(SILENCE_S) == []
        await session.send(type="status_request", thread_id="t-silent")
        status = await session.until(is_status)
    assert field(status, "state") == "running" and field(status, "last_event") == AGENT_STARTED


async def test_close_fault_closes_1011_naming_the_services(server, wire):
    server.set_faults(dependencies="close", services_down=["agent_supervisor", "database"])
    async with wire.session() as session:
        await session.send(**agent_request("t-close"))
        code, reason = await session.closed()
    assert code == INTERNAL_ERROR
    assert reason == "Service not ready: agent_supervisor, database"
    assert AGENT_STARTED not in session.types()


async def test_fixed_server_answers_gracefully_and_completes_through_a_fallback(server, wire):
    server.set_faults(services_down=["agent_supervisor"])
    async with wire.session() as session:
        await session.send(**agent_request("t-fixed"))
        completed = await session.until(AGENT_COMPLETED)
        assert session.ws.close_code is None
    types = session.types()[1:]
    assert types == [AGENT_STARTED, "error", AGENT_COMPLETED]
    error = session.frames[2]
    assert is_graceful_text(message_text(error))
    assert message_text(error).startswith("The agent service is temporarily unavailable. Please try again")
    assert is_fallback_completion(completed)


@pytest.mark.parametrize("mode, expected", [(None, "graceful"), ("silent", "stalled"), ("close", "closed")])
async def test_simulate_agent_unavailable_flag_acts_as_supervisor_down(server, wire, mode, expected):
    server.set_faults(dependencies=mode)
    async with wire.session() as session:
        await session.send(**agent_request("t-flag", simulate_agent_unavailable=True))
        if expected == "closed":
            code, reason = await session.closed()
            assert (code, reason) == (INTERNAL_ERROR, "Service not ready: agent_supervisor")
        elif expected == "stalled":
            assert (await session.recv())["type"] == AGENT_STARTED
            assert await session.quiet(SILENCE_S) == []
        else:
            assert is_fallback_completion(await session.until(AGENT_COMPLETED))


async def test_llm_is_needed_only_when_the_request_requires_it(server, wire):
    server.set_faults(services_down=["llm_service"])
    async with wire.session() as session:
        await session.send(**agent_request("t-no-llm"))
        plain = await session.until(AGENT_COMPLETED)
        await session.send(**agent_request("t-llm", require_llm=True))
        needy = await session.until(AGENT_COMPLETED)
    assert not is_fallback_completion(plain) and is_fallback_completion(needy)
    error = next(f for f in session.frames if is_error(f))
    assert field(error, "unavailable") == ["llm_service"]


async def test_message_with_thread_service_down(server, wire):
    server.set_faults(services_down=["thread_service"])
    async with wire.session() as session:
        await session.send(type="message", content="hi", thread_id="t-msg-fixed")
        error = await session.recv()
        assert is_error(error) and is_graceful_text(message_text(error))
        assert await session.quiet(SILENCE_S) == []
    server.set_faults(dependencies="silent")
    async with wire.session() as session:
        await session.send(type="message", content="hi", thread_id="t-msg-silent")
        assert await session.quiet(SILENCE_S) == []
    server.set_faults(dependencies="close")
    async with wire.session() as session:
        await session.send(type="message", content="hi", thread_id="t-msg-close")
        assert await session.closed() == (INTERNAL_ERROR, "Service not ready: thread_service")


async def test_message_with_only_the_supervisor_down_is_received_then_answered_gracefully(server, wire):
    server.set_faults(services_down=["agent_supervisor"])
    async with wire.session() as session:
        await session.send(type="message", content="hi", thread_id="t-msg-sup")
        completed = await session.until(AGENT_COMPLETED)
    assert session.types()[1:] == ["message_received", AGENT_STARTED, "error", AGENT_COMPLETED]
    assert is_fallback_completion(completed)


async def test_health_reports_degraded_when_a_service_is_down(server, wire):
    server.set_faults(services_down=["database"])
    status, body = http_json("GET", server.http_url + "/ws/health")
    assert status == 200 and body["status"] == "degraded"
    assert body["service_availability"]["critical_services"]["database"] == "down"
    async with wire.session() as session:
        await session.send(type="system_health_check")
        report = await session.until("system_status")
    assert field(report, "services")["database"] == "down" and field(report, "factory_status") == "ok"
    assert "database is down" in field(report, "errors")
