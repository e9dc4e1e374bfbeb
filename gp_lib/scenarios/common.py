"""What every scenario shares: parameters, credentials, the target, the result, the two modes.

A scenario module defines `NAME`, a `Params` dataclass extending
`CommonParams`, `reference_faults(arm, params)` (the reference server's faults
for the `faulty` and `fixed` arms: same tunables, fault on or off),
`drive(target)` (the traffic, returning an `Observation`) and
`evaluate(observation, params)` (checks and metrics, pure). `run_scenario`
then does the rest:

- live mode (`target_url` set): drive once against the target, arm `live`;
- reference mode: start the reference server with the fault (arm `faulty`)
  and another without (arm `fixed`), drive both at once, and judge both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import pandas as pd
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from gp_lib import auth, protocol
from gp_lib.checks import Check, reference_checks, verdict
from gp_lib.client import TracedConnection
from gp_lib.redact import is_secret_name, redact, register_secret
from gp_lib.dialects import Dialect
from gp_lib.discovery import Discovery, discover, summary as discovery_summary
from gp_lib.trace import CLIENT_OUTCOMES, UNREACHABLE_OUTCOMES, AttemptRecord, concat, save_jsonl, to_tables

ENVS = ("local", "staging")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ParameterError(ValueError):
    """A parameter is wrong; the message names it. Raised before any traffic."""


# -- parameters -------------------------------------------------------------------------

@dataclass
class CommonParams:
    """Parameters every scenario takes. Secrets are never parameters: only the
    names of the environment variables that hold them."""

    target_url: str | None = None          # ws:// or wss:// endpoint of a live server; None = reference mode
    env: str = "local"                     # local: mint tokens with the secret; staging: fetch from auth_url
    auth_url: str = "http://localhost:8081"  # auth service, used when env is staging
    jwt_secret_env: str = "JWT_SECRET_KEY"   # environment variable holding the JWT signing secret
    bypass_key_env: str = "E2E_OAUTH_SIMULATION_KEY"  # environment variable holding the staging bypass key
    auth_transport: str = "both"           # header, subprotocol or both
    test_headers: bool = True              # send X-Test-Mode, X-E2E-Test, X-Test-Environment, X-User-ID
    open_timeout_s: float = 10.0           # deadline for the upgrade
    ready_timeout_s: float = 10.0          # deadline for the readiness marker
    receive_timeout_s: float = 10.0        # deadline for an awaited answer
    max_concurrency: int = 50              # ceiling on simultaneous connections of one arm or outage phase
                                           # (reference mode runs both arms and every outage phase at once)
    dialect: Any = "auto"                  # what the target speaks: auto (detected; the reference server's default),
                                           # a preset (netra, flat, ...), `preset,key=value`, or a mapping
    out_dir: str = "."                     # where traces and figures are written

    def validate(self) -> None:
        """Raise ParameterError naming the first wrong parameter."""
        if self.target_url is not None:
            try:
                parse_uri(str(self.target_url))  # what the client will accept: scheme, host, port range, brackets
            except (InvalidURI, ValueError):
                raise ParameterError(redact(f"target_url must be a ws:// or wss:// URL with a host and a valid "
                                            f"port, not {self.target_url!r}")) from None
        if self.env not in ENVS:
            raise ParameterError(f"env must be one of {', '.join(ENVS)}, not {self.env!r}")
        if self.auth_transport not in auth.AUTH_TRANSPORTS:
            raise ParameterError(f"auth_transport must be one of {', '.join(auth.AUTH_TRANSPORTS)}, "
                                 f"not {self.auth_transport!r}")
        for name in ("jwt_secret_env", "bypass_key_env"):
            if not ENV_NAME.fullmatch(str(getattr(self, name))):  # never echo it: it may be a pasted secret
                raise ParameterError(f"{name} must be the NAME of an environment variable (letters, digits, "
                                     f"underscores), not the secret itself; its value was not shown")
        if not isinstance(self.dialect, (str, Mapping)):
            raise ParameterError(f"dialect must be a preset name, key=value text or a mapping, not {self.dialect!r}")
        try:
            self.chosen_dialect()
        except ValueError as exc:
            raise ParameterError(f"dialect: {exc}") from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(f.default) is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ParameterError(f"{f.name} must be a whole number, got {value!r}")
            if isinstance(value, bool):
                continue
            numbers = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ParameterError(f"{f.name} must hold finite numbers, got {value}")
            if isinstance(value, (int, float)) and value < 0:
                raise ParameterError(f"{f.name} must not be negative, got {value}")
            if isinstance(value, (list, tuple)) and any(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and v < 0 for v in value):
                raise ParameterError(f"{f.name} must not hold negative values, got {list(value)}")
        for name in ("open_timeout_s", "ready_timeout_s", "receive_timeout_s", "max_concurrency"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name} must be greater than zero, got {getattr(self, name)}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "CommonParams":
        """Build and validate from a mapping; unknown names and wrong types are ParameterErrors."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ParameterError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                                 f"(known: {', '.join(known)})")
        coerced = {name: _coerce(name, value, cls.__dataclass_fields__[name].default) for name, value in values.items()}
        params = cls(**coerced)
        params.validate()
        return params

    @property
    def mode(self) -> str:
        return "live" if self.target_url else "reference"

    def chosen_dialect(self) -> Dialect | None:
        """The dialect the parameter forces, or None for `auto` (detected live, the default for the
        reference server)."""
        return None if self.dialect in ("auto", "", None) else Dialect.parse(self.dialect)

    def public(self) -> dict[str, Any]:
        """The parameters as a dict safe to show: secret-looking values redacted."""
        return {k: ("<redacted>" if is_secret_name(k) and v else v) for k, v in dataclasses.asdict(self).items()}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check a value against its default's type, accepting ints for floats and tuples for lists."""
    if value is None or default is None or default is dataclasses.MISSING:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParameterError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{name} must be a number, not {value!r}")
        return type(default)(value) if isinstance(default, float) else value
    if isinstance(default, str) and not isinstance(value, str) and name != "dialect":
        raise ParameterError(f"{name} must be text, not {value!r}")
    return value


