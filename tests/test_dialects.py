"""Every dialect of gp_lib.dialects: its declaration, and the reference server speaking it through the
client, the event validation, the scenarios and the diagnosis.

PROTOCOL.md lists deployment variants the toolkit must accept on receive:
four readiness forms (the three-step handshake answered, markers with and
without a connection id), enveloped, flat and mixed layouts, float or ISO
timestamps, `error` and `error_message` frames, auth by subprotocol alone
behind a proxy that strips the header; and the real backend's own
(`netra`, docs/protocol.md section 10). With no fault, the four scenarios
must pass (undecidable checks inconclusive, never failed) and the diagnosis
must be empty in every one, but for the security finding of a server that
does not check tokens (`netra_demo`).
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from gp_lib import diagnosis, events, protocol, triage
from gp_lib.auth import mint_token
from gp_lib.client import TracedConnection
from gp_lib.dialects import PRESETS, Dialect, detect as dialect_detect
from gp_lib.refserver import DIALECT_PRESETS, running_server
from gp_lib.trace import to_tables

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
TIMEOUT_S = 5.0 * SCALE
SECRET_ENV = "GP_DIALECT_TEST_SECRET"
READY_TYPE = {"system_message": "system_message", "connection_ready": "connection_ready",
              "handshake": "handshake_complete"}


# -- declarations (no network) --------------------------------------------------------------

def test_every_preset_parses_and_round_trips_through_its_spec():
    assert set(PRESETS) == {"default", "flat", "mixed", "system_message", "connection_ready", "handshake",
                            "iso", "error_message", "stripped_header", "netra", "netra_demo"}
    for name in PRESETS:
        dialect = Dialect.parse(name)
        assert Dialect.parse(dialect.to_spec()) == dialect, name
    assert Dialect.parse("stripped_header").auth == "subprotocol_only"
    assert Dialect.parse("handshake").ready == "handshake"


def test_key_value_form_starts_from_default_or_a_preset():
    dialect = Dialect.parse("layout=mixed,auth_reject=http,http_routes=false,heartbeat_interval_s=0.5")
    assert (dialect.layout, dialect.auth_reject, dialect.http_routes, dialect.heartbeat_interval_s) == (
        "mixed", "http", False, 0.5)
    assert dialect.ready == "connection_established"
    combined = Dialect.parse("flat,errors=error_message")
    assert (combined.layout, combined.errors) == ("flat", "error_message")
    assert Dialect.parse(None) == Dialect() == Dialect.parse("")


@pytest.mark.parametrize("spec, named", [
    ("klingon", "klingon"),
    ("layout=nested", "layout"),
    ("colour=red", "colour"),
    ("http_routes=maybe", "http_routes"),
    ("heartbeat_interval_s=soon", "heartbeat_interval_s"),
    ("handshake_timeout_s=0", "handshake_timeout_s"),
])
def test_bad_dialect_specs_name_the_key(spec, named):
    with pytest.raises(ValueError, match=named):
        Dialect.parse(spec)


def test_layouts_place_fields_as_protocol_md_shows():
    fields = {"run_id": "r1", "user_id": "u1", "tool_name": "t", "result": "x"}
    enveloped = Dialect().message("tool_completed", **fields)
    assert enveloped["data"] == fields and enveloped["server_id"] is None and "run_id" not in enveloped
    flat = Dialect(layout="flat").message("tool_completed", **fields)
    assert flat["run_id"] == "r1" and flat["result"] == "x" and "data" not in flat
    mixed = Dialect(layout="mixed").message("tool_completed", **fields)
    assert mixed["tool_name"] == "t" and mixed["data"] == {"result": "x"}
    assert isinstance(Dialect(timestamps="iso").message("pong")["timestamp"], str)

def test_the_netra_declaration_renders_the_real_backends_shapes():
    """docs/protocol.md section 10: websocket_ssot.py 974-988 (marker), 1814-1825 (errors)."""
    netra = Dialect.parse("netra")
    marker = netra.ready_marker("main_abc", "alice-1234")
    assert marker["type"] == "connection_established" and set(marker) == {"type", "data", "timestamp", "server_id",
                                                                          "correlation_id"}
    assert isinstance(marker["timestamp"], float) and marker["server_id"] is None and marker["correlation_id"] is None
    assert set(marker["data"]) == {"mode", "golden_path_events", "features", "connection_id", "user_id", "timestamp"}
    assert marker["data"]["user_id"] == "alice-12..." and isinstance(marker["data"]["timestamp"], str)
    assert marker["data"]["golden_path_events"] == list(protocol.EVENT_NAMES)
    error = netra.error("Connection error in main mode", "CONNECTION_ERROR", error_type="RecursionError", mode="main")
    assert error["type"] == "error_message" and error["data"]["details"] == {"error_type": "RecursionError",
                                                                             "mode": "main"}
    assert netra.mode_error_reason() == "main mode error" and netra.crash_reason == "main cleanup"
    assert netra.agent_request_message("cut costs", thread_id="t1") == {
        "type": "start_agent", "payload": {"user_request": "cut costs", "thread_id": "t1"}}
    assert netra.agent_request_message("x", simulate_agent_unavailable=True)["payload"] == {"user_request": "x"}
    assert netra.offers() == ("jwt-auth",) and Dialect().offers() == ()
    thinking = protocol.decode(json.dumps(netra.message("agent_thinking", run_id="r1", user_id="u1")))
    assert thinking["type"] == "agent_thinking" and thinking.outer_type == "agent_progress"
    completed = netra.message("agent_completed", run_id="r1", user_id="u1", result="ok")
    assert completed["run_id"] == "r1" and completed["data"] == {"result": "ok"}
    assert isinstance(completed["timestamp"], str)


def test_a_users_own_dialect_is_a_mapping_with_a_base():
    mine = Dialect.parse({"base": "netra", "agent_request": "user_message", "ready_ids": False})
    assert (mine.name, mine.layout, mine.agent_request, mine.ready_ids) == ("netra (changed)", "mixed",
                                                                            "user_message", False)
    assert Dialect.parse(mine.to_spec()) == mine
    from gp_lib.scenarios.race_conditions import Params
    assert Params.from_mapping({"dialect": {"base": "flat", "errors": "error_message"}}).chosen_dialect().layout == "flat"
    with pytest.raises(ValueError, match="preset 'klingon'"):
        Dialect.parse({"base": "klingon"})
    with pytest.raises(ValueError, match="colour"):
        Dialect.parse({"colour": "red"})


def test_detection_names_a_declared_dialect_or_describes_the_wire():
    netra, how = dialect_detect(Dialect.parse("netra").ready_marker("main_1", "alice"))
    assert netra.name == "netra" and "data.golden_path_events" in how
    by_health, how = dialect_detect(None, {"/ws/health": {"status": "healthy", "mode": "ssot_consolidated"}})
    assert by_health.name == "netra" and "/ws/health" in how
    plain, how = dialect_detect(Dialect.parse("system_message").ready_marker("c1", "alice"), selected="jwt-auth")
    assert (plain.name, plain.ready, plain.ready_ids, plain.offer_echo) == ("detected", "system_message", False,
                                                                           "scheme")
    assert "without a connection id" in how and "jwt-auth" in how
    iso, _ = dialect_detect(Dialect.parse("flat,timestamps=iso").ready_marker("c1", "alice"))
    assert (iso.layout, iso.timestamps, iso.ready_ids) == ("flat", "iso", True)
    nothing, how = dialect_detect(None)
    assert nothing.health_check and "no readiness marker" in how


# -- the reference server speaking each dialect, through the client and the scenarios -------------

@pytest.fixture(scope="module", params=sorted(DIALECT_PRESETS))
def served(request):
    with running_server({"agent_step_ms": 2}, request.param) as server:
        yield request.param, server


def connect(server, user: str = "alice", *, token: str | None = None, transport: str = "both") -> TracedConnection:
    return TracedConnection(server.url, attempt_id=f"{user}-{transport}", user_id=user, auth_transport=transport,
                            token=token or mint_token(server.secret, user), open_timeout_s=TIMEOUT_S,
                            ready_timeout_s=TIMEOUT_S, extra_offers=server.dialect.offers())


async def test_readiness_is_reached_and_a_ping_answered(served):
    preset, server = served
    async with connect(server) as conn:
        assert await conn.wait_ready()
        assert conn.record.t_first_send_ms is None  # a handshake answer is not the first message
        await conn.send({"type": "ping"})
        answers = await conn.receive_until(lambda m: m["type"] == "pong", TIMEOUT_S)
    record = conn.finish()
    assert record.outcome == "ok" and record.t_ready_ms is not None and answers[-1]["type"] == "pong"
    received = [f["type"] for f in record.frames if f["direction"] == "received"]
    assert READY_TYPE.get(preset, "connection_established") in received
    acks = [f for f in record.frames if f["direction"] == "sent" and f["type"] == protocol.HANDSHAKE_ACK]
    assert len(acks) == (1 if preset == "handshake" else 0)


async def test_an_agent_run_validates_with_all_five_events(served):
    _, server = served
    async with connect(server) as conn:
        await conn.wait_ready()
        await conn.send(server.dialect.agent_request_message("cut costs", agent="cost_optimizer"))
        answers = await conn.receive_until(lambda m: m["type"] == protocol.AGENT_COMPLETED, TIMEOUT_S)
    attempts, frames = to_tables([conn.finish()])
    runs = events.run_table(frames, attempts)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["complete"] and run["in_order"] and run["tools_closed"] and not run["foreign"], run["problems"]
    assert run["ending"] == "completed" and run["missing"] == ""
    assert all(protocol.event_time(m) is not None for m in answers)


async def test_an_invalid_message_gets_a_readable_error(served):
    preset, server = served
    async with connect(server) as conn:
        await conn.wait_ready()
        await conn.send({"no_type": True})
        answers = await conn.receive_until(protocol.is_error, TIMEOUT_S)
    error = answers[-1]
    assert protocol.is_error(error) and protocol.error_code(error) == "INVALID_MESSAGE"
    assert "no type" in protocol.message_text(error)
    assert error["type"] == ("error" if server.dialect.errors == "error" else "error_message")
    assert conn.finish().outcome == "ok"  # an error frame is an answer, not a failure


async def test_authentication_by_header_by_subprotocol_and_a_wrong_secret(served):
    preset, server = served
    outcomes = {}
    for transport in ("header", "subprotocol"):
        async with connect(server, transport=transport) as conn:
            await conn.wait_ready()
        outcomes[transport] = (conn.finish().outcome, conn.record.handshake_status)
    async with connect(server, token=mint_token(secrets.token_urlsafe(32), "mallory")) as conn:
        await conn.wait_ready()
    assert conn.finish().outcome == ("auth_rejected" if server.dialect.auth_enforced else "ok")
    assert outcomes["subprotocol"] == ("ok", 101)
    assert outcomes["header"] == (("auth_rejected", 401) if preset == "stripped_header" else ("ok", 101))


async def test_the_four_scenarios_pass_and_nothing_is_diagnosed(served, monkeypatch, tmp_path):
    preset, server = served
    monkeypatch.setenv(SECRET_ENV, server.secret)
    params = triage.TriageParams(target_url=server.url, jwt_secret_env=SECRET_ENV, receive_timeout_s=TIMEOUT_S,
                                 out_dir=str(tmp_path))
    results = await triage.run(params)
    assert {r.scenario: r.verdict for r in results} == {name: "pass" for name in triage.MODULES}, \
        {r.scenario: [c.to_dict() for c in r.checks if c.failed] for r in results}
    findings = diagnosis.diagnose(results)
    expected = [] if server.dialect.auth_enforced else [diagnosis.AUTH_NOT_ENFORCED]
    assert [f.root_cause for f in findings] == expected, [f.to_dict() for f in findings]
    detected = {r.dialect["live"]["dialect"] for r in results}  # the declared one, else described from the wire
    assert detected == {"netra" if preset.startswith("netra") else "detected"}


def test_a_spec_is_named_as_written_and_a_deep_json_spec_is_refused_by_name():
    assert Dialect.parse("flat,iso").name == "flat+iso"
    assert Dialect.parse("netra,heartbeat_interval_s=5").name == "netra (changed)"
    assert Dialect.parse("netra").name == "netra"
    with pytest.raises(ValueError, match="neither a preset nor a JSON object"):
        Dialect.parse('{"a":' * 3000)
