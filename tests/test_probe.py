"""`gp probe` against real reference servers: frames with timings, close code and reason, exit codes."""

from __future__ import annotations

import os
import re

import pytest

from gp_lib.auth import mint_token
from gp_lib.cli import main
from gp_lib.probe import frame_line
from gp_lib.refserver import free_port, running_server

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_PROBE_TEST_SECRET"
PING = '{"type": "ping"}'
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.")


@pytest.fixture(scope="module")
def server():
    with running_server({"race": True, "setup_ms": 30 * SCALE, "setup_ms_per_concurrent": 0}, "handshake") as handle:
        yield handle


def probe(capsys, monkeypatch, secret: str | None, *args: str) -> tuple[int, str, str]:
    if secret is not None:
        monkeypatch.setenv(SECRET_ENV, secret)
    else:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    code = main(["probe", *args, "--jwt-secret-env", SECRET_ENV, "--wait", str(0.2 * SCALE)])
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(out: str, kind: str) -> list[str]:
    return [line for line in out.splitlines() if f" {kind} " in f"{line} "]


def test_a_normal_session_shows_every_frame_and_exits_0(server, capsys, monkeypatch):
    code, out, _ = probe(capsys, monkeypatch, server.secret, server.url, "--send", PING)
    assert code == 0
    assert 0 <= float(lines_of(out, "open")[0].split()[0]) < 5  # times count from the upgrade
    assert "<- handshake_response" in out and "-> handshake_acknowledged" in out  # the handshake was answered
    assert "<- handshake_complete" in out and "-> ping" in out and "<- pong" in out
    assert "close:        1000 (normal) by client" in out and "outcome:      ok (normal)" in out
    assert server.secret not in out and not JWT.search(out)


def test_a_send_in_the_race_window_shows_the_1011_and_exits_1(server, capsys, monkeypatch):
    code, out, _ = probe(capsys, monkeypatch, server.secret, server.url, "--send-at-ms", "0", "--send", PING)
    assert code == 1
    assert "closed 1011 'Internal error: message handled before connection setup' by server" in out
    assert "readiness:    none" in out and "outcome:      closed_1011 (abnormal)" in out


def test_send_at_ms_times_the_first_message_from_the_upgrade(server, capsys, monkeypatch):
    delay = 100 * SCALE  # well past the 30 ms setup: no race
    code, out, _ = probe(capsys, monkeypatch, server.secret, server.url, "--send-at-ms", str(delay), "--send", PING)
    sent_at = float(lines_of(out, "ping")[0].split()[0])
    assert code == 0 and delay <= sent_at < delay + 50 * SCALE


def test_a_token_signed_with_another_secret_is_rejected_and_exits_1(server, capsys, monkeypatch):
    code, out, _ = probe(capsys, monkeypatch, "not-the-server-secret-at-all", server.url)
    assert code == 1
    assert "AUTH_FAILED" in out and "bad signature" in out
    assert "closed 1008 'Authentication failed' by server" in out and "outcome:      auth_rejected" in out
    assert "not-the-server-secret-at-all" not in out and not JWT.search(out)


def test_a_closed_port_is_refused_and_exits_1(capsys, monkeypatch):
    code, out, _ = probe(capsys, monkeypatch, "secret", f"ws://127.0.0.1:{free_port()}/ws")
    assert code == 1
    assert "HTTP status:  none (no HTTP answer)" in out and "outcome:      refused (abnormal)" in out


def test_a_token_in_the_url_is_never_printed(capsys, monkeypatch):
    token = mint_token("url-token-secret-0123456789", "alice")
    code, out, _ = probe(capsys, monkeypatch, "secret", f"ws://127.0.0.1:{free_port()}/ws?token={token}")
    assert code == 1 and "outcome:      refused" in out
    assert token not in out and not JWT.search(out)
    code, _, err = probe(capsys, monkeypatch, "secret", f"http://example.test/ws?token={token}")
    assert code == 2 and "URL must be" in err and token not in err and not JWT.search(err)


@pytest.mark.parametrize("args, named", [
    (["http://example.test/ws"], "URL must be a ws:// or wss:// URL"),
    (["ws://example.test/ws", "--send", "{nope"], "--send #1 is not JSON"),
    (["ws://example.test/ws", "--send", "[" * 100_000], "--send #1 is not JSON"),
    (["ws://example.test/ws", "--send", PING, "--send", "[1]"], "--send #2 must be a JSON object with a string type"),
    (["ws://example.test/ws", "--send-at-ms", "-5"], "--send-at-ms must not be negative"),
    (["ws://example.test/ws", "--open-timeout", "0"], "--open-timeout must be greater than zero"),
])
def test_bad_input_exits_2_naming_it(args, named, capsys, monkeypatch):
    code, out, err = probe(capsys, monkeypatch, "secret", *args)
    assert code == 2 and named in err and out == ""


def test_a_missing_secret_variable_exits_2_naming_it(capsys, monkeypatch):
    code, _, err = probe(capsys, monkeypatch, None, "ws://example.test/ws")
    assert code == 2 and SECRET_ENV in err


def test_frame_times_count_from_the_upgrade():
    row = {"t_ms": 15.25, "direction": "received", "type": "pong", "payload": '{"type": "pong"}'}
    assert frame_line(row, t_open_ms=5.0) == '     10.2 ms  <- pong                     {"type": "pong"}'
    close = {"t_ms": 7.0, "direction": "mark", "type": "close",
             "payload": '{"code": 1011, "reason": "x", "by": "server"}'}
    assert frame_line(close, t_open_ms=None).endswith("close                    closed 1011 'x' by server")


def test_against_the_real_backends_dialect_the_selected_scheme_is_offered_and_a_crashed_loop_exits_1(
        capsys, monkeypatch):
    """The real backend answers a jwt.<token> offer with a bare jwt-auth (a strict client then fails its own
    handshake) and, when its message loop dies, closes 1000 'main cleanup' without answering."""
    with running_server({"events": "loop_crash", "setup_ms": 1}, "netra") as netra:
        code, out, _ = probe(capsys, monkeypatch, netra.secret, netra.url, "--send", PING)
    assert "the server selected the subprotocol 'jwt-auth', which was not offered" in out
    assert "subprotocol accepted: jwt-auth" in out and "<- connection_established" in out
    assert "close:        1000 (normal) 'main cleanup' by server" in out
    assert "unanswered:   the server closed the socket after 1 message without answering any" in out
    assert code == 1 and "outcome:      closed_other (abnormal)" in out
    with running_server({"setup_ms": 1}, "netra") as netra:
        code, out, _ = probe(capsys, monkeypatch, netra.secret, netra.url, "--dialect", "netra", "--send", PING)
    assert code == 0 and "which was not offered" not in out and "<- pong" in out


def test_a_readiness_marker_after_the_message_is_not_its_answer(capsys, monkeypatch):
    """Sent before readiness (--send-at-ms 0), the message is followed by the marker, then the crashed loop's 1000."""
    with running_server({"events": "loop_crash", "setup_ms": 50}, "netra") as netra:
        code, out, _ = probe(capsys, monkeypatch, netra.secret, netra.url, "--dialect", "netra", "--send", PING,
                             "--send-at-ms", "0")
    assert out.index("-> ") < out.index("<- connection_established")
    assert code == 1 and "unanswered:" in out
