"""The diagnosis against real reference servers: each fault alone, no fault, look-alikes, unreachable.

The traffic is the quick triage pass (all four scenarios, live mode), as
`gp report --target` would send it, so the diagnosis must pick the true cause
out of every scenario's evidence at once. Each fault runs in a different
dialect, so that every dialect meets a fault (healthy runs in every dialect
are in test_dialects.py). Timing comes from the reference server's injected
setup delay (15 ms) against first sends at 0 and 2 ms and after readiness;
deadlines scale with GP_TIME_SCALE.
"""

from __future__ import annotations

import os
import secrets

import pytest

from gp_lib import diagnosis, triage
from gp_lib.scenarios import factory_initialization
from gp_lib.refserver import free_port, running_server

SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)
SECRET_ENV = "GP_DIAGNOSIS_TEST_SECRET"
RECEIVE_S = 0.5 * SCALE
#: Enough traffic for the look-alikes that stop every connection at the door (auth, unreachable).
TWO = ["race_conditions", "service_dependencies"]

#: (faults, dialect, the cause that must come first, a sentence its evidence must hold); every dialect once
FAULTS = {
    "race": ({"race": True}, "handshake", "race_conditions", "that sent before the readiness marker, 0 of"),
    "race_system_message": ({"race": True}, "system_message", "race_conditions",
                            "among early senders by concurrent connects"),
    "dependencies_silent": ({"dependencies": "silent"}, "flat", "service_dependencies", "agent_started then nothing"),
    "dependencies_close": ({"dependencies": "close"}, "error_message", "service_dependencies",
                           "said a service was not ready (1011 'Service not ready: agent_supervisor'"),
    # the race storm sees the factory's 1011s and fails too: the factory must still come first
    "factory": ({"factory": "config"}, "default", "factory_initialization",
                "race ruled out: 1011 as often after waiting for readiness"),
    "factory_stripped_header": ({"factory": "config"}, "stripped_header", "factory_initialization",
                                "system_status said factory_status 'error'"),
    "events_omit_tools": ({"events": "omit_tools"}, "mixed", "missing_events", "tool_executing missing in"),
    "events_out_of_order": ({"events": "out_of_order"}, "iso", "missing_events", "out of order"),
    "events_misroute": ({"events": "misroute"}, "connection_ready", "missing_events", "cross-user delivery"),
    # markers without a connection id: the factory's undecidable check must not hide or fake the cause
    "factory_system_message": ({"factory": "config"}, "system_message", "factory_initialization",
                               "independent of send timing"),
    "events_handshake": ({"events": "omit_tools"}, "handshake", "missing_events", "tool_executing missing in"),
}
DOWN = {"services_down": ["agent_supervisor"]}
#: The real backend's failure modes as a client sees them (docs/protocol.md section 10), in its dialect.
NETRA_FAULTS = {
    "race": ({"race": True}, "netra", "race_conditions", "that sent before the readiness marker, 0 of"),
    "factory": ({"factory": "config"}, "netra", "factory_initialization",
                "error_type FactoryInitializationError"),
    "not_ready_403": ({"dependencies": "close", **DOWN}, "netra", "service_dependencies",
                      "HTTP 403 x"),
    "not_ready_stall_500": ({"dependencies": "close", **DOWN}, "netra,not_ready=stall_http_500,stall_s=0.2",
                            "service_dependencies", "HTTP 500 x"),
    "loop_crash": ({"events": "loop_crash"}, "netra", "missing_events",
                   "messages unanswered: "),
    "events_omit_tools": ({"events": "omit_tools"}, "netra", "missing_events", "tool_executing missing in"),
}


async def quick_pass(url: str, secret: str, monkeypatch, tmp_path, **overrides):
    monkeypatch.setenv(SECRET_ENV, secret)
    params = triage.TriageParams(target_url=url, jwt_secret_env=SECRET_ENV, receive_timeout_s=RECEIVE_S,
                                 out_dir=str(tmp_path), **overrides)
    results = await triage.run(params)
    return results, diagnosis.diagnose(results)


def evidence(finding: diagnosis.Finding) -> str:
    return " | ".join(finding.evidence)


