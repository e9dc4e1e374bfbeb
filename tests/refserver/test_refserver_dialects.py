"""Every dialect preset is readable with gp_lib.protocol, as its declaration says: readiness, events,
statuses, errors, auth failures, and the message types it does not know."""

from __future__ import annotations

import pytest

from gp_lib.dialects import Dialect
from gp_lib.protocol import (AGENT_COMPLETED, EVENT_NAMES, POLICY_VIOLATION, error_code, event_time, field,
                             is_auth_failure, is_error, is_fallback_completion, is_graceful_text, is_ready_marker,
                             is_status, message_text, same_user)
from gp_lib.refserver import DIALECT_PRESETS, running_server

READY_TYPE = {"system_message": "system_message", "connection_ready": "connection_ready",
              "handshake": "handshake_complete"}


@pytest.fixture(scope="module", params=sorted(DIALECT_PRESETS))
def preset(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dialect(preset) -> Dialect:
    return Dialect.parse(preset)


@pytest.fixture(scope="module")
def server(preset):
    with running_server({"setup_ms": 2, "agent_step_ms": 1}, preset) as handle:
        yield handle


def me(dialect: Dialect, user: str = "alice") -> str:
    """Who the server says a socket of `user` is."""
    return user if dialect.auth_enforced else dialect.demo_user


async def test_readiness_marker_is_recognised(preset, dialect, wire):
    async with wire.session("alice") as session:
        marker = session.frames[-1]
    assert is_ready_marker(marker)
    assert marker["type"] == READY_TYPE.get(preset, "connection_established")
    if dialect.ready_ids:
        assert same_user(field(marker, "user_id"), me(dialect)) and field(marker, "connection_id")
    else:
        assert field(marker, "connection_id") is None


async def test_agent_run_is_readable(dialect, wire):
    async with wire.session("alice") as session:
        await session.send(**dialect.agent_request_message("cut costs", agent="cost_optimizer", thread_id="t-d"))
        await session.until(AGENT_COMPLETED)
        if dialect.status_request:
            await session.send(type="status_request", thread_id="t-d")
            status = await session.until(is_status)
    run = [f for f in session.frames if f["type"] in EVENT_NAMES]
    assert len(run) == 6
    for event in run:
        assert field(event, "user_id") == me(dialect) and field(event, "thread_id") == "t-d"
        assert field(event, "run_id") == field(run[0], "run_id") and field(event, "agent_name")
        assert event_time(event) is not None
    assert {field(e, "tool_name") for e in run if e["type"].startswith("tool_")} == {"cost_analyzer"}
    assert "18%" in message_text(run[-1])
    if dialect.wrapped_events:  # some events come as data.type under an outer type; the decoder unwraps them
        assert {e.outer_type for e in run} == {"system_message", "agent_progress", None}
    if dialect.status_request:
        assert field(status, "state") == "completed" and field(status, "run_id") == field(run[0], "run_id")


async def test_errors_are_readable(server, dialect, wire):
    server.set_faults(services_down=["agent_supervisor"])
    try:
        async with wire.session("alice") as session:
            await session.ws.send("not json")
            invalid = await session.recv()
            await session.send(**dialect.agent_request_message("cut costs", thread_id="t-e"))
            completed = await session.until(AGENT_COMPLETED)
    finally:
        server.reset_faults()
    assert is_error(invalid) and error_code(invalid) == "INVALID_MESSAGE" and message_text(invalid)
    assert invalid["type"] == ("error" if dialect.errors == "error" else "error_message")
    unavailable = next(f for f in session.frames if is_error(f) and f is not invalid)
    assert is_graceful_text(message_text(unavailable)) and error_code(unavailable) == "SERVICE_UNAVAILABLE"
    assert is_fallback_completion(completed)
    assert event_time(invalid) is not None


async def test_auth_failure_is_readable_where_tokens_are_checked(dialect, wire):
    if not dialect.auth_enforced:  # the token is never read: a wrong one is as good as any
        async with wire.session(token=wire.token("alice", issuer="elsewhere")) as session:
            marker = session.frames[-1]
        assert is_ready_marker(marker) and same_user(field(marker, "user_id"), dialect.demo_user)
        return
    async with wire.session(token=wire.token("alice", issuer="elsewhere"), ready=False) as session:
        failure = await session.recv()
        code, _ = await session.closed()
    assert is_auth_failure(failure) and "issuer" in message_text(failure)
    assert code == POLICY_VIOLATION


async def test_system_status_is_readable_or_the_type_unknown(dialect, wire):
    async with wire.session() as session:
        await session.send(type="system_health_check")
        answer = await session.until(lambda f: f["type"] in ("system_status", "ack"))
    if dialect.health_check:
        assert field(answer, "factory_status") == "ok" and field(answer, "services")["database"] == "up"
    else:
        assert answer["type"] == "ack" and field(answer, "received_type") == "system_health_check"
