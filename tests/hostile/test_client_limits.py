"""Class 6, the client's own limits: running out of descriptors, ports or memory is the client's problem,
recorded as `client_error`, never blamed on the target as `refused`.

Descriptor limits are process-wide, so each case runs in a subprocess of its own with a lowered
RLIMIT_NOFILE, against a real silent server on loopback.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest
from hostile_servers import HostileServer, silent_ws

from gp_lib.client import TracedConnection

STORM = textwrap.dedent("""
    import asyncio, json, resource, sys
    from gp_lib.client import TracedConnection
    from gp_lib.scenarios import common

    url, mode = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    async def one(n):
        conn = TracedConnection(url, attempt_id=f"s{n}", open_timeout_s=5, ready_timeout_s=0.3)
        if await conn.open():
            await conn.wait_ready()
        await conn.close()
        return conn.finish().outcome

    async def main():
        jobs = [lambda n=n: one(n) for n in range(150)]
        if mode == "gather":
            return await asyncio.gather(*(job() for job in jobs))
        return await common.bounded_gather(jobs, 150)

    outcomes = asyncio.run(main())
    print(json.dumps({o: outcomes.count(o) for o in set(outcomes)}))
""")


def storm(mode: str) -> dict[str, int]:
    with HostileServer(silent_ws) as server:
        done = subprocess.run([sys.executable, "-c", STORM, server.url, mode], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_running_out_of_descriptors_is_a_client_error_never_refused():
    outcomes = storm("gather")
    assert outcomes.get("refused", 0) == 0, outcomes
    assert outcomes.get("client_error", 0) > 0 and outcomes.get("ready_timeout", 0) > 0, outcomes


def test_concurrency_is_sized_to_the_descriptor_limit():
    outcomes = storm("bounded")
    assert outcomes == {"ready_timeout": 150}, outcomes


def test_the_soft_descriptor_limit_is_raised_where_allowed():
    script = textwrap.dedent("""
        import resource
        from gp_lib.scenarios import common
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        common.raise_descriptor_limit()
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    soft, hard = (int(v) for v in done.stdout.split())
    assert soft > 128 and (soft <= hard or hard < 0), done.stderr


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"),
                                   OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
                                   OSError(errno.ENOBUFS, "No buffer space available"),
                                   MemoryError()])
def test_each_kind_of_client_exhaustion_is_named_as_the_clients(error):
    conn = TracedConnection("ws://127.0.0.1:9/ws", attempt_id="x")
    conn._connect_failed(error)
    assert conn.record.outcome == "client_error"
    assert "client" in conn.record.error


def test_a_run_with_client_errors_blames_nothing_on_the_target():
    from gp_lib.plots import OUTCOME_COLOURS
    from gp_lib.scenarios.common import Observation, unreachable_error
    from gp_lib.trace import OUTCOMES, AttemptRecord

    records = [AttemptRecord(f"a{n}", outcome="ok", t_open_ms=1.0) for n in range(3)]
    records.append(AttemptRecord("a9", outcome="client_error", error="the client ran out of file descriptors"))
    why = unreachable_error({"live": Observation.from_records("live", records)})
    assert why.startswith("the client's own limits, not the target: 1 of 4") and "file descriptors" in why
    assert "open-files limit" in why
    records[-1] = AttemptRecord("a9", outcome="client_error", error="worker tcp://127.0.0.1:1: its share failed")
    lost = unreachable_error({"live": Observation.from_records("live", records)})
    assert "Dask workers" in lost and "open-files" not in lost
    assert {"redirected", "client_error"} <= set(OUTCOMES) and set(OUTCOMES) <= set(OUTCOME_COLOURS)
