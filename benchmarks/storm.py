"""Storms of 10 to 2,000 connections: how exact the timings stay, in one process and spread over workers. By hand:

    .venv/bin/python benchmarks/storm.py [--levels 10 100 500 1000 2000] [--setup-ms 50] [--rounds 3]
                                         [--servers 1] [--workers 0]

Against the reference server with setup time D injected (no per-connection
growth), at each level one storm of that many sessions (connect, readiness,
close) starts at once:

- error: the median measured readiness delay (t_ready - t_open) minus D, for one
  asyncio process and for the worker pool (`gp_lib.storm`, a LocalCluster of
  `--workers` processes, default one per core), side by side; aim: within 2 ms;
- stamp lag: the median time from the server sending the readiness marker (its
  `server_time`, or its envelope's `timestamp`) to the client stamping it, on the machine's one wall clock: the
  client's own share of the error, whatever pace the server keeps;
- loop lag: the worst event-loop lag p99 of the client processes (`gp_lib.load`);
- sessions per second of each, and of a bare `websockets` loop doing the same
  in one process; aim: the pool at least 0.9 of bare;
- server CPU: the busiest reference server process's share of a core during
  the storm: near 100% means the server, not the client, sets the pace (run
  more with `--servers N`; connections are spread over them round-robin).

Rounds alternate the three clients, and the medians over rounds are printed.
With a short D the readiness markers fall due while the server still accepts
the burst of handshakes, so the error shows the server's pace; `--setup-ms 2000`
puts them after the burst, so the error is the client's.
All traffic goes to 127.0.0.1, bounded by the levels and the deadlines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

from websockets.asyncio.client import connect

from gp_lib import auth, protocol, storm
from gp_lib.load import LoadMeter, process_name
from gp_lib.refserver import running_server
from gp_lib.scenarios import race_conditions
from gp_lib.scenarios.common import Credentials, Target

DEADLINE_S = 60.0


def user(index: int) -> str:
    return f"storm_bench_{index}"


async def session(target: Target, index: int, context: object) -> object:
    """One traced session: connect (to server `index` mod the servers: their URLs, space-separated, are
    the target's URL here), readiness, close."""
    urls = target.url.split(" ")
    conn = await target.connection(user(index), url=urls[index % len(urls)])
    if await conn.open() and await conn.wait_ready():
        conn.record.extra["stamp_lag_ms"] = stamp_lag_ms(conn)
    await conn.close()
    return conn.finish()


def stamp_lag_ms(conn: object) -> float | None:
    """How late this client stamped the readiness marker after the server sent it: the marker's `server_time`
    or envelope `timestamp` (wall clock, as the server built it to send) against the client's stamp on the
    same machine's wall clock. The client's own share of the error, whatever the server's pace."""
    record = conn.record
    received = [json.loads(f["payload"]) for f in record.frames if f["direction"] == "received"]
    marker = next(m for m in received if protocol.is_ready_marker(m))
    server_time = protocol.field(marker, "server_time") or marker.get("timestamp")  # the envelope's, if enveloped
    if not isinstance(server_time, (int, float)):
        return None
    stamped_wall = time.time() - (time.perf_counter() - conn.started_monotonic - record.t_ready_ms / 1000)
    return (stamped_wall - server_time) * 1000


async def bare_session(url: str, token: str) -> None:
    async with connect(url, ping_interval=None, proxy=None, open_timeout=DEADLINE_S,
                       **auth.connect_kwargs(token, "both")) as ws:
        async with asyncio.timeout(DEADLINE_S):  # one deadline for the whole wait, as the traced client's
            while not protocol.is_ready_marker(json.loads(await ws.recv())):
                pass


def server_cpu(pids: list[int]) -> list[float]:
    """CPU seconds each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    used = []
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used.append((int(fields[11]) + int(fields[12])) / tick)
    return used


async def traced(target: Target, count: int, setup_ms: float) -> dict[str, float]:
    async with LoadMeter(process_name(), f"c={count}") as meter:  # this process, when the storm runs here
        records, load = await storm.run(target, session, count, user=user, label=f"c={count}", deadline_s=DEADLINE_S)
    load = load or [meter.row()]
    ok = [r for r in records if r.t_ready_ms is not None]
    if len(ok) < count:
        outcomes = sorted({r.outcome for r in records})
        print(f"    note: {count - len(ok)} of {count} sessions not ready ({', '.join(outcomes)})")
    # a share lost with its worker has client_error records, never started: no t_start_ms
    wall_s = max((r.extra["t_start_ms"] + (r.t_close_ms or 0.0) for r in records if "t_start_ms" in r.extra),
                 default=float("nan")) / 1000
    error = statistics.median(r.t_ready_ms - r.t_open_ms for r in ok) - setup_ms if ok else float("nan")
    lag = max((row["loop_lag_p99_ms"] for row in load), default=float("nan"))
    stamps = [r.extra["stamp_lag_ms"] for r in ok if r.extra.get("stamp_lag_ms") is not None]
    stamp = statistics.median(stamps) if stamps else float("nan")
    return {"error_ms": error, "stamp_ms": stamp, "rate": len(ok) / wall_s, "lag_ms": lag, "wall_s": wall_s}


async def bare(urls: list[str], tokens: list[str], count: int) -> dict[str, float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(bare_session(urls[i % len(urls)], tokens[i]) for i in range(count)),
                                   return_exceptions=True)
    wall_s = time.perf_counter() - started
    failed = sum(isinstance(r, BaseException) for r in results)
    if failed:
        print(f"    note: {failed} of {count} bare sessions failed")
    return {"rate": (count - failed) / wall_s, "wall_s": wall_s}


async def level(count: int, args: argparse.Namespace, servers: list, pool: storm.Pool) -> dict[str, dict[str, float]]:
    """The medians over rounds of each client at one level, and the busiest server's CPU share."""
    secret = servers[0].secret
    params = race_conditions.Params(max_concurrency=max(count, 1), open_timeout_s=DEADLINE_S,
                                    ready_timeout_s=DEADLINE_S, out_dir="unused")
    credentials = Credentials(params, secret=secret)
    urls = [s.url for s in servers]
    tokens = [auth.mint_token(secret, user(i)) for i in range(count)]
    rounds: dict[str, list[dict[str, float]]] = {"one process": [], "pool": [], "bare": []}
    for _ in range(args.rounds):
        for kind in rounds:
            before = server_cpu([s.pid for s in servers])
            if kind == "bare":
                result = await bare(urls, tokens, count)
            else:
                target = Target(" ".join(urls), "bench", "storm_bench", params, credentials,
                                pool=pool if kind == "pool" else None)
                result = await traced(target, count, args.setup_ms)
            used = [b - a for a, b in zip(before, server_cpu([s.pid for s in servers]))]
            result["server_cpu"] = max(used) / result["wall_s"]  # over the storm itself, not the pool's dispatch
            rounds[kind].append(result)
            await asyncio.sleep(0.2)  # let the servers close the last sockets
    return {kind: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for kind, results in rounds.items()}


async def main_async(args: argparse.Namespace) -> None:
    storm.raise_open_files_limit()
    pool = storm.Pool(workers=args.workers, spread_from=1)
    faults = {"setup_ms": args.setup_ms, "setup_ms_per_concurrent": 0}
    try:
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(running_server(faults))
            servers = [first] + [stack.enter_context(running_server(faults, secret=first.secret))
                                 for _ in range(args.servers - 1)]
            await asyncio.to_thread(pool.start)
            print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}; D = {args.setup_ms:g} ms; "
                  f"{args.servers} reference server process(es); pool: {len(pool.addresses)} worker processes; "
                  f"{args.rounds} rounds, medians")
            print(f"{'level':>6} | {'error ms':>18} | {'stamp lag ms':>18} | {'loop lag p99 ms':>18} | "
                  f"{'sessions/s':>28} | {'pool/bare':>9} | {'server CPU':>10}")
            print(f"{'':>6} | {'one':>8} {'pool':>9} | {'one':>8} {'pool':>9} | {'one':>8} {'pool':>9} | "
                  f"{'one':>8} {'pool':>9} {'bare':>9} | {'':>9} | {'max':>10}")
            for count in args.levels:
                m = await level(count, args, servers, pool)
                one, spread, plain = m["one process"], m["pool"], m["bare"]
                busiest = max(one["server_cpu"], spread["server_cpu"], plain["server_cpu"])
                print(f"{count:>6} | {one['error_ms']:+8.2f} {spread['error_ms']:+9.2f} | {one['stamp_ms']:8.2f} "
                      f"{spread['stamp_ms']:9.2f} | {one['lag_ms']:8.1f} "
                      f"{spread['lag_ms']:9.1f} | {one['rate']:8.0f} {spread['rate']:9.0f} {plain['rate']:9.0f} | "
                      f"{spread['rate'] / plain['rate']:9.2f} | {busiest:10.0%}", flush=True)
    finally:
        await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 100, 500, 1000, 2000])
    parser.add_argument("--setup-ms", type=float, default=50.0, help="setup time D injected into the server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", type=int, default=1, help="reference server processes")
    parser.add_argument("--workers", type=int, default=0, help="worker processes of the pool (0: one per core)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
