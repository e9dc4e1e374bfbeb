"""One storm of connections, in this process or spread over worker processes on Dask distributed.

A storm is `count` connections that start together, each running the same
job, `job(target, index, storm)`, which returns its `AttemptRecord`. Small
storms run here, in the caller's event loop. At a few hundred connections one
asyncio process becomes the bottleneck (its loop stamps frames late, see
`gp_lib.load`), so storms of at least `spread_from` connections are split into
one share per worker process: a Dask `LocalCluster` of `workers` processes
(default one per core, started on first use), or the workers of an existing
cluster (`scheduler`, e.g. `tls://HOST:8786`; `tcp://` only on loopback, as the
shares carry tokens). Dask is imported only then.

Each share gets its connections' tokens minted here (the JWT secret never
leaves this process), its slice of attempt ids, and the storm's start time.
One clock: every process takes its own monotonic clock at the storm's start
instant (this process's wall-clock start time, shifted by the worker clock's
offset, measured by a round trip when the pool starts) as its origin; each
attempt gets `t_start_ms`, its start on that origin, so attempts of
different processes compare. Each share also returns its `client_load` row.

`storm.together()` holds a connection until every connection of the storm,
in every process, reached the same call, or until the storm's one deadline
(`deadline_s` after its start, whatever the number of calls): the events
scenario keeps all users connected until all runs are done. A share whose
worker dies or hangs is given up `SHARE_GRACE_S` after that deadline: its
connections become `client_error` attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import urlsplit

from gp_lib.load import LoadMeter
from gp_lib.redact import redact, redact_value
from gp_lib.scenarios.common import ParameterError, Target
from gp_lib.trace import AttemptRecord

#: How long before the start instant the shares are sent, plus per connection (tokens, connection objects).
LEAD_S = 0.5
LEAD_PER_CONNECTION_S = 0.0005
WORKER_START_TIMEOUT_S = 60.0
BARRIER_POLL_S = 0.01
#: How long a share may run past the storm's deadline (a run started just before it, closing sockets)
#: before its worker is given up: a share is pinned to one worker, so a dead worker's share never runs.
SHARE_GRACE_S = 60.0


class Job(Protocol):
    def __call__(self, target: Target, index: int, storm: "StormContext") -> Awaitable[AttemptRecord]: ...


# -- parameters ------------------------------------------------------------------------------

@dataclass
class SpreadParams:
    """Parameters of a scenario whose storms can be spread over worker processes."""

    workers: int = 0                       # worker processes a large storm is spread over (0: one per core; with
                                           # a scheduler, that cluster's workers)
    spread_from: int = 500                 # storms of at least this many connections go to the workers
    scheduler: str | None = None           # a Dask scheduler whose workers take them, e.g. "tls://10.0.0.5:8786"

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]  # CommonParams' checks first (workers, spread_from not negative)
        if self.spread_from < 1:
            raise ParameterError(f"spread_from must be at least 1, got {self.spread_from}")
        if self.scheduler is not None:
            check_scheduler(self.scheduler)


def check_scheduler(address: Any) -> None:
    """Refuse a scheduler the tokens would reach in cleartext: every share carries its connections' tokens,
    so `tcp://` is for a scheduler on this machine only; another host needs `tls://`."""
    if not isinstance(address, str) or not address.startswith(("tcp://", "tls://")):
        raise ParameterError(redact(f"scheduler must be a Dask scheduler address like tls://HOST:8786, "
                                    f"not {address!r}"))
    if address.startswith("tcp://") and not _is_loopback(address):
        raise ParameterError(redact(f"scheduler {address!r}: tcp:// to another host would carry the tokens that "
                                    f"travel with the work in cleartext; use tls://, or tcp:// on 127.0.0.1"))


def _is_loopback(address: str) -> bool:
    try:
        host = urlsplit(address).hostname
        return host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:  # not an IP address (a host name, which could resolve anywhere), or not a URL
        return False


# -- one storm -------------------------------------------------------------------------------

@dataclass
class StormContext:
    """What a job may use of its storm: `together()`, and the deadline on this process's monotonic clock."""

    deadline: float
    _together: Callable[[], Awaitable[None]]

    async def together(self) -> None:
        await self._together()


