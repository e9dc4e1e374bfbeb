"""The admin API: faults switched at run time, counters, and the stand-in e2e auth endpoint."""

from __future__ import annotations

import time

import pytest
from refserver_client import Wire, http_json, scaled

from gp_lib.auth import StagingTokenSource, verify_token
from gp_lib.protocol import INTERNAL_ERROR, is_ready_marker
from gp_lib.refserver import Faults, running_server

BYPASS_KEY = "e2e-bypass-key-for-tests"
E2E = "/auth/e2e/test-auth"


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 30}, bypass_key=BYPASS_KEY) as handle:
        yield handle



def wait_for_stats(server, predicate, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        stats = server.stats()
        if predicate(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


# -- faults ---------------------------------------------------------------------------------

def test_get_faults_returns_every_field(server):
    assert server.faults() == Faults(setup_ms=30).to_dict()


async def test_race_fault_switched_on_and_off_at_run_time(server, wire):
    assert server.set_faults(race=True)["race"] is True
    async with wire.session(ready=False) as session:
        await session.send(type="ping")
        assert (await session.closed())[0] == INTERNAL_ERROR
    assert server.reset_faults()["race"] is False
    async with wire.session(ready=False) as session:
        await session.send(type="ping")
        await session.until("pong")
        assert session.ws.close_code is None


@pytest.mark.parametrize("body, named", [
    ({"bogus": 1}, "bogus"),
    ({"setup_ms": -5}, "setup_ms"),
    ({"dependencies": "loud"}, "dependencies"),
    ({"services_down": ["redis"]}, "services_down"),
    ({"events": True, "race": "maybe"}, "race"),
])
def test_bad_fields_are_rejected_with_400_naming_them(server, body, named):
    before = server.faults()
    status, reply = http_json("PUT", server.admin_url + "/faults", body)
    assert status == 400 and named in reply["error"]
    assert server.faults() == before
    with pytest.raises(ValueError, match=named):
        server.set_faults(**body)


def test_post_merges_like_put_and_reset_restores_the_start(server):
    status, reply = http_json("POST", server.admin_url + "/faults", {"events": "misroute"})
    assert status == 200 and reply["events"] == "misroute" and reply["setup_ms"] == 30
    assert http_json("POST", server.admin_url + "/faults", raw=b"{not json")[0] == 400
    assert http_json("POST", server.admin_url + "/faults", raw=b"[" * 60_000)[0] == 400
    assert http_json("POST", server.admin_url + "/faults/reset")[1] == Faults(setup_ms=30).to_dict()


def test_unknown_routes_and_methods(server):
    assert http_json("GET", server.admin_url + "/nothing")[0] == 404
    assert http_json("DELETE", server.admin_url + "/faults")[0] == 405
    assert http_json("GET", server.admin_url + "/health") == (200, {"status": "ok"})
    assert server.admin_url.startswith("http://127.0.0.1:")


async def test_stats_count_connections_readiness_and_closes(server, wire):
    before = server.stats()
    async with wire.session():
        assert server.stats()["open"] >= 1
    server.set_faults(race=True)
    async with wire.session(ready=False) as session:
        await session.send(type="ping")
        await session.closed()
    after = wait_for_stats(server, lambda s: s["closes"].get("1011", 0) > before["closes"].get("1011", 0))
    assert after["connections_total"] == before["connections_total"] + 2
    assert after["ready_total"] == before["ready_total"] + 1
    assert after["closes"].get("1011", 0) == before["closes"].get("1011", 0) + 1


# -- the stand-in auth service -------------------------------------------------------------------

def test_e2e_auth_mints_a_token_the_server_accepts(server):
    headers = {"X-E2E-Bypass-Key": BYPASS_KEY}
    status, reply = http_json("POST", server.auth_url + E2E, {"email": "qa@example.com", "name": "QA"}, headers)
    assert status == 200
    assert reply["token_type"] == "Bearer" and reply["expires_in"] == 900 and reply["refresh_token"]
    claims = verify_token(reply["access_token"], server.secret)
    assert claims["sub"] == reply["user"]["id"] and reply["user"]["email"] == "qa@example.com"
    assert claims["exp"] - claims["iat"] == 900
    again = http_json("POST", server.auth_url + E2E, {"email": "qa@example.com"}, headers)[1]
    other = http_json("POST", server.auth_url + E2E, {"email": "ops@example.com"}, headers)[1]
    assert again["user"]["id"] == reply["user"]["id"] != other["user"]["id"]


async def test_e2e_token_opens_a_connection_through_the_toolkit_token_source(server, monkeypatch):
    monkeypatch.setenv("E2E_OAUTH_SIMULATION_KEY", BYPASS_KEY)
    token, user_id = StagingTokenSource(server.auth_url, timeout_s=scaled(5)).token("qa@example.com")
    async with Wire(server.url, server.secret).session(token=token) as session:
        assert is_ready_marker(session.frames[-1])
        assert session.frames[-1]["data"]["user_id"] == user_id


@pytest.mark.parametrize("headers, body, expected", [
    ({}, {"email": "qa@example.com"}, 401),
    ({"X-E2E-Bypass-Key": "wrong"}, {"email": "qa@example.com"}, 401),
    ({"X-E2E-Bypass-Key": BYPASS_KEY}, {"name": "no email"}, 422),
    ({"X-E2E-Bypass-Key": BYPASS_KEY}, {"email": 42}, 422),
    ({"X-E2E-Bypass-Key": BYPASS_KEY}, ["qa@example.com"], 422),
])
def test_e2e_auth_refusals(server, headers, body, expected):
    status, reply = http_json("POST", server.auth_url + E2E, body, headers)
    assert status == expected and reply["error"]


@pytest.mark.parametrize("body", [b"email=qa", b"[" * 60_000])
def test_e2e_auth_refuses_non_json_body_with_422(server, body):
    status, _ = http_json("POST", server.auth_url + E2E, raw=body, headers={"X-E2E-Bypass-Key": BYPASS_KEY})
    assert status == 422


def test_e2e_auth_is_503_without_a_key_and_403_in_production():
    with running_server() as handle:
        status, reply = http_json("POST", handle.auth_url + E2E, {"email": "qa@example.com"},
                                  {"X-E2E-Bypass-Key": BYPASS_KEY})
        assert status == 503 and "E2E_OAUTH_SIMULATION_KEY" in reply["error"]
    with running_server(bypass_key=BYPASS_KEY, extra_args=("--environment", "production")) as handle:
        status, _ = http_json("POST", handle.auth_url + E2E, {"email": "qa@example.com"},
                              {"X-E2E-Bypass-Key": BYPASS_KEY})
        assert status == 403
