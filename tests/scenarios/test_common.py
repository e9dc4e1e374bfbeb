"""What every scenario shares: parameters, staging credentials, the unreachable verdict."""

import pytest

from gp_lib import auth
from gp_lib.scenarios import missing_events
from gp_lib.scenarios.common import ParameterError, run_scenario
from gp_lib.refserver import running_server

BYPASS = "bypass-key-for-common-tests"


def _staging(server, **overrides):
    return missing_events.Params.from_mapping({
        "target_url": server.url, "env": "staging", "auth_url": server.auth_url, "bypass_key_env": "GP_TEST_BYPASS",
        "sequential_runs": 1, "concurrent_users": 1, "runs_per_user": 1, "reconnect_trials": 1, **overrides})


async def test_staging_tokens_come_from_the_auth_service(monkeypatch):
    monkeypatch.setenv("GP_TEST_BYPASS", BYPASS)
    with running_server({"agent_step_ms": 2}, bypass_key=BYPASS) as server:
        result = await run_scenario(missing_events, _staging(server))
    assert result.verdict == "pass", result.checks
    users = set(result.attempts["user_id"])
    assert users and all(u.startswith("e2e_") for u in users)  # the ids the auth service gave, not ours


async def test_a_wrong_bypass_key_stops_the_run_before_any_traffic(monkeypatch):
    monkeypatch.setenv("GP_TEST_BYPASS", "not-the-key")
    with running_server(bypass_key=BYPASS) as server:
        with pytest.raises(auth.AuthError, match="answered 401"):
            await run_scenario(missing_events, _staging(server))
        assert server.stats()["connections_total"] == 0


@pytest.mark.parametrize("values, name", [({"sequential_runs": -1}, "sequential_runs"),
                                          ({"target_url": "http://127.0.0.1/ws"}, "target_url"),
                                          ({"env": "prod"}, "env"), ({"warp": 9}, "warp")])
def test_bad_parameters_name_themselves(values, name):
    with pytest.raises(ParameterError, match=name):
        missing_events.Params.from_mapping(values)


def test_an_unknown_dialect_is_refused_before_any_server_starts():
    with pytest.raises(ParameterError, match="dialect: .*klingon"):
        missing_events.Params.from_mapping({"dialect": "klingon"})


def test_a_secret_pasted_where_its_variable_name_belongs_is_refused_and_not_echoed():
    pasted = "s3cr3t-value/with+base64=="
    with pytest.raises(ParameterError, match="jwt_secret_env must be the NAME") as raised:
        missing_events.Params.from_mapping({"jwt_secret_env": pasted})
    assert pasted not in str(raised.value)


async def test_an_unreachable_target_is_an_error_not_a_failure(monkeypatch):
    from gp_lib.refserver import free_port

    monkeypatch.setenv("GP_TEST_SECRET", "a-secret-for-an-unreachable-target")
    params = missing_events.Params.from_mapping({
        "target_url": f"ws://127.0.0.1:{free_port()}/ws", "jwt_secret_env": "GP_TEST_SECRET", "sequential_runs": 1,
        "concurrent_users": 1, "runs_per_user": 1, "reconnect_trials": 1})
    result = await run_scenario(missing_events, params)
    assert result.verdict == "error" and result.error.startswith("target unreachable: none of")
    assert "refused" in result.error


async def test_a_run_whose_every_attempt_was_rejected_for_authentication_is_an_error(monkeypatch):
    """Nothing about the four root causes can be seen: `gp report` exits 2, not 1 (a check failed)."""
    monkeypatch.setenv("GP_TEST_SECRET", "not-the-server-secret-but-long-enough-for-pyjwt")
    with running_server() as server:
        params = missing_events.Params.from_mapping({
            "target_url": server.url, "jwt_secret_env": "GP_TEST_SECRET", "sequential_runs": 1,
            "concurrent_users": 1, "runs_per_user": 1, "reconnect_trials": 1})
        result = await run_scenario(missing_events, params)
    assert set(result.attempts["outcome"]) == {"auth_rejected"}
    assert result.verdict == "error"
    assert result.error.startswith("nothing could be tested: every one of ")
    assert "bad signature" in result.error


async def test_bounded_gather_caps_concurrency_keeps_order_and_cancels_on_failure():
    import asyncio

    from gp_lib.scenarios.common import bounded_gather

    running, peak, cancelled = 0, 0, []
    release, never = asyncio.Event(), asyncio.Event()

    def job(n, gate=release, fail=False):
        async def run():
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                if fail:
                    raise RuntimeError("auth service went away")
                await gate.wait()
                return n
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
            finally:
                running -= 1
        return run

    gathering = asyncio.ensure_future(bounded_gather([job(n) for n in range(10)], 3))
    while peak < 3:
        await asyncio.sleep(0)
    release.set()
    assert await gathering == list(range(10)) and peak == 3
    with pytest.raises(ExceptionGroup):      # the others wait on an event never set: only cancelling ends them
        await bounded_gather([job(0, never), job(1, fail=True), job(2, never)], 3)
    assert sorted(cancelled) == [0, 2]


async def test_together_runs_at_once_and_one_failure_cancels_the_rest_unwrapped():
    import asyncio

    from gp_lib.scenarios.common import together

    cancelled = []

    async def slow(n: int) -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("an arm could not be made")

    all_started = asyncio.Barrier(3)

    async def value(n: int) -> int:  # passes the barrier only once all three have started: run in turn, it times out
        await asyncio.wait_for(all_started.wait(), 5)
        return n

    assert await together(value(1), value(2), value(3)) == [1, 2, 3]
    with pytest.raises(ValueError, match="could not be made"):
        await together(slow(1), fails(), slow(2))
    assert sorted(cancelled) == [1, 2]


async def test_a_reference_server_cancelled_while_starting_is_stopped_once_started(monkeypatch):
    """A thread cannot be cancelled: the server it starts must still be stopped when the arm is."""
    import asyncio
    import contextlib
    import threading

    import gp_lib.refserver
    from gp_lib.scenarios.common import reference_server

    events, entered, release = [], threading.Event(), threading.Event()

    @contextlib.contextmanager
    def slow_server(**_):
        entered.set()
        release.wait(10)
        events.append("started")
        try:
            yield "server"
        finally:
            events.append("stopped")

    async def arm():
        async with reference_server({}, "default", "secret"):
            await asyncio.Event().wait()

    monkeypatch.setattr(gp_lib.refserver, "running_server", slow_server)
    task = asyncio.ensure_future(arm())
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation lands while the server is still starting
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["started", "stopped"]