async def run(target: Target, job: Job, count: int, *, user: Callable[[int], str], label: str,
              deadline_s: float, bar: Any = None) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
    """The records of a storm of `count` connections (in index order), and the `client_load` rows of the
    worker processes that ran it (none when it ran here: the caller measures its own process).

    `user(index)` names the user of connection `index` (its token is minted here when the storm is
    spread). The storm's deadline is `deadline_s` after its start: no `together()` waits past it.
    """
    pool: Pool | None = target.pool
    if pool is not None and pool.takes(count):
        records, load = await pool.run(target, job, count, user=user, label=label, deadline_s=deadline_s)
        if bar is not None:
            bar.update(count)
        return records, load
    deadline = time.monotonic() + deadline_s
    records = await _run_here(target, job, range(count), origin=time.perf_counter(), deadline=deadline,
                              together=_LocalBarrier(count, deadline), bar=bar)
    return records, []


@dataclass
class _Tracked(Target):
    """A target that keeps the connections it made, to stamp each with its start on the storm's clock."""

    made: list = field(default_factory=list)

    async def connection(self, user_id: str, **kwargs: Any) -> Any:
        conn = await super().connection(user_id, **kwargs)
        self.made.append(conn)
        return conn


async def _run_here(target: Target, job: Job, indices: Any, *, origin: float, deadline: float,
                    together: Callable[[], Awaitable[None]], bar: Any = None) -> list[AttemptRecord]:
    tracked = _Tracked(**{f.name: getattr(target, f.name) for f in dataclasses.fields(Target)})
    storm = StormContext(deadline, together)

    async def one(index: int) -> AttemptRecord:
        record = await job(tracked, index, storm)
        if bar is not None:
            bar.update(1)
        return record

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(index)) for index in indices]
    finally:
        target.ids_used = tracked.ids_used
    for conn in tracked.made:
        conn.record.extra["t_start_ms"] = round((conn.started_monotonic - origin) * 1000, 3)
    return [task.result() for task in tasks]


class _LocalBarrier:
    """`together()` for connections in one event loop: the k-th call returns when all `parties` made it,
    or at `deadline` (monotonic clock), the storm's one deadline, however many calls came before."""

    def __init__(self, parties: int, deadline: float):
        self.parties = parties
        self.deadline = deadline
        self._arrived: dict[int, int] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._calls: dict[asyncio.Task | None, int] = {}

    async def __call__(self) -> None:
        task = asyncio.current_task()
        generation = self._calls.get(task, 0)
        self._calls[task] = generation + 1
        event = self._events.setdefault(generation, asyncio.Event())
        self._arrived[generation] = self._arrived.get(generation, 0) + 1
        if self._arrived[generation] >= self.parties:
            event.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, self.deadline - time.monotonic()))


# -- the worker pool -------------------------------------------------------------------------

