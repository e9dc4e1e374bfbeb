"""Before a live run's ~1,000 connections: one connection and the health routes, in seconds.

A target that refuses, does not resolve or does not answer, and a token the
server clearly rejects, would make every attempt of every scenario fail the
same way, slowly. The preflight names them and stops the run (`gp report`
exits 2). Anything else it sees is recorded, not judged: an upgrade answered
HTTP 403 or 500 while `/health` says 200 and `/ws/health` 503 is how a
backend whose services are not ready answers, evidence for the scenarios.

A clear authentication rejection is HTTP 401, HTTP 403 whose answer names
authentication, or an auth error frame (or a reason naming auth) then close
1008. A 1008 without either may be a limit, and is left to the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gp_lib import protocol
from gp_lib.auth import AuthError
from gp_lib.scenarios.common import CommonParams, Credentials, Target
from gp_lib.trace import UNREACHABLE_OUTCOMES, to_tables

USER = "golden-path-preflight"
#: How long the preflight's own connection and health probes may take at most, s.
MAX_WAIT_S = 5.0


@dataclass
class Preflight:
    """What the preflight saw, and why the run must stop (None: go on)."""

    target: str
    outcome: str | None = None
    handshake_status: int | None = None
    close_code: int | None = None
    said: str = ""                               # the server's words: error frame, HTTP body or close reason
    ready_ms: float | None = None
    health: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stop: str | None = None
    root_cause: str | None = None                # `unreachable` or `authentication` when it stops the run

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "outcome": self.outcome, "handshake_status": self.handshake_status,
                "close_code": self.close_code, "said": self.said, "ready_ms": self.ready_ms,
                "health": [{k: h[k] for k in ("path", "status", "answer")} for h in self.health],
                "seconds": round(self.seconds, 2), "stop": self.stop}

    def line(self) -> str:
        """One line for the terminal."""
        health = ", ".join(f"{h['path']} {h['status'] or 'no answer'}" for h in self.health)
        seen = (f"ready in {self.ready_ms:.0f} ms" if self.ready_ms is not None else
                "not attempted: no token" if self.outcome is None else
                f"{self.outcome}" + (f" (HTTP {self.handshake_status})" if self.handshake_status else "")
                + (f" (close {self.close_code})" if self.close_code else ""))
        return f"one connection: {seen}" + (f"; health: {health}" if health else "") + f" ({self.seconds:.1f} s)"


def run(params: CommonParams) -> Preflight:
    """Probe `params.target_url` once (see the module docstring)."""
    return asyncio.run(check(params))


async def check(params: CommonParams) -> Preflight:
    from gp_lib.health import probe_health

    started = time.monotonic()
    seen = Preflight(str(params.target_url))
    wait_s = min(MAX_WAIT_S, params.open_timeout_s, params.ready_timeout_s)
    short = _replace(params, wait_s)
    try:
        target = Target(str(params.target_url), "live", "preflight", short, Credentials(short))
        connection, health = await asyncio.gather(_connect(target, wait_s), probe_health(seen.target, "preflight",
                                                                                         wait_s))
    except AuthError as exc:  # no token could be had (staging auth service): nothing reached the target
        seen.stop, seen.root_cause = f"no token could be had: {exc}", "authentication"
        seen.seconds = time.monotonic() - started
        return seen
    seen.health = health
    attempts, frames = to_tables([connection])
    row = attempts.iloc[0]
    seen.outcome = row["outcome"]
    seen.handshake_status = _int(row["handshake_status"])
    seen.close_code = _int(row["close_code"])
    seen.said = _said(row, frames)
    if pd.notna(row["t_ready_ms"]):
        seen.ready_ms = float(row["t_ready_ms"]) - float(row["t_open_ms"])
    seen.stop, seen.root_cause = verdict(seen, row, frames)
    seen.seconds = time.monotonic() - started
    return seen


def verdict(seen: Preflight, row: Any, frames: Any) -> tuple[str | None, str | None]:
    """`(why the run must stop, the root cause)`, or `(None, None)` to go on."""
    where = seen.target
    if seen.outcome in UNREACHABLE_OUTCOMES and seen.handshake_status is None:
        return (f"target unreachable: {where}: {seen.outcome}" + (f" ({row['error']})" if isinstance(row["error"], str) else "")
                + _health_note(seen), "unreachable")
    said = seen.said
    auth_frame = any(protocol.is_auth_failure(protocol.message_from_row(f))
                     for f in frames.to_dict(orient="records") if f["direction"] == "received")
    if seen.handshake_status == 401 or (seen.handshake_status == 403 and protocol.names_auth(said)):
        return (f"authentication rejected: {where} answered the upgrade HTTP {seen.handshake_status}"
                + (f": {said}" if said else "") + _auth_hint(said), "authentication")
    if seen.close_code == protocol.POLICY_VIOLATION and (auth_frame or protocol.names_auth(said)):
        return (f"authentication rejected: {where} closed 1008 after the upgrade" + (f": {said}" if said else "")
                + _auth_hint(said), "authentication")
    return None, None


def _auth_hint(said: str) -> str:
    text = said.lower()
    if "signature" in text or "secret" in text:
        return (". The token was signed with another secret than the server's: set the environment variable "
                "that jwt_secret_env names to the server's secret")
    if "expired" in text:
        return ". The token had expired: check the clocks of this machine and the server"
    return ". Check the secret (jwt_secret_env), env and auth_transport"


def _health_note(seen: Preflight) -> str:
    answered = [h for h in seen.health if h["status"] is not None]
    if not seen.health:
        return ""
    if not answered:
        return "; no health route answered either"
    return "; yet " + ", ".join(f"{h['path']} answered {h['status']}" for h in answered)


def _said(row: Any, frames: Any) -> str:
    """The server's words: the first error frame's text, else the HTTP error or close reason."""
    received = frames[frames["direction"] == "received"] if len(frames) else frames
    for record in received.to_dict(orient="records"):
        message = protocol.message_from_row(record)
        if protocol.is_error(message):
            text = protocol.message_text(message) or protocol.error_code(message)
            if text:
                return str(text)[:200]
    for value in (row["close_reason"], row["error"]):
        if isinstance(value, str) and value:
            return value[:200]
    return ""


async def _connect(target: Target, wait_s: float) -> Any:
    conn = await target.connection(USER, condition="preflight")
    if await conn.open():
        await conn.wait_ready(wait_s)
        await conn.close()
    return conn.finish()


def _replace(params: CommonParams, wait_s: float) -> CommonParams:
    return dataclasses.replace(params, open_timeout_s=wait_s, ready_timeout_s=wait_s)


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)

