"""Authentication at the upgrade: where the token travels, and how each bad token fails (never 1011)."""

from __future__ import annotations

import time

import pytest
from refserver_client import Wire
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gp_lib.auth import mint_token, subprotocol_offer
from gp_lib.protocol import INTERNAL_ERROR, POLICY_VIOLATION, is_auth_failure, is_ready_marker, message_text
from gp_lib.refserver import running_server


@pytest.fixture(scope="module")
def server():
    with running_server({"setup_ms": 2}) as handle:
        yield handle


async def test_header_token_is_accepted_without_a_subprotocol(wire):
    async with wire.session("alice", transport="header") as session:
        assert session.ws.subprotocol is None
        assert session.frames[-1]["data"]["user_id"] == "alice"


@pytest.mark.parametrize("prefix", ["jwt", "jwt-auth", "bearer"])
async def test_subprotocol_token_is_accepted_and_its_offer_echoed(wire, prefix):
    token = wire.token("bob")
    offer = subprotocol_offer(token) if prefix == "jwt" else f"{prefix}.{token}"
    async with wire.session(token=token, transport="header", additional_headers={},
                            subprotocols=["chat", offer]) as session:
        assert session.ws.subprotocol == offer
        assert session.frames[-1]["data"]["user_id"] == "bob"


async def test_no_token_is_http_401(server):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url, open_timeout=5):
            pass
    assert refused.value.response.status_code == 401


def _bad_tokens(wire: Wire) -> dict[str, tuple[str, str]]:
    now = time.time()
    return {
        "bad_signature": (mint_token("another-secret-entirely", "mallory"), "signature"),
        "expired": (wire.token("alice", now=now - 3 * 3600, lifetime_s=1800), "expired"),
        "wrong_issuer": (wire.token("alice", issuer="someone-else"), "issuer"),
        "no_token_type": (wire.token("alice", extra_claims={"token_type": None}), "token_type"),
        "future_iat": (wire.token("alice", now=now + 3600), "future"),
        "malformed": ("this-is-not-a-jwt", "malformed"),
        # a header PyJWT refuses (kid must be a string): the first part is {"alg": "HS256", "kid": 5}
        "bad_header": ("eyJhbGciOiAiSFMyNTYiLCAia2lkIjogNX0.eyJzdWIiOiAiYWxpY2UifQ.c2ln", "malformed"),
    }


@pytest.mark.parametrize("case", ["bad_signature", "expired", "wrong_issuer", "no_token_type", "future_iat",
                                  "malformed", "bad_header"])
@pytest.mark.parametrize("transport", ["header", "subprotocol"])
async def test_invalid_token_gets_auth_failed_then_1008(wire, case, transport):
    token, problem = _bad_tokens(wire)[case]
    async with wire.session(token=token, transport=transport, ready=False) as session:
        error = await session.recv()
        code, reason = await session.closed()
    assert is_auth_failure(error), error
    assert problem in message_text(error)
    assert code == POLICY_VIOLATION and code != INTERNAL_ERROR
    assert not any(is_ready_marker(f) for f in session.frames)


def test_tokens_and_secret_stay_out_of_the_handle_repr(server):
    assert server.secret not in repr(server)


# -- dialects that move the rejection -------------------------------------------------

async def test_stripped_header_dialect_ignores_the_authorization_header():
    with running_server({"setup_ms": 2}, "stripped_header") as handle:
        wire = Wire(handle.url, handle.secret)
        with pytest.raises(InvalidStatus) as refused:
            async with wire.session("alice", transport="header"):
                pass
        assert refused.value.response.status_code == 401
        async with wire.session("alice", transport="subprotocol") as session:
            assert session.ws.subprotocol is not None and session.ws.subprotocol.startswith("jwt.")
        async with wire.session("alice", transport="both") as session:
            assert is_ready_marker(session.frames[-1])


async def test_http_auth_reject_dialect_refuses_invalid_tokens_with_401():
    with running_server({"setup_ms": 2}, "auth_reject=http") as handle:
        wire = Wire(handle.url, handle.secret)
        with pytest.raises(InvalidStatus) as refused:
            async with wire.session(token=wire.token("alice", issuer="someone-else")):
                pass
        assert refused.value.response.status_code == 401
        async with wire.session("alice") as session:
            assert is_ready_marker(session.frames[-1])
