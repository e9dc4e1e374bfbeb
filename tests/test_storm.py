"""Storms: in this process, and spread over real Dask workers started with the `dask` command line on loopback.

Timing is controlled: the reference server's setup time is injected, and the
barrier test holds one connection back a chosen time before `together()`;
the lost-worker test kills a worker process from inside its share.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest

from gp_lib import storm
from gp_lib.redact import register_secret
from gp_lib.refserver import free_port, running_server
from gp_lib.scenarios import race_conditions as rc
from gp_lib.scenarios.common import Credentials, ParameterError, Target
from gp_lib.trace import AttemptRecord, frame_row

SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
SETUP_MS = 40.0 * SCALE
HOLD_MS = 300.0 * SCALE
SECRET_ENV = "GP_TEST_STORM_SECRET"

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs below travel to workers by value


def _target(server, pool=None) -> Target:
    params = rc.Params(out_dir="unused", max_concurrency=100)
    return Target(server.url, "live", "storm_test", params, Credentials(params, secret=server.secret), pool=pool)


def _user(index: int) -> str:
    return f"storm_user_{index}"


async def held_back(target: Target, index: int, context) -> object:
    """Ready, then together() (connection 0 arrives HOLD_MS late), then a ping and its pong."""
    import asyncio

    conn = await target.connection(_user(index))
    if await conn.open() and await conn.wait_ready():
        if index == 0:
            await asyncio.sleep(HOLD_MS / 1000)
        await context.together()
        if await conn.send({"type": "ping"}):
            await conn.receive_until(lambda m: m["type"] == "pong", 5 * SCALE)
    await conn.close()
    return conn.finish()


def _sent_on_storm_clock(records) -> list[float]:
    return [r.extra["t_start_ms"] + r.t_first_send_ms for r in records]


async def test_a_storm_here_keeps_index_order_stamps_one_clock_and_holds_everyone_for_the_last():
    with running_server({"setup_ms": SETUP_MS, "setup_ms_per_concurrent": 0}) as server:
        target = _target(server)
        records, load = await storm.run(target, held_back, 6, user=_user, label="test", deadline_s=10 * SCALE)
    assert load == []  # this process measures its own load around its traffic
    assert [r.user_id for r in records] == [_user(i) for i in range(6)]
    assert len({r.attempt_id for r in records}) == 6 and target.ids_used == 6
    assert all(r.outcome == "ok" and r.t_ready_ms - r.t_open_ms >= SETUP_MS * 0.9 for r in records)
    assert all(0 <= r.extra["t_start_ms"] < 200 * SCALE for r in records)
    # nobody sent before connection 0 came to together(), HOLD_MS after its readiness
    earliest = min(_sent_on_storm_clock(records))
    assert earliest >= records[0].extra["t_start_ms"] + records[0].t_ready_ms + HOLD_MS * 0.9


def test_spread_parameters_are_validated():
    with pytest.raises(ParameterError, match="spread_from"):
        rc.Params(spread_from=0).validate()
    with pytest.raises(ParameterError, match="scheduler"):
        rc.Params(scheduler="localhost:8786").validate()
    with pytest.raises(ParameterError, match="workers"):
        rc.Params(workers=-1).validate()
    rc.Params(scheduler="tcp://127.0.0.1:8786", workers=2, spread_from=10).validate()


def test_a_scheduler_on_another_host_needs_tls_as_the_tokens_travel_with_the_work():
    with pytest.raises(ParameterError, match=r"tcp://10\.0\.0\.5:8786.*tokens.*cleartext.*tls://"):
        rc.Params(scheduler="tcp://10.0.0.5:8786").validate()
    with pytest.raises(ParameterError, match="tls://"):
        rc.Params(scheduler="tcp://scheduler.example:8786").validate()  # a name could resolve anywhere
    for allowed in ("tls://10.0.0.5:8786", "tcp://localhost:8786", "tcp://[::1]:8786"):
        rc.Params(scheduler=allowed).validate()
    with pytest.raises(ParameterError, match="cleartext"):  # a pool made directly: refused before connecting
        storm.Pool(scheduler="tcp://10.0.0.5:8786").start()


def test_records_from_workers_are_redacted_again_where_the_secrets_are_registered():
    """A worker never registers the JWT secret or bypass key: what the server echoed into ids and extras
    there is scrubbed in this process."""
    secret = f"storm-test-{uuid.uuid4().hex}"  # no word another test may have registered (gp probe: "secret")
    echoed = {"type": f"t-{secret}", "run_id": secret, "user_id": secret, "thread_id": f"th {secret}",
              "tool_name": secret}
    frame = frame_row("a1", 1.0, "received", echoed)  # built as a worker builds it, without the secret known
    record = AttemptRecord("a1", user_id="u1", server_user=secret, frames=[frame],
                           extra={"t_start_ms": 1.5, "seen": [f"id {secret}"]})
    assert secret in frame["run_id"] and secret in frame["tool_name"]
    register_secret(secret)
    cleaned = storm._redacted(record)
    assert secret not in repr(cleaned)
    assert cleaned.frames[0]["run_id"] == "<redacted>" and cleaned.frames[0]["thread_id"] == "th <redacted>"
    assert cleaned.extra == {"t_start_ms": 1.5, "seen": ["id <redacted>"]} and cleaned.server_user == "<redacted>"


def test_runs_that_spread_nothing_never_import_dask():
    code = ("import asyncio, sys\nfrom gp_lib.scenarios import race_conditions as rc\n"
            "r = asyncio.run(rc.run(rc.Params(concurrency_levels=[2], send_delays_ms=[0], sweep_repeats=1, "
            "burst_connections=1, rapid_cycles=1, out_dir='.')))\n"
            "print(r.verdict, 'distributed' in sys.modules, 'dask' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["pass", "False", "False"], done.stderr[-2000:]


# -- a real cluster from the command line -----------------------------------------------------------

def _dask(*args: str) -> list[str]:
    command = Path(sys.executable).with_name("dask")
    return [str(command), *args] if command.exists() else [sys.executable, "-m", "dask", *args]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:g} s")


def _wait_for_workers(address: str, count: int, timeout_s: float) -> None:
    from distributed import Client

    with Client(address, timeout=timeout_s) as client:
        client.wait_for_workers(count, timeout=timeout_s)


@pytest.fixture
def dask_cluster():
    """`dask scheduler` and `dask worker --nworkers 2` on loopback, both workers joined; the scheduler's address."""
    port = free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                                 **quiet)
    workers = None
    try:
        _wait_for_port(port, 60 * SCALE)
        workers = subprocess.Popen(_dask("worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1", "--nworkers", "2",
                                         "--nthreads", "1", "--no-dashboard"), **quiet)
        _wait_for_workers(f"tcp://127.0.0.1:{port}", 2, 60 * SCALE)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


