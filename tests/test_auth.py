"""Tokens: claims minted, problems found in plain words, offers encoded, staging errors named."""

import base64
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import jwt
import pytest

from gp_lib import auth
from gp_lib.redact import redact

SECRET = "unit-test-secret-0123456789-abcdef"


def test_minted_token_carries_the_strict_claims():
    token = auth.mint_token(SECRET, "u1", permissions=["read"], lifetime_s=60, extra_claims={"tenant": "t1"})
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="netra-auth-service")
    assert claims["sub"] == "u1" and claims["email"] == "u1@golden-path.test"
    assert claims["permissions"] == ["read"] and claims["tenant"] == "t1"
    assert claims["type"] == claims["token_type"] == "access"
    assert claims["exp"] - claims["iat"] == 60
    assert auth.inspect_token(token, SECRET).problems == []
    assert auth.verify_token(token, SECRET)["sub"] == "u1"


def test_each_token_is_unique():
    assert auth.mint_token(SECRET, "u1", now=1000) != auth.mint_token(SECRET, "u1", now=1000)


@pytest.mark.parametrize("kwargs, secret, problem", [
    ({"now": time.time() - 3600, "lifetime_s": 60}, SECRET, "expired"),
    ({"now": time.time() + 600}, SECRET, "issued in the future"),
    ({"now": time.time() - 30 * 3600, "lifetime_s": 40 * 3600}, SECRET, "older than 24 h"),
    ({"extra_claims": {"token_type": None}}, SECRET, "no token_type"),
    ({"issuer": "someone-else"}, SECRET, "wrong issuer"),
    ({}, "another-secret-0123456789", "bad signature"),
])
def test_problems_in_plain_words(kwargs, secret, problem):
    token = auth.mint_token(SECRET, "u1", **kwargs)
    report = auth.inspect_token(token, secret)
    assert any(problem in p for p in report.problems), report.problems
    with pytest.raises(auth.TokenError, match=problem):
        auth.verify_token(token, secret)


def test_unsupported_algorithm_and_garbage():
    token = jwt.encode({"sub": "u1"}, "k" * 64, algorithm="HS512")
    assert any("unsupported algorithm 'HS512'" in p for p in auth.inspect_token(token).problems)
    assert auth.inspect_token("not-a-token").problems[0].startswith("malformed token")


@pytest.mark.parametrize("header", [{"alg": "HS256", "kid": 5}, {"alg": "HS256", "crit": "x"}])
def test_a_header_pyjwt_refuses_is_a_problem_not_an_exception(header):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    token = f"{part(header)}.{part({'sub': 'u1'})}.c2ln"
    assert auth.inspect_token(token, SECRET).problems[0].startswith("malformed token")
    with pytest.raises(auth.TokenError, match="malformed token"):
        auth.verify_token(token, SECRET)


def test_signature_is_not_checked_without_a_secret():
    token = auth.mint_token(SECRET, "u1")
    assert auth.inspect_token(token).ok


def test_subprotocol_offer_round_trip():
    token = auth.mint_token(SECRET, "u1")
    offer = auth.subprotocol_offer(token)
    assert offer.startswith("jwt.") and "=" not in offer
    assert base64.urlsafe_b64decode(offer[4:] + "==").decode() == token
    assert auth.token_from_offer(offer) == token
    assert auth.token_from_offer("jwt-auth." + token) == token
    assert auth.token_from_offer("bearer." + token) == token
    assert auth.token_from_offer("graphql-ws") is None


@pytest.mark.parametrize("transport, header, offer", [("both", True, True), ("header", True, False),
                                                      ("subprotocol", False, True)])
def test_transports(transport, header, offer):
    kwargs = auth.connect_kwargs("tok.en.x", transport, {"X-Test-Mode": "true"})
    assert ("Authorization" in kwargs["additional_headers"]) is header
    assert bool(kwargs["subprotocols"]) is offer
    assert kwargs["additional_headers"]["X-Test-Mode"] == "true"


