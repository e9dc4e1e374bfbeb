"""What tracing costs, and how exact its timings are. Run by hand, not in CI:

    .venv/bin/python benchmarks/client_overhead.py [--sessions 300] [--concurrency 10] [--rounds 5]

1. Overhead: sessions per second (connect, readiness, ping, pong, close) of the
   traced client against a bare `websockets` loop doing the same, against one
   reference server process, same concurrency, rounds run alternately so that
   machine noise hits both alike. Prints the median of each, their ratio (aim:
   >= 0.85), and the client CPU time per session of each.
2. Accuracy: with setup time D injected into the server, the measured
   readiness delay (t_ready - t_open) against D, median error (aim: <= 2 ms).

All traffic goes to 127.0.0.1 with bounded counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from websockets.asyncio.client import connect

from gp_lib import auth, protocol
from gp_lib.client import TracedConnection
from gp_lib.refserver import running_server


async def bare_session(url: str, token: str) -> None:
    kwargs = auth.connect_kwargs(token, "both")
    async with connect(url, ping_interval=None, proxy=None, **kwargs) as ws:
        while not protocol.is_ready_marker(json.loads(await ws.recv())):
            pass
        await ws.send(json.dumps({"type": "ping"}))
        while json.loads(await ws.recv()).get("type") != "pong":
            pass


async def traced_session(url: str, token: str, n: int) -> None:
    async with TracedConnection(url, attempt_id=f"b{n}", token=token, user_id="bench") as conn:
        await conn.wait_ready(10)
        await conn.send({"type": "ping"})
        await conn.receive_until(lambda m: m["type"] == "pong", 10)
    if conn.record.outcome != "ok":
        raise RuntimeError(f"traced session ended {conn.record.outcome}: {conn.record.error}")


async def one_round(kind: str, url: str, token: str, sessions: int, concurrency: int) -> tuple[float, float]:
    """(sessions per second, client CPU ms per session) for one round."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with semaphore:
            if kind == "bare":
                await bare_session(url, token)
            else:
                await traced_session(url, token, n)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(n) for n in range(sessions)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return sessions / wall, cpu * 1000 / sessions


async def overhead(sessions: int, concurrency: int, rounds: int) -> None:
    with running_server({"setup_ms": 0, "setup_ms_per_concurrent": 0}) as server:
        token = auth.mint_token(server.secret, "bench")
        await one_round("bare", server.url, token, min(50, sessions), concurrency)  # warm both paths up
        await one_round("traced", server.url, token, min(50, sessions), concurrency)
        results: dict[str, list[tuple[float, float]]] = {"bare": [], "traced": []}
        for _ in range(rounds):
            for kind in ("bare", "traced"):
                results[kind].append(await one_round(kind, server.url, token, sessions, concurrency))
    rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in results.items()}
    print(f"overhead: {sessions} sessions x {rounds} alternating rounds, concurrency {concurrency}")
    print(f"  bare websockets : {rate['bare']:8.1f} sessions/s   {cpu['bare']:.2f} ms client CPU/session")
    print(f"  traced client   : {rate['traced']:8.1f} sessions/s   {cpu['traced']:.2f} ms client CPU/session")
    print(f"  throughput ratio traced/bare = {rate['traced'] / rate['bare']:.3f}   (aim >= 0.85)")
    print(f"  CPU ratio traced/bare        = {cpu['traced'] / cpu['bare']:.3f}")


async def accuracy(delays_ms: list[float], repeats: int) -> None:
    print(f"accuracy: injected setup time D against measured t_ready - t_open, {repeats} attempts each")
    worst = 0.0
    for delay in delays_ms:
        with running_server({"setup_ms": delay, "setup_ms_per_concurrent": 0}) as server:
            token = auth.mint_token(server.secret, "bench")
            measured = []
            for n in range(repeats):
                async with TracedConnection(server.url, attempt_id=f"a{n}", token=token, user_id="bench") as conn:
                    await conn.wait_ready(10)
                record = conn.record
                measured.append(record.t_ready_ms - record.t_open_ms)
        error = statistics.median(measured) - delay
        worst = max(worst, abs(error))
        print(f"  D = {delay:6.1f} ms   median measured {statistics.median(measured):7.2f} ms   "
              f"error {error:+.2f} ms   p95 {sorted(measured)[int(0.95 * (len(measured) - 1))]:.2f} ms")
    print(f"  worst median error {worst:.2f} ms   (aim <= 2 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(overhead(args.sessions, args.concurrency, args.rounds))
    asyncio.run(accuracy([5, 10, 25, 50, 100], args.repeats))


if __name__ == "__main__":
    main()
