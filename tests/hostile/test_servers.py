"""Every hostile server against `gp probe` and a quick `gp report`: no traceback, no credential in any
output in any encoding, the exit code as documented, the outcome named."""

from __future__ import annotations

import json

import pytest
from hostile_servers import SECRET, URL_SECRET, serving, url_with_credentials
from leak_scan import leaks_in, leaks_under

#: The outcome each server must be recorded with, and gp probe's exit code for it (0 only for a normal close).
EXPECTED = {
    "redirect_upgrade": ("redirected", 1),
    "nested_json": ("closed_other", 0),
    "huge_frame": ("protocol_error", 1),
    "big_string": ("ok", 0),
    "token_echo": ("ok", 0),
    "injection": ("closed_1011", 1),
    "silent_tcp": ("open_timeout", 1),
    "silent_ws": ("ready_timeout", 1),
    "garbage_http": ("protocol_error", 1),
    "garbage_ws": ("protocol_error", 1),
}
#: The smallest live run that still drives every kind of connection: one factory health check, one fresh
#: connection, one reconnect, with short deadlines.
QUICK = ["--scenario", "factory_initialization", "--params", "parameters/quick.yaml",
         "-p", "open_timeout_s=1.5", "-p", "ready_timeout_s=1", "-p", "receive_timeout_s=0.5",
         "-p", "factory_initialization.health_checks=1", "-p", "factory_initialization.connections=1",
         "-p", "factory_initialization.recovery_deadline_s=1", "-p", "factory_initialization.max_recovery_attempts=1",
         "-p", "factory_initialization.reconnect_wait_s=0", "--timeout", "120"]
EXIT_CODES = {"pass": 0, "fail": 1, "error": 2}


def credentials(server) -> dict[str, str]:
    tokens = {f"token{n}": r.token for n, r in enumerate(server.requests) if r.token}
    return {"secret": SECRET, "url": URL_SECRET, **tokens}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_probe(name, run_gp):
    outcome, code = EXPECTED[name]
    with serving(name) as server:
        result = run_gp("probe", url_with_credentials(server), "--wait", "0.5", "--open-timeout", "1.5",
                        "--ready-timeout", "1", timeout=60)
        found = credentials(server)
    assert "Traceback" not in result.err, result.err
    assert f"outcome:      {outcome} " in result.out, result.out[-2000:]
    assert result.code == code
    assert leaks_in(result.text, found) == []


@pytest.mark.notebook
@pytest.mark.parametrize("name", list(EXPECTED))
def test_quick_report(name, run_gp, tmp_path):
    out = tmp_path / "out"
    with serving(name) as server:
        result = run_gp("report", "--target", url_with_credentials(server), "--out", str(out), *QUICK, timeout=240)
        found = credentials(server)
    assert "Traceback" not in result.err, result.err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert result.code == EXIT_CODES[summary["verdict"]], result.err[-2000:]
    outcomes = {json.loads(line).get("outcome") for path in (out / "traces").glob("*.jsonl")
                for line in path.read_text().splitlines()} | {summary.get("preflight", {}).get("outcome")}
    assert EXPECTED[name][0] in outcomes, outcomes
    assert leaks_under(out, found) == []
    if name == "redirect_upgrade":  # a finding, not just a row
        assert "redirect" in json.dumps(summary["diagnosis"]) and summary["verdict"] == "error"


@pytest.mark.notebook
def test_quick_report_with_a_redirecting_auth_service(run_gp, tmp_path):
    out, bypass = tmp_path / "out", "hostile-bypass-key-0123456789"
    with serving("silent_ws") as target, serving("redirect_auth") as auth_service:
        result = run_gp("report", "--target", target.url, "--out", str(out), *QUICK, "-p", "env=staging",
                        "-p", f"auth_url={auth_service.http_url}", env={"E2E_OAUTH_SIMULATION_KEY": bypass},
                        timeout=240)
        assert not any("x-e2e-bypass-key" in r.headers for r in auth_service.peer.requests)
    assert "Traceback" not in result.err and result.code == 2
    summary = json.loads((out / "summary.json").read_text())
    assert "redirect" in summary["scenarios"]["factory_initialization"]["error"]
    assert leaks_under(out, {"bypass": bypass, "secret": SECRET}) == []