@dataclass
class Pool:
    """The worker processes large storms are spread over: started on first use, closed by `close`."""

    workers: int = 0
    spread_from: int = 500
    scheduler: str | None = None
    _client: Any = None
    _cluster: Any = None
    _offsets: dict[str, float] = field(default_factory=dict)   # worker wall clock minus ours, seconds
    _lock: asyncio.Lock | None = None                            # one storm on the workers at a time

    @classmethod
    def for_params(cls, params: Any) -> "Pool | None":
        """The pool a scenario's parameters ask for, or None when they have no spread parameters."""
        if not isinstance(params, SpreadParams):
            return None
        return cls(params.workers, params.spread_from, params.scheduler)

    def takes(self, count: int) -> bool:
        return count >= self.spread_from

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the LocalCluster (or connect to the scheduler and wait for a worker), measure the
        workers' clocks."""
        if self._client is not None:
            return
        import logging

        from distributed import Client, LocalCluster

        if self.scheduler:
            check_scheduler(self.scheduler)  # before connecting: the shares would carry tokens in cleartext
            self._client = Client(self.scheduler, timeout=WORKER_START_TIMEOUT_S)
            self._client.wait_for_workers(1, timeout=WORKER_START_TIMEOUT_S)
        else:
            self._cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1,
                                         processes=True, host="127.0.0.1", dashboard_address=None,
                                         silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        self._client.run(_prepare_worker)
        self._offsets = _clock_offsets(self._client)

    def close(self) -> None:
        """Close the client and, if this pool started it, the cluster and its worker processes."""
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self.close)

    @property
    def addresses(self) -> list[str]:
        return sorted(self._offsets)

    # -- one storm --------------------------------------------------------------------------

    async def run(self, target: Target, job: Job, count: int, *, user: Callable[[int], str], label: str,
                  deadline_s: float) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
        """Split the storm into one share per worker, run them at one start instant, merge in index order.

        Storms of both arms queue for the workers: each storm has them to itself.
        """
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            await asyncio.to_thread(self.start)
            return await self._run(target, job, count, user=user, label=label, deadline_s=deadline_s)

    async def _run(self, target: Target, job: Job, count: int, *, user: Callable[[int], str], label: str,
                   deadline_s: float) -> tuple[list[AttemptRecord], list[dict[str, Any]]]:
        import cloudpickle

        addresses = self.addresses
        slices = [list(range(count))[n::len(addresses)] for n in range(len(addresses))]
        tokens: dict[str, tuple[str, str]] = {}
        for index in range(count):
            name = user(index)
            if name not in tokens:
                tokens[name] = await target.credentials.token_for(name)
        first_ids = [target.ids_used + sum(map(len, slices[:n])) for n in range(len(slices))]
        target.ids_used += count  # a job makes one connection: each share numbers its attempts in its own range
        storm_id = uuid.uuid4().hex
        start_at = time.time() + LEAD_S + LEAD_PER_CONNECTION_S * count
        job_pickled = cloudpickle.dumps(job)  # by value when defined outside an importable module (a notebook)
        shares = {address: _Share(target=_portable(target, {user(i): tokens[user(i)] for i in indices}),
                                  job=job_pickled,
                                  indices=indices, first_id=first_id, start_at=start_at + self._offsets[address],
                                  deadline_s=deadline_s, storm_id=storm_id, label=label)
                  for address, indices, first_id in zip(addresses, slices, first_ids) if indices}
        results = await asyncio.to_thread(self._run_shares, shares, storm_id, deadline_s)
        by_index: dict[int, AttemptRecord] = {}
        load = []
        for (address, share), result in zip(shares.items(), results):
            if isinstance(result, str):
                records = _lost(share, address, result, user)
            else:
                records, row = result
                load.append(row)
            by_index.update(zip(share.indices, records))
        return [_redacted(by_index[i]) for i in range(count)], load

    def _run_shares(self, shares: dict[str, "_Share"], storm_id: str,
                    deadline_s: float) -> list[tuple[list[AttemptRecord], dict[str, Any]] | str]:
        """Submit each share to its worker and coordinate `together()` until all are done; per share its
        records and load row, or why it has none. Waits at most `SHARE_GRACE_S` past the storm's deadline:
        a share pinned to a worker that died would never run. Leaves no queue or event on the scheduler."""
        from distributed import Event, Queue, wait
        from distributed.client import FuturesCancelledError

        arrivals = Queue(f"gp-storm-{storm_id}", client=self._client)  # before the shares, which join it
        futures = [self._client.submit(run_share, share, workers=[address], allow_other_workers=False, pure=False)
                   for address, share in shares.items()]
        count = sum(len(share.indices) for share in shares.values())
        end = time.monotonic() + deadline_s + LEAD_S + LEAD_PER_CONNECTION_S * count
        released = 0
        try:
            while not all(f.done() for f in futures) and time.monotonic() < end:
                # the barrier's coordinator: generation g is released once every share arrived g + 1 times
                while arrivals.qsize() >= (released + 1) * len(shares):
                    Event(f"gp-storm-{storm_id}-{released}", client=self._client).set()
                    released += 1
                time.sleep(BARRIER_POLL_S)
            give_up = end + SHARE_GRACE_S
            with contextlib.suppress(TimeoutError, FuturesCancelledError):
                wait(futures, timeout=max(0.0, give_up - time.monotonic()))
            return [_share_result(f, max(1.0, give_up - time.monotonic())) for f in futures]
        finally:
            self._client.cancel([f for f in futures if not f.done()])
            arrivals.close()
            for generation in range(released):  # a cleared event without waiters is deleted
                Event(f"gp-storm-{storm_id}-{generation}", client=self._client).clear()


def _share_result(future: Any, timeout_s: float) -> tuple[list[AttemptRecord], dict[str, Any]] | str:
    """A share's records and load row, or why there are none (its error, or that it never finished)."""
    if future.status not in ("finished", "error"):
        return f"its share did not finish {SHARE_GRACE_S:g} s after the storm's deadline (the worker died or hung)"
    try:
        return future.result(timeout=timeout_s)
    except Exception as exc:  # the job's own error, or the result lost with its worker
        return f"its share failed: {type(exc).__name__}: {exc}"


