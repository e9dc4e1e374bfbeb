"""Root cause 3, factory initialization: invalid configurations, and the 1011 they cause before readiness."""

from __future__ import annotations

import asyncio

import pytest
from refserver_client import http_json, scaled

from gp_lib.protocol import INTERNAL_ERROR, field, is_ready_marker
from gp_lib.refserver import ConnectionManagerFactory, FactoryInitializationError, running_server, validate_config

VALID = {"websocket_host": "localhost", "websocket_port": 8000, "max_connections": 1000, "auth_required": True}

#: The five invalid configurations of the test plan, and the key each must name.
INVALID = [
    ({}, "websocket_host"),
    ({"websocket_host": ""}, "websocket_host"),
    ({"websocket_port": "invalid"}, "websocket_port"),
    ({"max_connections": -1}, "max_connections"),
    ({"auth_required": "not_boolean"}, "auth_required"),
]


# -- the factory as a unit ------------------------------------------------------------

def test_valid_configuration_has_no_errors():
    assert validate_config(VALID) == []
    assert ConnectionManagerFactory(VALID).is_valid()


@pytest.mark.parametrize("config, key", INVALID)
def test_invalid_configurations_are_rejected_naming_configuration_and_key(config, key):
    errors = validate_config(config)
    assert errors and all("configuration" in e.lower() for e in errors)
    assert any(key in e for e in errors)
    factory = ConnectionManagerFactory(config)
    with pytest.raises(ValueError, match="configuration") as raised:
        factory.validate_config()
    assert isinstance(raised.value, FactoryInitializationError)
    with pytest.raises(FactoryInitializationError):
        factory.create_manager("alice")


def test_empty_configuration_names_every_missing_key():
    errors = validate_config({})
    for key in ("websocket_host", "websocket_port", "max_connections", "auth_required"):
        assert any(key in e for e in errors), key


@pytest.mark.parametrize("config, key", [
    ({**VALID, "websocket_port": 70000}, "websocket_port"),
    ({**VALID, "websocket_port": True}, "websocket_port"),
    ({**VALID, "max_connections": 2.5}, "max_connections"),
])
def test_out_of_range_and_wrong_type_values_are_rejected(config, key):
    errors = validate_config(config)
    assert len(errors) == 1 and key in errors[0]


def test_each_manager_is_its_own_instance_with_its_own_id():
    first, second = ConnectionManagerFactory(VALID), ConnectionManagerFactory(VALID)
    managers = [first.create_manager("alice"), first.create_manager("alice"), second.create_manager("alice")]
    assert len({id(m) for m in managers}) == 3
    assert len({m.connection_id for m in managers}) == 3
    assert type(managers[0]) is type(managers[2])


@pytest.mark.parametrize("user_id, connection_id, named", [("", None, "user_id"), ("alice", " ", "connection_id")])
def test_invalid_user_context_is_rejected(user_id, connection_id, named):
    with pytest.raises(FactoryInitializationError, match=named):
        ConnectionManagerFactory(VALID).create_manager(user_id, connection_id)


# -- the fault on a running server -----------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with running_server({"factory": "config", "setup_ms": 30}) as handle:
        yield handle



@pytest.mark.parametrize("send_first", [True, False])
async def test_faulty_factory_closes_1011_before_readiness_whatever_the_timing(wire, send_first):
    async with wire.session(ready=False) as session:
        if send_first:
            await session.send(type="system_health_check")
        code, reason = await session.closed()
    assert (code, reason) == (INTERNAL_ERROR, "Factory initialization failed")
    assert not any(is_ready_marker(f) for f in session.frames)
    if send_first:
        status = session.frames[0]
        assert status["type"] == "system_status" and field(status, "factory_status") == "error"
        assert any("max_connections" in e for e in field(status, "errors"))


def test_health_reports_unhealthy_with_the_factory_error(server):
    status, body = http_json("GET", server.http_url + "/ws/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert body["components"]["factory"]["status"] == "error"
    assert any("max_connections" in e for e in body["components"]["factory"]["errors"])


async def test_factory_config_is_settable_at_run_time(server, wire):
    server.set_faults(factory_config={"websocket_port": "invalid"})
    async with wire.session(ready=False) as session:
        await session.send(type="system_health_check")
        status = await session.recv()
        assert await session.closed() == (INTERNAL_ERROR, "Factory initialization failed")
    assert any("websocket_port" in e for e in field(status, "errors"))


async def test_fixed_factory_gives_every_connection_its_own_id(server, wire):
    server.set_faults(factory=None)

    async def connection_id(user: str) -> str:
        async with wire.session(user) as session:
            await session.send(type="system_health_check")
            assert field(await session.until("system_status"), "factory_status") == "ok"
            return field(session.frames[0], "connection_id")

    ids = await asyncio.wait_for(asyncio.gather(*(connection_id(u) for u in ("alice", "alice", "bob"))), scaled(5))
    assert len(set(ids)) == 3 and all(ids)
    assert http_json("GET", server.http_url + "/ws/health")[1]["status"] == "healthy"
