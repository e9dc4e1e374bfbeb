"""Headless Chromium driven over the DevTools protocol, for the tests that need a real browser.

Debian's `/usr/bin/chromium` with a fresh profile; no dependency beyond
`websockets`, which the project already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from websockets.asyncio.client import ClientConnection

CHROMIUM = Path("/usr/bin/chromium")
SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
START_DEADLINE_S = 20 * SCALE
CALL_DEADLINE_S = 30 * SCALE  # the longest a DevTools call may take to be answered
#: Chromium's own traffic stays on this machine: no background fetches, pings or reports, and a proxy on
#: the discard port for anything else (127.0.0.1 itself is never proxied).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-pings",
         "--disable-domain-reliability", "--proxy-server=http://127.0.0.1:9")

needs_chromium = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install -y chromium)"),
]


def needing_chromium(test):
    """`test` with the marks of `needs_chromium`, for one test of a file (`pytestmark = needs_chromium` for all)."""
    for mark in needs_chromium:
        test = mark(test)
    return test


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[str]:
    """A headless Chromium with the fresh profile `profile`; yields its browser DevTools WebSocket URL."""
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile.parent / f"{profile.name}.log").open("wb")
    browser = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_DEADLINE_S
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            assert browser.poll() is None, f"chromium exited with {browser.returncode}; see {log.name}"
            assert time.monotonic() < deadline, f"chromium wrote no DevToolsActivePort in {START_DEADLINE_S:g} s"
            time.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        browser.terminate()
        try:
            browser.wait(5)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(5)
        log.close()


class Session:
    """DevTools calls over one connection; every event that arrives meanwhile is kept in `events`."""

    def __init__(self, cdp: ClientConnection):
        self.cdp = cdp
        self.events: list[dict[str, Any]] = []
        self._ids = iter(range(1, 1_000_000))

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict:
        number = next(self._ids)
        await self.cdp.send(json.dumps({"id": number, "method": method, "params": params or {},
                                        **({"sessionId": session} if session else {})}))
        deadline = time.monotonic() + CALL_DEADLINE_S
        while True:
            message = await self._receive(deadline, f"no answer to {method} within {CALL_DEADLINE_S:g} s")
            if message.get("id") == number:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    async def wait(self, done: Callable[[], bool], what: str, deadline_s: float) -> None:
        """Wait until `done()` holds, keeping every message that arrives in `events`; fail naming `what`."""
        deadline = time.monotonic() + deadline_s
        while not done():
            self.events.append(await self._receive(deadline, f"{what} within {deadline_s:g} s"))

    async def until(self, method: str, deadline_s: float) -> dict[str, Any]:
        """Wait for the event `method` (kept in `events` too)."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("method") == method), None)

        await self.wait(lambda: found() is not None, f"no {method}", deadline_s)
        return found()

    async def _receive(self, deadline: float, failure: str) -> dict[str, Any]:
        """The next message, by `deadline` (monotonic seconds); an AssertionError saying `failure` after it."""
        remaining = deadline - time.monotonic()
        assert remaining > 0, failure
        try:
            return json.loads(await asyncio.wait_for(self.cdp.recv(), remaining))
        except TimeoutError:
            raise AssertionError(failure) from None