def test_unknown_transport_is_named():
    with pytest.raises(ValueError, match="auth_transport must be one of"):
        auth.connect_kwargs("t", "cookie")


def test_secret_from_env(monkeypatch):
    monkeypatch.delenv("GP_TEST_SECRET", raising=False)
    with pytest.raises(auth.AuthError, match="GP_TEST_SECRET is not set"):
        auth.secret_from_env("GP_TEST_SECRET")
    monkeypatch.setenv("GP_TEST_SECRET", "from-the-environment-42")
    assert auth.secret_from_env("GP_TEST_SECRET") == "from-the-environment-42"
    assert "from-the-environment-42" not in redact("the secret is from-the-environment-42")


def test_minted_tokens_are_redacted_everywhere():
    token = auth.mint_token(SECRET, "u1")
    text = f"Authorization: Bearer {token} offer {auth.subprotocol_offer(token)}"
    cleaned = redact(text)
    assert token not in cleaned and auth.subprotocol_offer(token) not in cleaned


# -- staging tokens against a real HTTP server on loopback --------------------------------

class _AuthService(BaseHTTPRequestHandler):
    status = 200
    delay_s = 0.0
    calls = 0
    body = None  # bytes to answer 200 with instead of a token
    drip_s = None  # seconds between the bytes of the body, sent one at a time
    sent = 0  # bytes of the body written

    def do_POST(self):  # noqa: N802 - http.server naming
        type(self).calls += 1
        time.sleep(self.delay_s)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.status != 200:
            self.send_response(self.status)
            self.end_headers()
            return
        assert self.headers["X-E2E-Bypass-Key"] == "bypass-key-for-tests"
        token = auth.mint_token(SECRET, "staging-" + body["email"])
        payload = self.body if self.body is not None else json.dumps({
            "access_token": token, "refresh_token": "r" * 20, "token_type": "Bearer", "expires_in": 900,
            "user": {"id": "staging-id-1", "email": body["email"]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.drip_s is None:
            self.wfile.write(payload)
            return
        try:
            for n in range(len(payload)):
                self.wfile.write(payload[n:n + 1])
                self.wfile.flush()
                type(self).sent += 1
                time.sleep(self.drip_s)
        except OSError:  # the client gave up and hung up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def auth_service(monkeypatch):
    monkeypatch.setenv("GP_TEST_BYPASS", "bypass-key-for-tests")
    handler = type("Handler", (_AuthService,), {"status": 200, "delay_s": 0.0, "calls": 0, "body": None,
                                                "drip_s": None, "sent": 0})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_staging_token_is_fetched_and_cached(auth_service):
    handler, url = auth_service
    source = auth.StagingTokenSource(url, "GP_TEST_BYPASS")
    token, user_id = source.token("a@example.test")
    again, _ = source.token("a@example.test")
    assert user_id == "staging-id-1" and token == again and handler.calls == 1
    source.refresh_margin_s = 901  # every cached token is now "about to expire"
    source.token("a@example.test")
    assert handler.calls == 2


@pytest.mark.parametrize("status, words", [(401, "bypass key is missing or invalid"), (403, "production"),
                                           (422, "body was rejected"), (503, "not configured")])
def test_staging_errors_are_named(auth_service, status, words):
    handler, url = auth_service
    handler.status = status
    with pytest.raises(auth.AuthError, match=f"answered {status}: .*{words}"):
        auth.StagingTokenSource(url, "GP_TEST_BYPASS").token("a@example.test")


def test_staging_timeout(auth_service):
    handler, url = auth_service
    handler.delay_s = 1.0
    with pytest.raises(auth.AuthError, match="did not answer within 0.2 s"):
        auth.StagingTokenSource(url, "GP_TEST_BYPASS", timeout_s=0.2).token("a@example.test")


@pytest.mark.parametrize("body, words", [(b"[]", "not a JSON object"), (b'"token"', "not a JSON object"),
                                         (b"<html>", "not JSON"), (b"[" * 100_000, "not JSON")])
def test_staging_garbage_body_is_named(auth_service, body, words):
    handler, url = auth_service
    handler.body = body
    with pytest.raises(auth.AuthError, match=f"answered 200 with a body that is {words}"):
        auth.StagingTokenSource(url, "GP_TEST_BYPASS").token("a@example.test")


def test_staging_body_over_the_limit_is_named_not_cut(auth_service, monkeypatch):
    handler, url = auth_service
    monkeypatch.setattr(auth, "MAX_AUTH_BODY", 100)
    handler.body = json.dumps({"access_token": "t" * 200}).encode()  # a cut body would read as "not JSON"
    with pytest.raises(auth.AuthError, match="answered 200 with a body over the 100-byte limit"):
        auth.StagingTokenSource(url, "GP_TEST_BYPASS").token("a@example.test")


def test_staging_body_dripped_a_byte_at_a_time_stops_at_the_deadline(auth_service, monkeypatch):
    """urllib's timeout is per read: each byte comes well within it, so only the one deadline stops the read.
    The clock is the test's: each look at it is one second later, so the 5 s deadline passes after a few reads."""
    handler, url = auth_service
    handler.drip_s = 0.01
    token = auth.mint_token(SECRET, "u1")
    handler.body = json.dumps({"access_token": token, "padding": "p" * 300}).encode()
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: float(next(ticks)), time=time.time))
    with pytest.raises(auth.AuthError, match="did not answer within 5 s"):
        auth.StagingTokenSource(url, "GP_TEST_BYPASS", timeout_s=5).token("a@example.test")
    assert handler.sent < len(handler.body)  # the whole body would have made a valid answer


class _NotHttp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")


def test_staging_garbage_http_is_named(monkeypatch):
    monkeypatch.setenv("GP_TEST_BYPASS", "bypass-key-for-tests")
    with socketserver.TCPServer(("127.0.0.1", 0), _NotHttp) as server:
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        source = auth.StagingTokenSource(f"http://127.0.0.1:{server.server_address[1]}", "GP_TEST_BYPASS", timeout_s=5)
        with pytest.raises(auth.AuthError, match="did not answer with HTTP"):
            source.token("a@example.test")
        thread.join(5)


def test_staging_refused(monkeypatch):
    monkeypatch.setenv("GP_TEST_BYPASS", "bypass-key-for-tests")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(auth.AuthError, match="refused the connection"):
        auth.StagingTokenSource(f"http://127.0.0.1:{port}", "GP_TEST_BYPASS").token("a@example.test")


def test_staging_needs_the_bypass_key(monkeypatch):
    monkeypatch.delenv("GP_TEST_BYPASS", raising=False)
    with pytest.raises(auth.AuthError, match="GP_TEST_BYPASS is not set"):
        auth.StagingTokenSource("http://127.0.0.1:9", "GP_TEST_BYPASS").token("a@example.test")


@pytest.mark.parametrize("claims, problem", [({"exp": float("nan")}, "exp claim nan is not a time"),
                                             ({"iat": "yesterday"}, "iat claim 'yesterday' is not a time"),
                                             ({"exp": True}, "exp claim True is not a time")])
def test_claims_that_are_not_times_are_problems(claims, problem):
    token = auth.mint_token(SECRET, "u1", extra_claims=claims)
    assert problem in auth.inspect_token(token, SECRET).problems


def test_staging_cache_keeps_tokens_of_different_permissions_apart(auth_service):
    handler, url = auth_service
    source = auth.StagingTokenSource(url, "GP_TEST_BYPASS")
    source.token("a@example.test", permissions=["read"])
    source.token("a@example.test", permissions=["read"])
    source.token("a@example.test", permissions=["read", "admin"])
    assert handler.calls == 2