def list_field(*values: Any) -> Any:
    """A dataclass field whose default is a list (a fresh copy per instance)."""
    return field(default_factory=lambda: list(values))


# -- credentials and the target -------------------------------------------------------------

class Credentials:
    """Tokens for users: minted with the secret (local), or fetched from the auth service (staging)."""

    def __init__(self, params: CommonParams, secret: str | None = None):
        self.params = params
        self._secret = secret
        self._staging: auth.StagingTokenSource | None = None
        if params.env == "staging":
            self._staging = auth.StagingTokenSource(params.auth_url, params.bypass_key_env)
        elif secret is None:
            self._secret = auth.secret_from_env(params.jwt_secret_env)

    @property
    def secret(self) -> str | None:
        """The signing secret, when tokens are minted here (not fetched from an auth service)."""
        return self._secret

    async def token_for(self, user_id: str) -> tuple[str, str]:
        """`(token, user_id)`; staging may give another user id than asked for.

        A staging fetch is HTTP: it runs in a thread so connections in flight are not stalled.
        """
        if self._staging is not None:
            return await asyncio.to_thread(self._staging.token, f"{user_id}@golden-path.test", user_id)
        return auth.mint_token(self._secret, user_id), user_id


@dataclass
class Target:
    """Where one arm's traffic goes, and how to make connections to it."""

    url: str
    arm: str
    scenario: str
    params: CommonParams
    credentials: Credentials
    server: Any = None                    # gp_lib.refserver.ServerHandle in reference mode
    progress: Callable[..., Any] | None = None
    dialect: Dialect = field(default_factory=Dialect)   # what the target speaks (gp_lib.discovery)
    pool: Any = None                      # gp_lib.storm.Pool: where storms too large for this process go
    ids_used: int = 0                     # attempt ids handed out: a storm's shares number theirs from here

    def next_id(self) -> str:
        self.ids_used += 1
        return f"{self.scenario}-{self.arm}-{self.ids_used:05d}"

    async def connection(self, user_id: str, *, condition: str = "", token: str | None = None,
                         anonymous: bool = False, extra: dict[str, Any] | None = None,
                         **options: Any) -> TracedConnection:
        """A traced connection for `user_id` (with no token when `anonymous`), labelled and timed from
        the parameters, offering what the target's dialect needs."""
        if anonymous:
            token = None
        elif token is None:
            token, user_id = await self.credentials.token_for(user_id)
        p = self.params
        headers = auth.test_mode_headers(user_id, p.env) if p.test_headers else None
        kwargs: dict[str, Any] = dict(attempt_id=self.next_id(), token=token, user_id=user_id,
                                      scenario=self.scenario, arm=self.arm, condition=condition,
                                      auth_transport=p.auth_transport, extra_headers=headers,
                                      extra_offers=self.dialect.offers(),
                                      open_timeout_s=p.open_timeout_s, ready_timeout_s=p.ready_timeout_s,
                                      extra=extra)
        url = options.pop("url", self.url)  # another process than the arm's server, e.g. a restarted one
        kwargs.update(options)
        return TracedConnection(url, **kwargs)

    def bar(self, total: int, desc: str) -> Any:
        """A progress bar when the caller gave one (tqdm in notebooks), else a silent stand-in."""
        if self.progress is None:
            return _NoProgress()
        return self.progress(total=total, desc=f"{self.arm}: {desc}", leave=False)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