def _lost(share: "_Share", address: str, why: str, user: Callable[[int], str]) -> list[AttemptRecord]:
    """One `client_error` attempt per connection of a share that returned no records: the client's failure,
    not the target's, so no verdict is drawn from the run (`common.unreachable_error`)."""
    target = share.target
    target.ids_used = share.first_id  # the ids the share would have used
    error = redact(f"worker {address}: {why}"[:1000])
    return [AttemptRecord(target.next_id(), user_id=user(index), scenario=target.scenario, arm=target.arm,
                          outcome="client_error", error=error) for index in share.indices]


def _prepare_worker() -> None:
    """In each worker: allow as many sockets as the hard limit does, and import the scenario code once."""
    raise_open_files_limit()
    import gp_lib.scenarios.missing_events  # noqa: F401
    import gp_lib.scenarios.race_conditions  # noqa: F401


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (thousands of sockets); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _clock_offsets(client: Any) -> dict[str, float]:
    """Each worker's wall clock minus ours, from the midpoint of a round trip (NTP's rule, one sample)."""
    sent = time.time()
    clocks = client.run(time.time)
    received = time.time()
    return {address: clock - (sent + received) / 2 for address, clock in clocks.items()}


def _redacted(record: AttemptRecord) -> AttemptRecord:
    """A worker's record redacted again here, where the secrets of the run (JWT secret, bypass key) are
    registered: a worker knows none of them, so it could scrub only token-shaped text."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str):
            setattr(record, f.name, redact(value))
    record.extra = redact_value(record.extra)
    record.frames = [redact_value(frame) for frame in record.frames]
    return record


# -- in the worker ---------------------------------------------------------------------------

class _Tokens:
    """Credentials made of tokens minted by the process that owns the secret."""

    def __init__(self, tokens: dict[str, tuple[str, str]]):
        self._tokens = tokens

    async def token_for(self, user_id: str) -> tuple[str, str]:
        return self._tokens[user_id]


def _portable(target: Target, tokens: dict[str, tuple[str, str]]) -> Target:
    """The target as a worker gets it: the URL, labels, parameters and dialect, the share's tokens; no server
    handle, no secret, no progress bar."""
    return Target(target.url, target.arm, target.scenario, target.params, _Tokens(tokens),  # type: ignore[arg-type]
                  dialect=target.dialect)


@dataclass
class _Share:
    """One worker's part of a storm."""

    target: Target
    job: bytes             # the job, pickled with cloudpickle
    indices: list[int]
    first_id: int
    start_at: float        # the storm's start, on the worker's wall clock
    deadline_s: float
    storm_id: str
    label: str


def run_share(share: _Share) -> tuple[list[AttemptRecord], dict[str, Any]]:
    """Run one share of a storm in this worker process: its records, and its `client_load` row."""
    import cloudpickle
    from distributed import Event, Queue, get_client, get_worker

    raise_open_files_limit()
    client = get_client()
    arrivals = Queue(f"gp-storm-{share.storm_id}", client=client)
    job = cloudpickle.loads(share.job)

    async def main() -> tuple[list[AttemptRecord], dict[str, Any]]:
        target = share.target
        target.ids_used = share.first_id
        wait = share.start_at - time.time()
        origin = time.perf_counter() + wait   # the start instant on this process's monotonic clock
        if wait > 0:
            await asyncio.sleep(wait)
        deadline = time.monotonic() + share.deadline_s
        local = _LocalBarrier(len(share.indices), deadline)
        generations: dict[int, asyncio.Future] = {}

        async def together() -> None:
            """Local barrier first; the last local arrival reports to the coordinator; all wait for its release,
            both against the one deadline."""
            await local()
            generation = local._calls[asyncio.current_task()] - 1
            if generation not in generations:
                event = Event(f"gp-storm-{share.storm_id}-{generation}", client=client)
                generations[generation] = asyncio.ensure_future(asyncio.to_thread(_arrive_and_wait, arrivals, event,
                                                                                  deadline))
            await asyncio.shield(generations[generation])

        async with LoadMeter(f"worker {get_worker().address}", share.label) as meter:
            records = await _run_here(target, job, share.indices, origin=origin, deadline=deadline,
                                      together=together)
        return records, meter.row()

    try:
        return asyncio.run(main())
    finally:
        arrivals.close()  # the scheduler deletes the queue once every process that opened it closed it


def _arrive_and_wait(arrivals: Any, event: Any, deadline: float) -> None:
    """Report this share's arrival; return once the coordinator released everyone, or at the deadline."""
    arrivals.put(1)
    event.wait(max(0.0, deadline - time.monotonic()))