@pytest.mark.parametrize("case", list(FAULTS))
async def test_each_fault_alone_is_diagnosed_first(case, monkeypatch, tmp_path):
    faults, dialect, cause, fragment = FAULTS[case]
    with running_server(faults, dialect) as server:
        results, findings = await quick_pass(server.url, server.secret, monkeypatch, tmp_path)
    assert findings and findings[0].root_cause == cause, [f.to_dict() for f in findings]
    assert fragment in evidence(findings[0])
    failed = {r.scenario for r in results if r.verdict == "fail"}
    assert cause in failed
    for other in failed - {cause}:  # a scenario that failed because of the fault is ruled out, with its reason
        assert "(so its failing checks" in evidence(findings[0])
        assert any(s.startswith(("race ruled out", f"{other} ruled out")) for s in findings[0].evidence)


@pytest.mark.parametrize("case", list(NETRA_FAULTS))
async def test_each_failure_mode_of_the_real_backend_gets_its_cause(case, monkeypatch, tmp_path):
    faults, dialect, cause, fragment = NETRA_FAULTS[case]
    with running_server(faults, dialect) as server:
        results, findings = await quick_pass(server.url, server.secret, monkeypatch, tmp_path)
    assert findings and findings[0].root_cause == cause, [f.to_dict() for f in findings]
    assert fragment in evidence(findings[0]), evidence(findings[0])
    assert {r.dialect["live"]["dialect"] for r in results} <= {"netra", "default (assumed)"}
    assert diagnosis.UNREACHABLE not in [f.root_cause for f in findings]
    assert diagnosis.AUTHENTICATION not in [f.root_cause for f in findings]


async def test_a_server_that_does_not_check_tokens_is_a_security_finding_first(monkeypatch, tmp_path):
    with running_server({"events": "omit_tools"}, "netra_demo") as server:
        results, findings = await quick_pass(server.url, server.secret, monkeypatch, tmp_path)
    assert [f.root_cause for f in findings][:2] == [diagnosis.AUTH_NOT_ENFORCED, "missing_events"]
    assert ("12 of 12 connections that must be refused reached readiness (a token signed with another secret, "
            "an expired token, no token at all); the server named them 'demo-use...'") in findings[0].evidence[0]
    accepted = results[0].dialect["live"]["auth_probes_accepted"]
    assert accepted == ["a token signed with another secret", "an expired token", "no token at all"]


async def test_no_fault_gives_an_empty_diagnosis(monkeypatch, tmp_path):
    with running_server({}) as server:
        results, findings = await quick_pass(server.url, server.secret, monkeypatch, tmp_path)
    assert [r.verdict for r in results] == ["pass"] * 4
    assert findings == []


@pytest.mark.parametrize("dialect", ["default", "auth_reject=http"])
async def test_a_token_signed_with_another_secret_is_authentication(dialect, monkeypatch, tmp_path):
    with running_server({}, dialect) as server:
        _, findings = await quick_pass(server.url, secrets.token_urlsafe(32), monkeypatch, tmp_path, scenarios=TWO)
    assert [f.root_cause for f in findings] == ["authentication"]
    assert "wrong secret (bad signature)" in evidence(findings[0]) and "bad signature" in evidence(findings[0])


async def test_a_stripped_authorization_header_is_named(monkeypatch, tmp_path):
    with running_server({}, "stripped_header") as server:
        _, findings = await quick_pass(server.url, server.secret, monkeypatch, tmp_path, auth_transport="header",
                                       scenarios=TWO)
    assert [f.root_cause for f in findings] == ["authentication"]
    assert "Authorization header stripped by a proxy or load balancer" in evidence(findings[0])


async def test_a_closed_port_is_unreachable(monkeypatch, tmp_path):
    url = f"ws://127.0.0.1:{free_port()}/ws"
    results, findings = await quick_pass(url, "any-secret-will-do", monkeypatch, tmp_path, scenarios=TWO)
    assert all(r.verdict == "error" for r in results)
    assert [f.root_cause for f in findings] == ["unreachable"]
    assert " refused" in findings[0].evidence[0]


async def test_reference_mode_diagnoses_the_faulty_arm_and_finds_the_fixed_arm_clean(tmp_path):
    """The factory scenario also starts a faulty process in its fixed arm, as a control: it is no evidence."""
    params = triage.scenario_params(triage.TriageParams(receive_timeout_s=RECEIVE_S, out_dir=str(tmp_path)),
                                    factory_initialization.NAME)
    result = await factory_initialization.run(params)
    assert [f.root_cause for f in diagnosis.diagnose([result])] == ["factory_initialization"]
    assert diagnosis.diagnose([result], arm="fixed") == []
