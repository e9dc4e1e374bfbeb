"""Root cause 4, missing events: each `events` mode leaves its signature in the run."""

from __future__ import annotations

import pytest

from gp_lib.protocol import (AGENT_COMPLETED, AGENT_STARTED, EVENT_NAMES, TOOL_COMPLETED, TOOL_EXECUTING, field,
                             is_status)
from gp_lib.refserver import running_server

SILENCE_S = 0.3


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 2, "agent_step_ms": 2}) as handle:
        yield handle



def agent_request(thread_id: str) -> dict:
    return {"type": "agent_request", "agent": "cost_optimizer", "message": "cut my costs", "thread_id": thread_id}


def run_types(frames: list[dict]) -> list[str]:
    return [f["type"] for f in frames if f["type"] in EVENT_NAMES]


async def test_healthy_run_has_five_types_in_order_for_one_user(wire):
    async with wire.session("alice") as session:
        await session.send(**agent_request("t-healthy"))
        await session.until(AGENT_COMPLETED)
        assert await session.quiet(0.05) == []
    types = run_types(session.frames)
    assert set(types) == set(EVENT_NAMES) and types[0] == AGENT_STARTED and types[-1] == AGENT_COMPLETED
    assert types.index(TOOL_EXECUTING) < types.index(TOOL_COMPLETED) < types.index(AGENT_COMPLETED)


async def test_omit_tools_skips_both_tool_events(server, wire):
    server.set_faults(events="omit_tools")
    async with wire.session("alice") as session:
        await session.send(**agent_request("t-omit"))
        await session.until(AGENT_COMPLETED)
    types = run_types(session.frames)
    assert TOOL_EXECUTING not in types and TOOL_COMPLETED not in types
    assert types[0] == AGENT_STARTED and types[-1] == AGENT_COMPLETED


async def test_out_of_order_completes_before_the_tool_does(server, wire):
    server.set_faults(events="out_of_order")
    async with wire.session("alice") as session:
        await session.send(**agent_request("t-order"))
        await session.until(TOOL_COMPLETED)
        await session.quiet(SILENCE_S)
    types = run_types(session.frames)
    assert types.index(AGENT_COMPLETED) < types.index(TOOL_COMPLETED)
    assert types[-1] != AGENT_COMPLETED


async def test_misroute_sends_user_a_events_to_user_b(server, wire):
    server.set_faults(events="misroute")
    async with wire.session("alice") as alice, wire.session("bob") as bob:
        await alice.send(**agent_request("t-leak"))
        started = await alice.until(AGENT_STARTED)
        leaked = await bob.until(AGENT_COMPLETED)
        assert await alice.quiet(SILENCE_S) == []
    assert run_types(alice.frames) == [AGENT_STARTED]
    bob_events = [f for f in bob.frames if f["type"] in EVENT_NAMES]
    assert len(bob_events) == 5 and AGENT_STARTED not in run_types(bob.frames)
    assert {field(f, "user_id") for f in bob_events} == {"alice"}
    assert field(leaked, "run_id") == field(started, "run_id")


async def test_misroute_with_nobody_else_connected_drops_the_events(server, wire):
    server.set_faults(events="misroute")
    async with wire.session("alice") as alice:
        await alice.send(**agent_request("t-dropped"))
        await alice.until(AGENT_STARTED)
        assert await alice.quiet(SILENCE_S) == []
        await alice.send(type="status_request", thread_id="t-dropped")
        status = await alice.until(is_status)
    assert field(status, "state") == "completed"


async def test_faults_combine_race_with_events(server, wire):
    server.set_faults(events="omit_tools", race=True, setup_ms=30)
    async with wire.session("alice") as session:
        await session.send(**agent_request("t-combined"))
        await session.until(AGENT_COMPLETED)
    assert TOOL_EXECUTING not in run_types(session.frames)
    async with wire.session("alice", ready=False) as session:
        await session.send(type="ping")
        assert (await session.closed())[0] == 1011