async def together(*work: Awaitable[Any]) -> list[Any]:
    """Run `work` at once; their results in order. When one raises (or this is cancelled), the others are
    cancelled and awaited, and the exception propagates as it was (not wrapped in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


#: Descriptors kept free for everything but the connections: the event loop, logs, a kernel's sockets.
RESERVED_DESCRIPTORS = 32


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard limit where the system allows; the soft limit now.

    Storms of thousands of connections need a descriptor each, and the usual
    soft limit (1024) is far below the usual hard one.
    """
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # not allowed here (a container, macOS's OPEN_MAX): keep what there is
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (1 << 20) if soft == resource.RLIM_INFINITY else soft


def descriptor_ceiling() -> int:
    """How many more connections this process can hold open: the (raised) soft limit less the
    descriptors already open and a reserve. At least 1."""
    limit = raise_descriptor_limit()
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): assume a quiet process
        in_use = 16
    return max(1, limit - in_use - RESERVED_DESCRIPTORS)


async def bounded_gather(jobs: Iterable[Callable[[], Awaitable[Any]]], limit: int, bar: Any = None) -> list[Any]:
    """Run job factories with at most `limit` in flight (and never more than the process has descriptors
    for: the client's own limit must not pass for the target refusing); results in order.

    A job that raises (an auth service failing mid-run) cancels the others
    rather than leaving them running unawaited.
    """
    semaphore = asyncio.Semaphore(max(1, min(limit, descriptor_ceiling())))

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            result = await job()
        if bar is not None:
            bar.update(1)
        return result

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(job)) for job in jobs]
    return [task.result() for task in tasks]


# -- observations and results ------------------------------------------------------------------

@dataclass
class Observation:
    """What one arm's traffic produced: the attempts and frames, and scenario tables."""

    arm: str
    attempts: pd.DataFrame
    frames: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    discovery: Discovery | None = None     # the introduction and authentication probe (not scenario traffic)

    def evidence(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The attempts and frames a diagnosis reads: the scenario's and the discovery's."""
        if self.discovery is None or not self.discovery.records:
            return self.attempts, self.frames
        attempts, frames = to_tables(self.discovery.records)
        return concat([self.attempts, attempts]), concat([self.frames, frames])

    @classmethod
    def from_records(cls, arm: str, records: Sequence[AttemptRecord],
                     tables: dict[str, pd.DataFrame] | None = None) -> "Observation":
        attempts, frames = to_tables(records)
        return cls(arm, attempts, frames, dict(tables or {}))


@dataclass
class ScenarioResult:
    """Everything a notebook, a report and a review need from one scenario run."""

    scenario: str
    mode: str
    target: str | None
    params: dict[str, Any]
    observations: dict[str, Observation]
    arm_checks: dict[str, list[Check]]
    arm_metrics: dict[str, dict[str, Any]]
    checks: list[Check]
    metrics: dict[str, Any]
    started_at: str
    finished_at: str
    error: str | None = None

    @property
    def verdict(self) -> str:
        return "error" if self.error else verdict(self.checks)

    @property
    def attempts(self) -> pd.DataFrame:
        return concat(o.attempts for o in self.observations.values())

    @property
    def frames(self) -> pd.DataFrame:
        return concat(o.frames for o in self.observations.values())

    def table(self, name: str) -> pd.DataFrame:
        """A scenario table with an `arm` column, both arms stacked."""
        parts = []
        for arm, observation in self.observations.items():
            if name in observation.tables and len(observation.tables[name]):
                parts.append(observation.tables[name].assign(arm=arm))
        return concat(parts)

    def save_traces(self, out_dir: str | Path) -> list[str]:
        """Write one JSONL trace per arm under `out_dir/traces/`; returns the paths."""
        paths = []
        for arm, observation in self.observations.items():
            path = Path(out_dir) / "traces" / f"{self.scenario}-{arm}.jsonl"
            paths.append(str(save_jsonl(path, *observation.evidence())))
        return paths

    @property
    def dialect(self) -> dict[str, Any]:
        """`{arm: {"dialect", "how", "auth_probes_accepted"}}`: what each arm's target was found to speak."""
        return {arm: discovery_summary(o.discovery) for arm, o in self.observations.items() if o.discovery}

    def summary(self) -> dict[str, Any]:
        """The scenario's entry in summary.json (without the report name)."""
        return {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks],
                "metrics": self.metrics, "dialect": self.dialect, **({"error": self.error} if self.error else {})}


