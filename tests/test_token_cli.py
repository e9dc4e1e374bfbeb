"""`gp token`: mint a token that verifies, inspect one without printing it, name bad input."""

from __future__ import annotations

import pytest

from gp_lib import auth
from gp_lib.cli import main

SECRET_ENV = "GP_TOKEN_TEST_SECRET"
SECRET = "token-cli-secret-0123456789abcdef"


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return SECRET


def test_minted_token_is_all_of_stdout_and_verifies(secret, capsys):
    assert main(["token", "--user", "alice", "--lifetime", "5", "--secret-env", SECRET_ENV]) == 0
    out = capsys.readouterr().out
    claims = auth.verify_token(out.strip(), secret)
    assert out.count("\n") == 1 and claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 300


def test_the_secret_option_has_the_name_the_other_commands_use(secret, capsys):
    assert main(["token", "--jwt-secret-env", SECRET_ENV]) == 0
    assert auth.verify_token(capsys.readouterr().out.strip(), secret)["sub"] == "gp-cli-user"


@pytest.mark.parametrize("lifetime", ["0", "-1", "nan", "inf"])
def test_a_lifetime_that_is_not_a_positive_number_exits_2_naming_it(secret, capsys, lifetime):
    assert main(["token", "--lifetime", lifetime, "--secret-env", SECRET_ENV]) == 2
    captured = capsys.readouterr()
    assert "--lifetime" in captured.err and captured.out == ""


def test_a_missing_secret_variable_exits_2_naming_it(monkeypatch, capsys):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert main(["token", "--secret-env", SECRET_ENV]) == 2
    assert SECRET_ENV in capsys.readouterr().err


def test_inspect_lists_claims_and_never_prints_the_token_or_secret(secret, capsys):
    token = auth.mint_token(secret, "alice")
    assert main(["token", "--inspect", token, "--secret-env", SECRET_ENV]) == 0
    out = capsys.readouterr().out
    assert "  sub: \"alice\"" in out and "problems: none" in out
    assert token not in out and token.split(".")[2] not in out and secret not in out


def test_inspect_names_each_problem_and_exits_1(secret, capsys):
    token = auth.mint_token("another-secret-0123456789abcdef", "alice", issuer="elsewhere")
    assert main(["token", "--inspect", token, "--secret-env", SECRET_ENV]) == 1
    out = capsys.readouterr().out
    assert "wrong issuer 'elsewhere'" in out and "bad signature" in out and token not in out


def test_inspect_without_the_secret_says_the_signature_was_not_checked(monkeypatch, capsys):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    token = auth.mint_token(SECRET, "alice")
    assert main(["token", "--inspect", token, "--secret-env", SECRET_ENV]) == 0
    assert f"signature: not checked ({SECRET_ENV} is not set)" in capsys.readouterr().out


def test_inspect_of_garbage_is_a_problem_not_a_traceback(secret, capsys):
    header_kid_5 = "eyJhbGciOiAiSFMyNTYiLCAia2lkIjogNX0.eyJzdWIiOiAiYWxpY2UifQ.c2ln"  # {"alg": "HS256", "kid": 5}
    for token in ("not-a-token", header_kid_5):
        assert main(["token", "--inspect", token, "--secret-env", SECRET_ENV]) == 1
        assert "malformed token" in capsys.readouterr().out


def test_inspect_of_times_out_of_range_shows_them_raw(secret, capsys):
    token = auth.mint_token(secret, "alice", extra_claims={"exp": 10**20, "nbf": -(10**20)})
    assert main(["token", "--inspect", token, "--secret-env", SECRET_ENV]) == 0
    out = capsys.readouterr().out
    assert f"  exp: {10**20}\n" in out and f"  nbf: {-(10**20)}\n" in out
