"""The HTTP health routes of a target: `GET /health` and `GET /ws/health` on the WebSocket's host and port.

Optional evidence (PROTOCOL.md section 1: a target may serve no HTTP routes):
what they answer tells a host that is down from one that is up but refuses
WebSocket upgrades because its services are not ready, which is root cause 2
and not an unreachable target. Nothing here raises on what a target answers.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gp_lib import protocol
from gp_lib.auth import read_body
from gp_lib.client import LOOPBACK
from gp_lib.redact import redact

PATHS = ("/health", "/ws/health")
BODY_LIMIT = 65_536
#: Words of a health status that say the service cannot serve now.
NOT_READY_WORDS = ("degraded", "unhealthy", "not_ready", "not ready", "unavailable", "starting", "unknown")

#: Health probes to loopback go direct, as the WebSocket client's connections do; others use the environment's proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Answer:
    """What one health route answered: its HTTP status (None: nothing answered), a short summary, the body."""

    path: str
    url: str
    status: int | None
    summary: str
    body: dict[str, Any] | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def not_ready(self) -> bool:
        """The route says the service cannot serve now: HTTP 503, or a status word that says so."""
        if self.status == 503:
            return True
        status = str((self.body or {}).get("status", "")).lower()
        availability = (self.body or {}).get("service_availability")
        refuses = isinstance(availability, dict) and availability.get("allow_websocket_connections") is False
        return refuses or any(word in status for word in NOT_READY_WORDS)

    def row(self, condition: str) -> dict[str, Any]:
        return {"condition": condition, "path": self.path, "url": self.url, "status": self.status,
                "answer": self.summary}


def health_urls(ws_url: str) -> list[tuple[str, str]]:
    """`(path, url)` of the health routes on the WebSocket's host and port, http(s) from ws(s)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    netloc = parts.netloc.rpartition("@")[2]  # never send userinfo to a health route
    return [(path, urlunsplit((scheme, netloc, path, "", ""))) for path in PATHS]


async def fetch_all(ws_url: str, timeout_s: float) -> list[Answer]:
    """Both health routes, at once."""
    urls = health_urls(ws_url)
    return list(await asyncio.gather(*(asyncio.to_thread(fetch, path, url, timeout_s) for path, url in urls)))


async def probe_health(ws_url: str, condition: str, timeout_s: float) -> list[dict[str, Any]]:
    """One row per health route: its HTTP status (None when nothing answered) and what it said."""
    return [answer.row(condition) for answer in await fetch_all(ws_url, timeout_s)]


def fetch(path: str, url: str, timeout_s: float) -> Answer:
    opener = _DIRECT if urlsplit(url).hostname in LOOPBACK else urllib.request.build_opener()
    deadline = time.monotonic() + timeout_s
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return _answer(path, url, response.status, read_body(response, BODY_LIMIT, deadline)[0])
    except urllib.error.HTTPError as exc:
        try:
            body = read_body(exc, BODY_LIMIT, deadline)[0]  # cut at the deadline: evidence as far as it came
        except Exception:  # the body of an error answer is optional evidence
            body = b""
        return _answer(path, url, exc.code, body)
    except Exception as exc:  # refused, timed out, not HTTP: all evidence, never a failure
        reason = getattr(exc, "reason", None) or exc
        return Answer(path, url, None, redact(f"no answer: {reason}") or "no answer")


def _answer(path: str, url: str, status: int, body: bytes) -> Answer:
    text, value = _decoded(body)
    return Answer(path, url, status, _summary(text, value), value if isinstance(value, dict) else None)


def health_answer(body: bytes) -> str:
    """A short summary of a health body: its status and the services it says are down."""
    return _summary(*_decoded(body))


def _decoded(body: bytes) -> tuple[str, Any]:
    text = body.decode("utf-8", "replace").strip()
    return text, protocol.load_json(text)[0]


def _summary(text: str, value: Any) -> str:
    if not isinstance(value, dict) or "status" not in value:
        return redact(protocol.cut_text(text, 120)) or "(empty body)"
    availability = value.get("service_availability")
    down: list[str] = []
    if isinstance(availability, dict):
        critical = availability.get("critical_services")
        if isinstance(critical, dict):
            down = [str(name) for name, state in critical.items() if state not in ("up", "ok", "healthy", True)]
    status = protocol.cut_text(str(value["status"]), 60)
    error = value.get("error") if isinstance(value.get("error"), str) else None
    return redact(status + (f"; down: {', '.join(down)}" if down else "")
                  + (f"; error: {protocol.cut_text(error, 120)}" if error else ""))
