"""Class 3, redaction by shape only: a credential echoed in any common encoding, or carried in a URL,
never reaches a table, a trace, a report or the terminal."""

from __future__ import annotations

import pytest
from hostile_servers import SECRET, URL_SECRET, HostileServer, encodings, token_echo
from leak_scan import leaks_in
from test_properties import registry_restored

from gp_lib import auth, trace
from gp_lib.client import TracedConnection
from gp_lib.redact import redact, register_secret

TOKEN = auth.mint_token(SECRET, "alice")


@pytest.fixture(autouse=True)
def secret_registered():
    """SECRET registered, as `gp` registers the JWT secret it is given, for each test of this file only."""
    with registry_restored():
        register_secret(SECRET)
        yield


@pytest.mark.parametrize("form", list(encodings(TOKEN)))
@pytest.mark.parametrize("what", ["token", "secret"])
def test_redact_removes_a_credential_in_each_encoding(what, form):
    secret = TOKEN if what == "token" else SECRET
    text = f'{{"type":"error","message":"you sent x{encodings(secret)[form]}y, ok"}}'
    assert leaks_in(redact(text), {what: secret}) == []


async def test_a_server_echoing_the_token_in_every_encoding_leaves_no_trace_of_it(tmp_path):
    with HostileServer(token_echo) as server:
        conn = TracedConnection(server.url, attempt_id="e1", token=TOKEN, user_id="alice", open_timeout_s=5,
                                ready_timeout_s=2)
        if await conn.open():
            await conn.wait_ready()
            await conn.collect(0.5)
        await conn.close()
    conn.finish()
    assert conn.record.frames_received == 15  # readiness, 12 echoes, 2 raw texts
    attempts, frames = trace.to_tables([conn.record])
    path = trace.save_jsonl(tmp_path / "t.jsonl", attempts, frames)
    assert leaks_in(path.read_text(), {"token": TOKEN, "secret": SECRET}) == []


@pytest.mark.parametrize("url", [
    f"ws://admin:{URL_SECRET}@example.test/ws",
    f"wss://example.test/ws?api_key={URL_SECRET}",
    f"wss://example.test/ws?room=1&token={URL_SECRET}#x",
    f"ws://example.test/ws?a=1&access_token={URL_SECRET}&password={URL_SECRET}",
    f"https://example.test/ws?Secret={URL_SECRET}",
    f"ws://example.test/ws?key={URL_SECRET}",
])
def test_urls_lose_userinfo_and_sensitive_query_values(url):
    text = redact(f"target {url} failed")
    assert URL_SECRET not in text and "example.test" in text


def test_probe_never_prints_url_credentials(run_gp):
    with HostileServer(token_echo) as server:
        url = f"ws://admin:{URL_SECRET}@127.0.0.1:{server.port}/ws?api_key={URL_SECRET}"
        result = run_gp("probe", url, "--wait", "0.3", "--ready-timeout", "2")
        token = server.requests[0].token
    assert "Traceback" not in result.err
    assert leaks_in(result.text, {"token": token, "secret": SECRET, "url": URL_SECRET}) == []