class ScenarioModule(Protocol):
    NAME: str
    Params: type

    def reference_faults(self, arm: str, params: Any) -> dict[str, Any]: ...

    async def drive(self, target: Target) -> Observation: ...

    def evaluate(self, observation: Observation, params: Any) -> tuple[list[Check], dict[str, Any]]: ...


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


async def run_scenario(module: ScenarioModule, params: CommonParams, *,
                       progress: Callable[..., Any] | None = None) -> ScenarioResult:
    """Drive and judge one scenario in live or reference mode.

    Raises:
        ParameterError: before any traffic, when a parameter is wrong.
        auth.AuthError: before any traffic, when no token can be had.
    """
    from gp_lib.storm import Pool

    params.validate()
    started = _now()
    observations: dict[str, Observation] = {}
    forced = params.chosen_dialect()
    pool = Pool.for_params(params)  # starts worker processes only when a storm is large enough to need them
    try:
        if params.target_url:
            credentials = Credentials(params)
            await credentials.token_for("golden-path-preflight")  # a staging auth failure stops the run here
            target = Target(params.target_url, "live", module.NAME, params, credentials, progress=progress, pool=pool)
            observations["live"] = await _observe(module, target, forced, credentials.secret)
        else:
            secret = secrets.token_urlsafe(32)
            register_secret(secret)
            credentials = Credentials(dataclasses.replace(params, env="local"), secret=secret)
            dialect = forced or Dialect()

            async def drive_arm(arm: str) -> Observation:
                async with reference_server(module.reference_faults(arm, params), dialect, secret) as server:
                    target = Target(server.url, arm, module.NAME, params, credentials, server=server,
                                    progress=progress, pool=pool)
                    return await _observe(module, target, dialect, secret, "the reference server speaks it")

            # Each arm has its own server process, so the two run at once: half the wall time, same traffic
            # (and up to twice max_concurrency connections, one ceiling per arm).
            faulty, fixed = await together(drive_arm("faulty"), drive_arm("fixed"))
            observations.update(faulty=faulty, fixed=fixed)
    finally:
        if pool is not None:
            await pool.aclose()
    arm_checks, arm_metrics = {}, {}
    for arm, observation in observations.items():
        arm_checks[arm], arm_metrics[arm] = module.evaluate(observation, params)
    if params.target_url:
        checks, metrics = arm_checks["live"], arm_metrics["live"]
    else:
        checks = reference_checks(arm_checks["faulty"], arm_checks["fixed"])
        metrics = {f"{arm}.{name}": value for arm, values in arm_metrics.items() for name, value in values.items()}
    return ScenarioResult(module.NAME, params.mode, params.target_url, params.public(), observations,
                          arm_checks, arm_metrics, checks, metrics, started, _now(),
                          error=unreachable_error(observations))


