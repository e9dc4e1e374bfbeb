"""Class 1, credentials sent elsewhere: a redirect is never followed with credentials.

Real servers on loopback: one answers the upgrade (or the token request) with
a redirect to a second port, which records whatever arrives there.
"""

from __future__ import annotations

import pytest
from hostile_servers import SECRET, URL_SECRET, Conn, HostileServer, recorder, redirect_auth, serving

from gp_lib import auth
from gp_lib.client import TracedConnection
from gp_lib.redact import REDACTED


def redirecting(status: int, *, same_origin: bool = False):
    """A server that answers the upgrade of /ws with `status`; /ws2 upgrades and says ready."""
    async def behaviour(conn: Conn) -> None:
        if conn.request.path.startswith("/ws2"):
            await conn.upgrade()
            await conn.send_json({"type": "connection_established", "data": {"connection_id": "c"}})
            await conn.hold()
            return
        port = conn.server.port if same_origin else conn.server.peer.port
        await conn.respond(status, {"Location": f"ws://u:{URL_SECRET}@127.0.0.1:{port}/ws2?token={URL_SECRET}"})
    return behaviour


async def attempt(url: str, **options) -> TracedConnection:
    token = auth.mint_token(SECRET, "alice")
    conn = TracedConnection(url, attempt_id="r1", token=token, user_id="alice", open_timeout_s=5,
                            ready_timeout_s=2, extra_headers=auth.test_mode_headers("alice", "local"), **options)
    if await conn.open():
        await conn.wait_ready()
    await conn.close()
    conn.finish()
    return conn


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirected_upgrade_is_not_followed_and_is_recorded(status):
    with HostileServer(recorder) as peer, HostileServer(redirecting(status), peer=peer) as server:
        conn = await attempt(server.url)
    assert peer.requests == []  # neither the jwt.* offer nor X-User-ID went to the other port
    record = conn.record
    assert record.outcome == "redirected" and record.handshake_status == status
    assert f"127.0.0.1:{peer.port}" in record.error and URL_SECRET not in record.error and REDACTED in record.error


async def test_follow_redirects_follows_the_same_origin_only():
    with HostileServer(recorder) as peer, HostileServer(redirecting(302, same_origin=True), peer=peer) as server:
        conn = await attempt(server.url, follow_redirects=True)
        assert conn.record.outcome == "ok" and conn.record.t_ready_ms is not None
        assert [r.path.split("?")[0] for r in server.requests] == ["/ws", "/ws2"]
    with HostileServer(recorder) as peer, HostileServer(redirecting(307), peer=peer) as server:
        conn = await attempt(server.url, follow_redirects=True)
    assert peer.requests == [] and conn.record.outcome == "redirected"


@pytest.mark.parametrize("path", ["/", "/temporary/"])
def test_the_staging_token_fetch_never_sends_the_bypass_key_across_a_redirect(monkeypatch, path):
    monkeypatch.setenv("GP_HOSTILE_BYPASS", "bypass-key-hostile-0123456789")
    with HostileServer(recorder) as peer, HostileServer(redirect_auth, peer=peer) as server:
        source = auth.StagingTokenSource(server.http_url + path.rstrip("/"), "GP_HOSTILE_BYPASS", timeout_s=5)
        with pytest.raises(auth.AuthError, match="redirect"):
            source.token("alice@example.test")
    assert not any("x-e2e-bypass-key" in r.headers for r in peer.requests)


def test_probe_names_the_redirect_and_keeps_the_location_redacted(run_gp):
    with serving("redirect_upgrade") as server:
        result = run_gp("probe", server.url)
        assert server.peer.requests == []
    assert result.code == 1 and "outcome:      redirected" in result.out
    assert URL_SECRET not in result.out + result.err


@pytest.mark.parametrize("follow", [False, True])
@pytest.mark.parametrize("headers", [{"Location": "ws://127.0.0.1:9/a", "location": "ws://127.0.0.1:9/b"},
                                     {"Location": "http://[x"}], ids=["two-locations", "not-a-url"])
async def test_an_unreadable_redirect_is_recorded_not_raised(headers, follow):
    async def behaviour(conn: Conn) -> None:
        await conn.respond(302, headers)

    with HostileServer(behaviour) as server:
        conn = await attempt(server.url, follow_redirects=follow)
    assert conn.record.outcome == "redirected" and conn.record.handshake_status == 302