async def test_a_storm_spread_over_two_command_line_workers_shares_one_clock_and_one_barrier(dask_cluster):
    import asyncio

    pool = storm.Pool(spread_from=4, scheduler=dask_cluster)
    try:
        await asyncio.to_thread(pool.start)
        addresses = pool.addresses
        with running_server({"setup_ms": SETUP_MS, "setup_ms_per_concurrent": 0}) as server:
            target = _target(server, pool)
            small, small_load = await storm.run(target, held_back, 3, user=_user, label="small", deadline_s=10 * SCALE)
            records, load = await storm.run(target, held_back, 8, user=_user, label="spread", deadline_s=10 * SCALE)
        left = await asyncio.to_thread(_left_on_scheduler, pool._client, 10 * SCALE)
    finally:
        await pool.aclose()
    assert left == []  # the storm's queue and its barrier's event are gone from the scheduler
    assert small_load == [] and all(r.outcome == "ok" for r in small)  # below spread_from: ran here
    assert len(addresses) == 2 and [row["process"] for row in load] == [f"worker {a}" for a in addresses]
    assert all(row["ticks"] > 0 and row["seconds"] > 0 for row in load)
    assert [r.user_id for r in records] == [_user(i) for i in range(8)]
    assert len({r.attempt_id for r in small + records}) == 11 and target.ids_used == 11
    assert all(r.outcome == "ok" and r.t_ready_ms - r.t_open_ms >= SETUP_MS * 0.9 for r in records), \
        [(r.outcome, r.error, r.t_open_ms, r.t_ready_ms) for r in records]
    # one clock: both workers started their halves at the same instant
    assert all(0 <= r.extra["t_start_ms"] < 300 * SCALE for r in records)
    # one barrier: connection 0 (first worker) held everyone back, those of the second worker too
    held_until = records[0].extra["t_start_ms"] + records[0].t_ready_ms + HOLD_MS
    assert min(_sent_on_storm_clock(records[1::2])) >= held_until - 20 * SCALE
    assert max(_sent_on_storm_clock(records)) < held_until + 2000 * SCALE  # released, not timed out


