"""`gp probe URL`: one traced connection, every frame with its timing, then how it ended.

What websocat and wscat do not show: each frame's time since the upgrade and
its direction, the HTTP status of a refused upgrade, whether and when the
readiness marker came (a three-step handshake is answered on the way), and
the close code and reason as the server sent them, with the outcome the
toolkit records for it. Whatever the server chose is printed escaped (no
terminal control sequence gets through) and redacted. The token is minted from the secret in an
environment variable; neither is ever printed (payloads are redacted).

    gp probe ws://localhost:8000/ws --send '{"type": "ping"}'
    gp probe ws://localhost:8000/ws --no-wait-ready --send-at-ms 0 --send '{"type": "ping"}'

Exit codes: 0 a normal close (1000, by either side, readiness seen unless
--no-wait-ready); 1 anything else (1011, 1006, an auth rejection, refused, no
readiness marker...); 2 bad input, named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any, TextIO

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from gp_lib import auth, escape, protocol
from gp_lib.client import TracedConnection
from gp_lib.dialects import Dialect
from gp_lib.discovery import selected_unoffered
from gp_lib.redact import redact
from gp_lib.trace import AttemptRecord

NORMAL_CLOSE = 1000
PAYLOAD_LIMIT = 200
POLL_S = 0.02
#: The longest any wait may be, in seconds: a probe is one connection, not a soak.
MAX_WAIT_S = 600.0
ARROWS = {"sent": "->", "received": "<-", "mark": "--"}


class ProbeInputError(ValueError):
    """A command-line value is wrong; the message names it."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the WebSocket endpoint, ws:// or wss://")
    parser.add_argument("--user", default="gp-probe-user", help="user id (sub claim) of the minted token")
    parser.add_argument("--jwt-secret-env", default="JWT_SECRET_KEY", metavar="NAME",
                        help="environment variable holding the JWT signing secret (default JWT_SECRET_KEY)")
    parser.add_argument("--auth-transport", default="both", choices=auth.AUTH_TRANSPORTS,
                        help="where the token goes: the Authorization header, a jwt.* subprotocol offer, or both "
                             "(default both)")
    parser.add_argument("--send", action="append", default=[], metavar="JSON",
                        help="a JSON message with a string type to send; repeatable, sent in order")
    parser.add_argument("--send-at-ms", type=float, metavar="MS",
                        help="send at MS after the upgrade without waiting for readiness (the race window)")
    parser.add_argument("--no-wait-ready", action="store_true",
                        help="do not wait for the readiness marker before sending")
    parser.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                        help="how long to listen after the last message is sent (default 2)")
    parser.add_argument("--open-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="deadline for the upgrade (default 10)")
    parser.add_argument("--ready-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="deadline for the readiness marker (default 10)")
    parser.add_argument("--dialect", default="auto", metavar="SPEC",
                        help="what the target speaks, for the subprotocols to offer: auto (default: a scheme the "
                             "server selects unoffered is offered on a second try), or a preset such as netra")


def run(args: argparse.Namespace) -> int:
    try:
        messages = _check(args)
        secret = auth.secret_from_env(args.jwt_secret_env)
    except (ProbeInputError, auth.AuthError) as exc:
        print(f"gp probe: {redact(str(exc))}", file=sys.stderr)
        return 2
    token = auth.mint_token(secret, args.user)
    record = asyncio.run(probe(args, token, messages, sys.stdout))
    summarise(record, args, sys.stdout)
    return 0 if is_normal(record, waited_ready=not _sends_early(args)) else 1


def _check(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The messages to send; raises ProbeInputError naming the first bad value."""
    try:
        parse_uri(args.url)
    except (InvalidURI, ValueError) as exc:
        reason = str(exc).removeprefix(f"{args.url} isn't a valid URI: ")
        raise ProbeInputError(f"URL must be a ws:// or wss:// URL with a host ({reason}), not "
                              f"{escape.terminal(redact(args.url), 200)!r}") from None
    bounds = {"wait": (0.0, MAX_WAIT_S, "seconds"), "send_at_ms": (0.0, MAX_WAIT_S * 1000, "ms"),
              "open_timeout": (None, MAX_WAIT_S, "seconds"), "ready_timeout": (None, MAX_WAIT_S, "seconds")}
    for name, (least, most, unit) in bounds.items():
        value, option = getattr(args, name), f"--{name.replace('_', '-')}"
        if value is None:
            continue
        if not math.isfinite(value) or value > most:
            raise ProbeInputError(f"{option} must be a finite number of {unit} up to {most:g}, got {value:g}")
        if least is not None and value < least:
            raise ProbeInputError(f"{option} must not be negative, got {value:g}")
        if least is None and not value > 0:
            raise ProbeInputError(f"{option} must be greater than zero, got {value:g}")
    if args.dialect != "auto":
        try:
            Dialect.parse(args.dialect)
        except ValueError as exc:
            raise ProbeInputError(f"--dialect: {exc}") from None
    messages = []
    for number, text in enumerate(args.send, 1):
        message = protocol.decode(text)
        if not message.valid:
            what = "is not JSON" if message.problem in ("not JSON", "JSON nested too deeply") else \
                "must be a JSON object with a string type"
            raise ProbeInputError(f"--send #{number} {what} ({message.problem}): {escape.terminal(text, 80)!r}")
        messages.append(dict(message))
    return messages


def _sends_early(args: argparse.Namespace) -> bool:
    return args.no_wait_ready or args.send_at_ms is not None


async def probe(args: argparse.Namespace, token: str, messages: list[dict[str, Any]], out: TextIO) -> AttemptRecord:
    """Connect, (wait for readiness,) send, listen; frames are printed to `out` as they come."""
    offers = Dialect.parse(args.dialect).offers() if args.dialect != "auto" else ()
    print(f"probing {escape.terminal(redact(args.url))} as {escape.terminal(args.user)} "
          f"(token in {args.auth_transport}; never printed)", file=out)
    record = await _session(args, token, messages, offers, out)
    selected = selected_unoffered(record, offers)
    if selected is None:
        return record
    print(f"the server selected the subprotocol {escape.terminal(selected)!r}, which was not offered, "
          f"so the handshake failed on this side; again, offering it too", file=out)
    return await _session(args, token, messages, (*offers, selected), out)


async def _session(args: argparse.Namespace, token: str, messages: list[dict[str, Any]], offers: tuple[str, ...],
                   out: TextIO) -> AttemptRecord:
    conn = TracedConnection(args.url, attempt_id="probe", token=token, user_id=args.user,
                            auth_transport=args.auth_transport, extra_offers=offers, open_timeout_s=args.open_timeout,
                            ready_timeout_s=args.ready_timeout)
    printer = _Printer(conn.record, out)
    following = asyncio.create_task(printer.follow())
    try:
        if await conn.open():
            if not _sends_early(args):
                await conn.wait_ready()
            for message in messages:
                await conn.send(message, at_ms=args.send_at_ms)
            await conn.collect(args.wait)
        await conn.close()
    finally:
        following.cancel()
    printer.flush()
    return conn.finish()


class _Printer:
    """Prints a record's frames as the client stamps them (on arrival, so the times are true)."""

    def __init__(self, record: AttemptRecord, out: TextIO):
        self.record = record
        self.out = out
        self.shown = 0

    def flush(self) -> None:
        for row in self.record.frames[self.shown:]:
            print(frame_line(row, self.record.t_open_ms), file=self.out)
            self.shown += 1
        self.out.flush()

    async def follow(self) -> None:
        while True:
            self.flush()
            await asyncio.sleep(POLL_S)


def frame_line(row: dict[str, Any], t_open_ms: float | None) -> str:
    """One frame: time since the upgrade (since the start before it), direction, type, payload."""
    t_ms = row["t_ms"] - (t_open_ms or 0.0)
    kind = escape.terminal(row["type"] or "?", 60)
    if row["direction"] == "mark":
        detail = _mark_detail(kind, row["payload"])
    else:
        payload = row["payload"] or ""
        detail = payload if len(payload) <= PAYLOAD_LIMIT else payload[:PAYLOAD_LIMIT - 3] + "..."
    return f"{t_ms:9.1f} ms  {ARROWS.get(row['direction'], '  ')} {kind:<24} {escape.terminal(detail)}".rstrip()


def _mark_detail(kind: str, payload: str) -> str:
    detail = json.loads(payload) if payload else {}
    if kind == "open":
        return "upgrade complete"
    if kind == "ready":
        return "readiness marker received"
    if kind == "close":
        reason = f" '{detail.get('reason')}'" if detail.get("reason") else ""
        return f"closed {detail.get('code')}{reason} by {detail.get('by')}"
    if kind == "error":
        return f"{detail.get('outcome')}: {detail.get('error') or ''}".rstrip(": ")
    return payload


def summarise(record: AttemptRecord, args: argparse.Namespace, out: TextIO) -> None:
    """How the attempt went, in the terms of the attempts table."""
    def since_upgrade(t_ms: float | None) -> str:
        return "-" if t_ms is None else f"{t_ms - (record.t_open_ms or 0.0):.1f} ms after the upgrade"

    status = record.handshake_status
    lines = [f"HTTP status:  {status if status is not None else 'none (no HTTP answer)'}"
             + (f" (upgrade took {record.t_open_ms:.1f} ms; subprotocol accepted: "
                f"{escape.terminal(record.subprotocol or 'none')})"
                if record.t_open_ms is not None else ""),
             f"readiness:    {since_upgrade(record.t_ready_ms) if record.t_ready_ms is not None else 'none'}",
             f"first send:   {since_upgrade(record.t_first_send_ms)}",
             f"frames:       {record.frames_sent} sent, {record.frames_received} received"
             + (f", {record.invalid_frames} not valid JSON with a type" if record.invalid_frames else "")]
    if record.close_code is not None:
        meaning = protocol.CLOSE_CODES.get(record.close_code, "other")
        reason = f" '{escape.terminal(record.close_reason)}'" if record.close_reason else ""
        lines.append(f"close:        {record.close_code} ({meaning}){reason} by {record.closed_by}, "
                     f"{since_upgrade(record.t_close_ms)}")
    if record.error:
        lines.append(f"error:        {escape.terminal(record.error)}")
    unanswered = unanswered_before_close(record)
    if unanswered:
        lines.append(f"unanswered:   the server closed the socket after {unanswered} message"
                     f"{'s' if unanswered > 1 else ''} without answering any: its message loop fails on them")
    normal = is_normal(record, waited_ready=not _sends_early(args))
    lines.append(f"outcome:      {record.outcome} ({'normal' if normal else 'abnormal'})")
    print("\n".join(lines), file=out)


def is_normal(record: AttemptRecord, *, waited_ready: bool) -> bool:
    """A normal close (1000), the readiness marker when it was awaited, and an answer to what was sent
    before the server closed: a 1000 right after an unanswered message is a crashed message loop."""
    if record.close_code != NORMAL_CLOSE or record.outcome not in ("ok", "closed_other"):
        return False
    if unanswered_before_close(record):
        return False
    return record.t_ready_ms is not None or not waited_ready


def unanswered_before_close(record: AttemptRecord) -> int:
    """How many messages were sent without any answer before the server closed; 0 when something came
    after the first of them, or the client closed."""
    return len(protocol.unanswered_sends(record.frames)) if record.closed_by == "server" else 0