async def _observe(module: ScenarioModule, target: Target, dialect: Dialect | None, secret: str | None,
                   why: str = "set by the dialect parameter") -> Observation:
    """Discovery, then the scenario's traffic in the dialect found."""
    discovery = await discover(target, dialect=dialect, why=why, secret=secret)
    target.dialect = discovery.dialect
    observation = await module.drive(target)
    observation.discovery = discovery
    return observation


#: Outcomes after which nothing about the four root causes can be seen.
UNTESTABLE_OUTCOMES = UNREACHABLE_OUTCOMES | {"auth_rejected"}


@contextlib.asynccontextmanager
async def reference_server(faults: Mapping[str, Any], dialect: Dialect | str, secret: str) -> AsyncIterator[Any]:
    """`gp_lib.refserver.running_server`, started and stopped in a thread so other traffic goes on meanwhile.

    A thread cannot be cancelled: when this task is (`together` cancels the other arm when one fails), the
    server starts anyway, so it is waited for and stopped before the cancellation goes on.
    """
    from gp_lib.refserver import running_server

    stack = contextlib.ExitStack()
    starting = asyncio.ensure_future(
        asyncio.to_thread(stack.enter_context, running_server(faults=faults, dialect=dialect, secret=secret)))
    try:
        server = await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait({starting})
        await asyncio.to_thread(stack.close)
        raise
    try:
        yield server
    finally:
        await asyncio.to_thread(stack.close)


def unreachable_error(observations: Mapping[str, Observation]) -> str | None:
    """Why nothing could be tested, when every attempt of every arm was refused, never reached the
    target or was rejected for authentication, or when the client ran out of its own resources in any
    attempt (the run exits 2, not 1, and blames nothing on the target); else None."""
    attempts = concat(o.attempts for o in observations.values())
    own = attempts[attempts["outcome"].isin(CLIENT_OUTCOMES)] if len(attempts) else attempts
    if len(own):  # the client's own limits distort every figure: no verdict on the target from this run
        first = own["error"].dropna()
        error = first.iloc[0] if len(first) else "client_error"
        remedy = ("check the Dask workers (one died or hung during the storm)" if str(error).startswith("worker ")
                  else "lower max_concurrency or raise the open-files limit")  # storm._lost names the worker
        return (f"the client's own limits, not the target: {len(own)} of {len(attempts)} attempts could not be "
                f"made ({error}); {remedy}")
    if not len(attempts) or not attempts["outcome"].isin(UNTESTABLE_OUTCOMES).all():
        return None
    first = attempts["error"].dropna()
    statuses = pd.to_numeric(attempts["handshake_status"], errors="coerce").dropna()
    if attempts["outcome"].isin(UNREACHABLE_OUTCOMES).all():
        if len(statuses):  # the target answered, but never with the upgrade: evidence, not silence
            return (f"nothing could be tested: none of {len(attempts)} attempts got past the upgrade ("
                    + ", ".join(f"HTTP {int(code)} x{n}" for code, n in statuses.value_counts().items())
                    + f"; {outcome_counts(attempts)})" + (f"; first error: {first.iloc[0]}" if len(first) else ""))
        return (f"target unreachable: none of {len(attempts)} attempts connected ({outcome_counts(attempts)})"
                + (f"; first error: {first.iloc[0]}" if len(first) else ""))
    reasons = attempts["close_reason"].dropna()
    said = next(iter(_error_texts(concat(o.frames for o in observations.values()))), None)
    said = said or (first.iloc[0] if len(first) else reasons.iloc[0] if len(reasons) else "")
    return (f"nothing could be tested: every one of {len(attempts)} attempts was refused or rejected for "
            f"authentication ({outcome_counts(attempts)})" + (f"; the server said: {said}" if said else ""))


def _error_texts(frames: pd.DataFrame) -> Iterator[str]:
    """The texts of the error frames received, in order."""
    if not len(frames):
        return
    for row in frames[frames["direction"] == "received"].to_dict(orient="records"):
        message = protocol.message_from_row(row)
        if protocol.is_error(message) and protocol.message_text(message):
            yield str(protocol.message_text(message))


def outcome_counts(attempts: pd.DataFrame) -> str:
    """The attempts' outcomes counted, most frequent first: '3 refused, 1 auth_rejected'."""
    return ", ".join(f"{n} {outcome}" for outcome, n in attempts["outcome"].value_counts().items())


def elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
