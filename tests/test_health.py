"""The health routes of a target, over real loopback HTTP: what they answer, never an exception."""

import json
import os

from gp_lib import health
from gp_lib.refserver import free_port, running_server

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)


def test_health_urls_share_the_websocket_host_and_port():
    assert health.health_urls("wss://staging.example:8443/ws") == [
        ("/health", "https://staging.example:8443/health"), ("/ws/health", "https://staging.example:8443/ws/health")]
    assert health.health_urls("ws://127.0.0.1:8000/ws")[0] == ("/health", "http://127.0.0.1:8000/health")


def test_health_answer_names_the_services_down():
    body = {"status": "degraded", "service_availability": {"critical_services": {"agent_supervisor": "down",
                                                                                  "database": "up"}}}
    assert health.health_answer(json.dumps(body).encode()) == "degraded; down: agent_supervisor"
    assert health.health_answer(b'{"error": "no route /health"}') == '{"error": "no route /health"}'
    assert health.health_answer(b"<html>Upgrade Required</html>") == "<html>Upgrade Required</html>"


async def test_a_health_probe_nobody_answers_is_evidence_not_an_error():
    rows = await health.probe_health(f"ws://127.0.0.1:{free_port()}/ws", "healthy", 2.0 * SCALE)
    assert [r["path"] for r in rows] == ["/health", "/ws/health"]
    assert all(r["status"] is None and r["answer"].startswith("no answer") for r in rows)


async def test_health_probes_to_loopback_bypass_the_environment_proxy(monkeypatch):
    with running_server({}) as server:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # a proxy nobody runs
        rows = await health.probe_health(server.url, "healthy", 2.0 * SCALE)
    assert [(r["path"], r["status"]) for r in rows] == [("/health", 200), ("/ws/health", 200)]


async def test_an_answer_says_whether_the_service_is_ready():
    with running_server({"dependencies": "close", "services_down": ["agent_supervisor"]}, "netra") as server:
        answers = {a.path: a for a in await health.fetch_all(server.url, 2.0 * SCALE)}
    ws_health = answers["/ws/health"]
    assert ws_health.answered and ws_health.status == 200 and ws_health.not_ready
    assert ws_health.body["mode"] == "ssot_consolidated"  # the dialect's own fields, for detection
    assert ws_health.body["service_availability"]["allow_websocket_connections"] is False
    assert answers["/health"].answered and not answers["/health"].not_ready
    with running_server({}) as server:
        answers = await health.fetch_all(server.url, 2.0 * SCALE)
    assert [a.not_ready for a in answers] == [False, False]


def test_health_urls_never_carry_userinfo():
    assert health.health_urls("ws://user:pw@127.0.0.1:8000/ws")[1] == ("/ws/health", "http://127.0.0.1:8000/ws/health")


def test_a_body_dripped_byte_by_byte_is_cut_at_the_deadline():
    """urllib's timeout is per read: a server that sends one byte every 50 ms never trips it."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    total = 200  # 10 s of body at 50 ms a byte

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total):
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        answer = health.fetch("/health", f"http://127.0.0.1:{port}/health", 0.5)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert answer.status == 200
    assert 0 < len(answer.summary) < total / 2  # cut near 0.5 s of 10 s, not read to the end