def _left_on_scheduler(client, timeout_s: float) -> list[str]:
    """The storm queues and events the scheduler still holds, once empty or after `timeout_s` (a queue's
    release is a one-way message that may arrive after the storm's end)."""
    def held(dask_scheduler) -> list[str]:
        return [str(name) for name in [*dask_scheduler.extensions["queues"].queues,
                                       *dask_scheduler.extensions["events"]._events] if "gp-storm" in str(name)]

    deadline = time.monotonic() + timeout_s
    while (left := client.run_on_scheduler(held)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def dies_on_the_second_worker(target: Target, index: int, context) -> AttemptRecord:
    """The odd connections (the second worker's share) end their worker process, as the OOM killer would."""
    if index % 2:
        os._exit(1)
    return AttemptRecord(target.next_id(), user_id=_user(index), outcome="ok")


async def test_a_share_whose_worker_dies_becomes_client_errors_instead_of_a_hang(dask_cluster, monkeypatch):
    import asyncio

    monkeypatch.setattr(storm, "SHARE_GRACE_S", 2 * SCALE)
    params = rc.Params(out_dir="unused", max_concurrency=100)
    pool = storm.Pool(spread_from=4, scheduler=dask_cluster)
    target = Target("ws://127.0.0.1:9", "live", "storm_test", params,  # no connection is made
                    Credentials(params, secret=f"storm-test-secret-{uuid.uuid4().hex}"), pool=pool)
    try:
        await asyncio.to_thread(pool.start)
        addresses = pool.addresses
        records, load = await storm.run(target, dies_on_the_second_worker, 4, user=_user, label="lost",
                                        deadline_s=2 * SCALE)
    finally:
        await pool.aclose()
    assert [r.user_id for r in records] == [_user(i) for i in range(4)] and len({r.attempt_id for r in records}) == 4
    assert [r.outcome for r in records] == ["ok", "client_error", "ok", "client_error"]
    assert all(r.error.startswith(f"worker {addresses[1]}: its share") for r in records[1::2]), records[1].error
    assert [row["process"] for row in load] == [f"worker {addresses[0]}"]


async def test_the_default_pool_is_a_local_cluster_it_starts_and_closes():
    pool = storm.Pool(workers=2, spread_from=2)
    try:
        with running_server({"setup_ms": SETUP_MS, "setup_ms_per_concurrent": 0}) as server:
            records, load = await storm.run(_target(server, pool), held_back, 4, user=_user, label="local",
                                            deadline_s=10 * SCALE)
        cluster = pool._cluster
    finally:
        await pool.aclose()
    assert len(load) == 2 and all(r.outcome == "ok" for r in records)
    assert cluster.status.name == "closed" and pool._client is None
