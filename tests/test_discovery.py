"""Discovery of a live target over real loopback sockets: its dialect, its health, whether it checks tokens."""

from __future__ import annotations

import os

from gp_lib import discovery
from gp_lib.dialects import Dialect
from gp_lib.refserver import free_port, running_server
from gp_lib.scenarios.common import CommonParams, Credentials, Target
from gp_lib.trace import to_tables

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)


def target_of(url: str, secret: str) -> Target:
    params = CommonParams(target_url=url, open_timeout_s=2.0 * SCALE, ready_timeout_s=2.0 * SCALE)
    return Target(url, "live", "race_conditions", params, Credentials(params, secret=secret))


async def test_a_server_that_checks_tokens_refuses_every_probe_and_its_dialect_is_described():
    with running_server({"setup_ms": 1}, "system_message") as server:
        found = await discovery.discover(target_of(server.url, server.secret), secret=server.secret)
    intro, *probes = found.records
    assert intro.condition == discovery.INTRODUCTION and intro.outcome == "ok" and intro.t_ready_ms is not None
    assert [p.condition for p in probes] == list(discovery.AUTH_PROBES) and found.accepted_probes == []
    assert [p.outcome for p in probes] == ["auth_rejected", "auth_rejected", "auth_rejected"]
    assert (found.dialect.name, found.dialect.ready, found.dialect.ready_ids) == ("detected", "system_message", False)
    marks = discovery.health_marks(to_tables([intro])[1])
    assert [(m["path"], m["status"], m["not_ready"]) for m in marks] == [("/health", 200, False),
                                                                         ("/ws/health", 200, False)]


async def test_the_real_backends_dialect_is_named_its_scheme_offered_and_its_demo_mode_found():
    with running_server({"setup_ms": 1}, "netra_demo") as server:
        found = await discovery.discover(target_of(server.url, server.secret), secret=server.secret)
    assert found.dialect.name == "netra" and "data.mode" in found.how
    assert "selects the subprotocol jwt-auth" in found.how and found.records[0].subprotocol == "jwt-auth"
    assert found.accepted_probes == list(discovery.AUTH_PROBES)
    assert {r.server_user for r in found.records} == {"demo-use..."}
    assert discovery.summary(found)["auth_probes_accepted"] == list(discovery.AUTH_PROBES.values())


async def test_a_forced_dialect_is_used_as_given_and_without_the_secret_no_expired_token_is_minted():
    with running_server({"setup_ms": 1}, "netra") as server:
        found = await discovery.discover(target_of(server.url, server.secret), dialect=Dialect.parse("netra"))
    assert found.how == "netra: set by the dialect parameter" and found.records[0].outcome == "ok"
    assert [r.condition for r in found.records[1:]] == [discovery.WRONG_SECRET, discovery.NO_TOKEN]


async def test_nothing_listening_is_evidence_and_the_default_is_assumed():
    url = f"ws://127.0.0.1:{free_port()}/ws"
    found = await discovery.discover(target_of(url, "any-secret-of-some-length"))
    assert found.records[0].outcome == "refused" and found.dialect.name == "default (assumed)"
    assert "no readiness marker" in found.how and "the introduction ended refused" in found.how


async def test_the_auth_probes_carry_no_test_mode_headers():
    """A server that trusts X-User-ID would admit a probe for it: the finding would then blame its token checks."""
    import json

    import websockets

    seen: list[tuple[str | None, str | None]] = []

    async def handler(ws):
        headers = ws.request.headers
        seen.append((headers.get("X-User-ID"), headers.get("Authorization")))
        await ws.send(json.dumps({"type": "connection_established", "connection_id": f"c{len(seen)}"}))
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        found = await discovery.discover(target_of(f"ws://127.0.0.1:{port}/ws", "a-secret-of-enough-length-1234"),
                                         secret="a-secret-of-enough-length-1234")
    assert [r.condition for r in found.records] == [discovery.INTRODUCTION, *discovery.AUTH_PROBES]
    assert seen[0][0] is not None  # the introduction is scenario-like traffic: headers as the parameters say
    assert [user for user, _ in seen[1:]] == [None, None, None]
