"""The live-mode preflight: one connection and the health routes name an unreachable target or a rejected
token before any traffic, and let everything else through as evidence."""

from __future__ import annotations

import http
import json
from pathlib import Path

import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from gp_lib import cli, preflight
from gp_lib.refserver import free_port, running_server
from gp_lib.scenarios import race_conditions

SECRET_ENV = "GP_PREFLIGHT_SECRET"


def _params(url: str, **overrides):
    return race_conditions.Params.from_mapping({"target_url": url, "jwt_secret_env": SECRET_ENV, **overrides})


def test_a_closed_port_stops_the_run_as_unreachable(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "a-secret-long-enough-for-the-preflight-tests")
    seen = preflight.run(_params(f"ws://127.0.0.1:{free_port()}/ws"))  # a port nothing listens on
    assert seen.root_cause == "unreachable" and seen.outcome == "refused"
    assert seen.stop.startswith("target unreachable: ws://127.0.0.1:") and "no health route answered" in seen.stop
    assert [h["status"] for h in seen.health] == [None, None]


def test_a_wrong_secret_stops_the_run_as_authentication_and_says_which_problem(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "not-the-server-secret-but-long-enough-for-pyjwt")
    with running_server() as server:
        seen = preflight.run(_params(server.url))
        assert server.stats()["connections_total"] == 1  # one connection, not a thousand
    assert seen.root_cause == "authentication" and seen.close_code == 1008
    assert "bad signature" in seen.said and "signed with another secret" in seen.stop
    assert [h["status"] for h in seen.health] == [200, 200]


def test_a_healthy_target_goes_on_with_what_the_preflight_saw(monkeypatch):
    with running_server({"setup_ms": 20}) as server:
        monkeypatch.setenv(SECRET_ENV, server.secret)
        seen = preflight.run(_params(server.url))
    assert seen.stop is None and seen.outcome == "ok" and seen.ready_ms >= 15
    assert json.loads(json.dumps(seen.to_dict()))["health"][0] == {"path": "/health", "status": 200, "answer": "ok"}


class NotReadyBackend:
    """A backend whose services are not ready: the upgrade answered `status`, /health 200, /ws/health 503."""

    def __init__(self, status: int, body: str):
        self.status, self.body = status, body

    def answer(self, connection, request):
        routes = {"/health": (200, '{"status": "ok"}'), "/ws/health": (503, '{"status": "unhealthy"}')}
        code, body = routes.get(request.path, (self.status, self.body))
        return Response(code, http.HTTPStatus(code).phrase, Headers({"Content-Type": "application/json"}),
                        body.encode())

    async def handler(self, ws):  # never reached: every request is answered over HTTP
        await ws.close()


@pytest.mark.parametrize("status, body", [(500, '{"detail": "Internal Server Error"}'),
                                          (403, '{"detail": "WebSocket service not ready"}')])
async def test_an_upgrade_refused_while_services_are_not_ready_is_evidence_not_a_stop(monkeypatch, status, body):
    monkeypatch.setenv(SECRET_ENV, "a-secret-long-enough-for-the-preflight-tests")
    backend = NotReadyBackend(status, body)
    async with serve(backend.handler, "127.0.0.1", 0, process_request=backend.answer) as server:
        port = server.sockets[0].getsockname()[1]
        seen = await preflight.check(_params(f"ws://127.0.0.1:{port}/ws"))
    assert seen.stop is None and seen.root_cause is None
    assert seen.handshake_status == status
    assert [(h["path"], h["status"]) for h in seen.health] == [("/health", 200), ("/ws/health", 503)]


async def test_a_403_that_names_authentication_stops_the_run(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "a-secret-long-enough-for-the-preflight-tests")
    backend = NotReadyBackend(403, '{"detail": "invalid token: signature verification failed"}')
    async with serve(backend.handler, "127.0.0.1", 0, process_request=backend.answer) as server:
        port = server.sockets[0].getsockname()[1]
        seen = await preflight.check(_params(f"ws://127.0.0.1:{port}/ws"))
    assert seen.root_cause == "authentication" and "HTTP 403" in seen.stop


def test_gp_report_stops_before_any_traffic_and_exits_2(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setenv(SECRET_ENV, "not-the-server-secret-but-long-enough-for-pyjwt")
    with running_server() as server:
        code = cli.main(["report", "--target", server.url, "--out", str(tmp_path / "out"),
                         "-p", f"jwt_secret_env={SECRET_ENV}"])
        assert server.stats()["connections_total"] == 1
    assert code == 2
    assert "authentication rejected" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "error" and summary["diagnosis"][0]["root_cause"] == "authentication"
    assert set(summary["scenarios"]) == {"race_conditions", "service_dependencies", "factory_initialization",
                                         "missing_events"}
    assert summary["preflight"]["close_code"] == 1008
    assert "not-the-server-secret" not in (tmp_path / "out" / "summary.json").read_text()


def test_a_preflight_that_made_no_connection_says_so():
    from gp_lib.preflight import Preflight

    line = Preflight("ws://127.0.0.1:9/ws", stop="no token: the secret variable is empty").line()
    assert line.startswith("one connection: not attempted: no token") and "None" not in line
