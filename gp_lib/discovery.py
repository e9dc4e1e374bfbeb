"""Before a scenario drives a target: which dialect it speaks, and whether it checks tokens at all.

A handful of connections, made once per scenario arm:

1. the introduction: one connection with a valid token, to its readiness
   marker, and the target's health routes; the dialect is detected from what
   came back (`dialects.detect`), unless a parameter forced one. A server that
   answers a `jwt.<token>` offer with a bare `jwt-auth` (the real backend)
   makes a strict client fail its own handshake: the introduction then offers
   that scheme too, and says so.
2. the authentication probe: a token signed with another secret, an expired
   one (when the secret is at hand) and none; each must be refused. One that
   reaches readiness is a security finding (`authentication_not_enforced`).

The attempts are ordinary rows (conditions `INTRODUCTION` and `AUTH_PROBES`),
with the health answers as `health` marks on the introduction, so a trace keeps
them and the diagnosis reads them like any other evidence; scenario checks
never count them.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from gp_lib import auth, health, protocol
from gp_lib.dialects import Dialect, detect
from gp_lib.trace import AttemptRecord, frame_row

INTRODUCTION = "introduction"
WRONG_SECRET, EXPIRED, NO_TOKEN = "auth_probe_wrong_secret", "auth_probe_expired", "auth_probe_no_token"
#: The authentication probes, and what each token is.
AUTH_PROBES = {WRONG_SECRET: "a token signed with another secret", EXPIRED: "an expired token",
               NO_TOKEN: "no token at all"}
_SELECTED = re.compile(r"unsupported subprotocol: ([A-Za-z0-9._-]{1,40})(?![A-Za-z0-9._-])")


@dataclass
class Discovery:
    """What the discovery found: the dialect to speak, how it was chosen, and the attempts it made."""

    dialect: Dialect
    how: str
    records: list[AttemptRecord] = field(default_factory=list)

    @property
    def accepted_probes(self) -> list[str]:
        """The authentication probes the target let through to readiness."""
        return [r.condition for r in self.records if r.condition in AUTH_PROBES and r.t_ready_ms is not None]


async def discover(target: Any, *, dialect: Dialect | None = None, why: str = "set by the dialect parameter",
                   secret: str | None = None) -> Discovery:
    """Introduce the toolkit to `target` (a `scenarios.common.Target`) and probe its authentication.

    `dialect` forces one instead of detecting it (`why` says why); `secret` (the one tokens are minted
    with, when it is at hand) lets the probe mint an expired token.
    """
    intro, selected = await _introduce(target, dialect.offers() if dialect else ())
    answers = await health.fetch_all(target.url, target.params.open_timeout_s)
    for answer in answers:
        intro.frames.append(frame_row(intro.attempt_id, round(intro.t_close_ms or 0.0, 3), "mark",
                                      {"path": answer.path, "status": answer.status, "answer": answer.summary,
                                       "not_ready": answer.not_ready}, kind="health"))
    if dialect is not None:
        how = f"{dialect.name}: {why}"
    else:
        marker = _marker(intro)
        dialect, how = detect(marker, {a.path: a.body for a in answers}, selected)
        if marker is None and intro.outcome != "ok":
            how += f" (the introduction ended {intro.outcome})"
    if selected:
        how += f"; it selects the subprotocol {selected} for a jwt.<token> offer, so that is offered too"
    probes = [await _probe(target, condition, dialect, secret) for condition in AUTH_PROBES
              if condition != EXPIRED or secret is not None]
    return Discovery(dialect, how, [intro, *probes])


def selected_unoffered(record: AttemptRecord, offers: tuple[str, ...] = ()) -> str | None:
    """The subprotocol a server selected without it being offered, which failed the handshake (a server
    that answers a `jwt.<token>` offer with the bare scheme, `jwt-auth`), or None."""
    match = _SELECTED.search(record.error or "") if record.outcome == "protocol_error" else None
    return match.group(1) if match is not None and match.group(1) not in offers else None


async def _introduce(target: Any, offers: tuple[str, ...]) -> tuple[AttemptRecord, str | None]:
    """One connection with a valid token to its readiness marker; again offering the scheme the server
    selected when it selected one that was not offered."""
    record = await _connect(target, INTRODUCTION, offers=offers)
    selected = selected_unoffered(record, offers)
    if selected is None:
        return record, None
    return await _connect(target, INTRODUCTION, offers=(*offers, selected)), selected


async def _probe(target: Any, condition: str, dialect: Dialect, secret: str | None) -> AttemptRecord:
    user = "golden-path-auth-probe"
    if condition == WRONG_SECRET:
        token = auth.mint_token(secrets.token_urlsafe(32), user)
    elif condition == EXPIRED:
        token = auth.mint_token(secret, user, now=time.time() - 7200, lifetime_s=60)
    else:
        token = None
    # without the test-mode headers: a server that trusts X-User-ID would admit the probe for them, and
    # the finding would blame its token checks
    return await _connect(target, condition, token=token, offers=dialect.offers(), ready_timeout_s=min(
        target.params.ready_timeout_s, 5.0), test_headers=False)


async def _connect(target: Any, condition: str, *, token: str | None = "", offers: tuple[str, ...] = (),
                   ready_timeout_s: float | None = None, test_headers: bool = True) -> AttemptRecord:
    """One traced attempt to readiness, then closed; `token=""` means a valid one for a fresh user;
    `test_headers=False` leaves the test-mode headers out."""
    options: dict[str, Any] = {"extra_offers": offers, "anonymous": token is None}
    if not test_headers:
        options["extra_headers"] = None
    if token:
        options["token"] = token
    if ready_timeout_s is not None:
        options["ready_timeout_s"] = ready_timeout_s
    conn = await target.connection("golden-path-discovery", condition=condition, **options)
    async with conn:
        await conn.wait_ready()
    return conn.finish()


def _marker(record: AttemptRecord) -> dict[str, Any] | None:
    """The readiness marker the introduction received, decoded."""
    for row in record.frames:
        if row["direction"] == "received":
            message = protocol.message_from_row(row)
            if protocol.is_ready_marker(message):
                return dict(message)
    return None


def health_marks(frames: Any) -> list[dict[str, Any]]:
    """The health answers recorded as `health` marks in a frames table."""
    if frames is None or not len(frames) or "type" not in frames:
        return []
    rows = frames[(frames["direction"] == "mark") & (frames["type"] == "health")]
    marks = []
    for payload in rows["payload"]:
        value, _, _ = protocol.load_json(payload or "")
        if isinstance(value, dict):
            marks.append(value)
    return marks


def summary(discovery: Discovery) -> dict[str, Any]:
    """The discovery as JSON for scraps and summary.json."""
    return {"dialect": discovery.dialect.name, "how": discovery.how, "auth_probes_accepted":
            [AUTH_PROBES[c] for c in discovery.accepted_probes]}

