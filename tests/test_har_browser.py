"""A HAR from a real browser: headless Chromium talks to the reference server, DevTools records it.

The page (served on 127.0.0.1) opens a WebSocket to `gp serve` (the reference server),
authenticating with the `jwt.<base64url>` subprotocol offer as browsers must,
waits for readiness, asks for agent runs and closes after the last
agent_completed. The frames are captured through the DevTools protocol and
written in the layout of Chromium's DevTools HAR export; the toolkit then
imports that HAR and diagnoses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import secrets
import select
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from websockets.asyncio.client import connect

from gp_lib import analyze, cli, har
from gp_lib.auth import mint_token, subprotocol_offer
from chromium_cdp import START_DEADLINE_S, Session, chromium, needs_chromium

SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
SESSION_DEADLINE_S = 15 * SCALE
RUNS = 2
USER = "alice-browser"

pytestmark = needs_chromium

PAGE = """<!doctype html>
<title>golden path session</title>
<script>
const runs = %(runs)d;
let completed = 0;
const ws = new WebSocket(%(url)s, [%(offer)s]);
function ask() {
  ws.send(JSON.stringify({type: "agent_request", agent: "triage", message: "Where can my cloud spend drop?",
                          thread_id: "thread-browser"}));
}
ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.type === "connection_established" || message.type === "connection_ready") ask();
  if (message.type === "agent_completed") {
    completed += 1;
    if (completed < runs) ask(); else ws.close(1000, "done");
  }
};
</script>
"""


# -- the browser and the page ---------------------------------------------------------------

@contextlib.contextmanager
def serving(html: str) -> Iterator[str]:
    """Serve `html` at http://127.0.0.1:<port>/ until the block ends."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def devtools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A headless Chromium with a fresh profile; yields its browser DevTools WebSocket URL."""
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as url:
        yield url


async def capture(devtools_url: str, page_url: str) -> list[dict[str, Any]]:
    """Open `page_url` in a new tab and record its WebSocket events until every socket closed."""
    async with connect(devtools_url, max_size=2**24, proxy=None) as cdp:
        browser = Session(cdp)
        events, call = browser.events, browser.call
        target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        await call("Network.enable", {}, session)
        await call("Page.navigate", {"url": page_url}, session)
        await browser.wait(lambda: _all_closed(events), "the page's WebSocket did not close", SESSION_DEADLINE_S)
        await call("Target.closeTarget", {"targetId": target})
    return [e for e in events if e.get("method", "").startswith("Network.webSocket")]


def _all_closed(events: list[dict[str, Any]]) -> bool:
    created = {e["params"]["requestId"] for e in events if e.get("method") == "Network.webSocketCreated"}
    closed = {e["params"]["requestId"] for e in events if e.get("method") == "Network.webSocketClosed"}
    return bool(created) and created <= closed


# -- the HAR, as Chromium's DevTools export writes it --------------------------------------------

def har_from_devtools(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A HAR 1.2 log with one `_resourceType: "websocket"` entry per socket, frames in `_webSocketMessages`.

    Times follow DevTools: a frame's `time` is wall-clock seconds, its monotonic
    timestamp shifted by (wallTime - timestamp) of the handshake request.
    """
    sockets: dict[str, dict[str, Any]] = {}
    for event in events:
        method, params = event["method"].removeprefix("Network."), event["params"]
        socket = sockets.setdefault(params["requestId"], {"frames": [], "request": {}, "response": {}})
        if method == "webSocketCreated":
            socket["url"] = params["url"]
        elif method == "webSocketWillSendHandshakeRequest":
            socket.update(issued=params["timestamp"], wall=params["wallTime"], request=params["request"])
        elif method == "webSocketHandshakeResponseReceived":
            socket.update(responded=params["timestamp"], response=params["response"])
        elif method in ("webSocketFrameSent", "webSocketFrameReceived"):
            frame = params["response"]
            socket["frames"].append(("send" if method == "webSocketFrameSent" else "receive", params["timestamp"],
                                     frame["opcode"], frame["payloadData"]))
        elif method == "webSocketFrameError":
            socket["frames"].append(("error", params["timestamp"], -1, params["errorMessage"]))
        elif method == "webSocketClosed":
            socket["closed"] = params["timestamp"]
    entries = []
    for socket in sockets.values():
        shift = socket["wall"] - socket["issued"]
        response = socket["response"]
        entries.append({
            "_resourceType": "websocket",
            "startedDateTime": datetime.fromtimestamp(socket["wall"], timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "time": round((socket.get("closed", socket["issued"]) - socket["issued"]) * 1000, 3),
            "request": {"method": "GET", "url": socket["url"], "httpVersion": "HTTP/1.1",
                        "headers": _headers(socket["request"].get("headers")), "queryString": [], "cookies": [],
                        "headersSize": -1, "bodySize": 0},
            "response": {"status": response.get("status", 0), "statusText": response.get("statusText", ""),
                         "httpVersion": "HTTP/1.1", "headers": _headers(response.get("headers")), "cookies": [],
                         "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "", "headersSize": -1,
                         "bodySize": 0},
            "cache": {},
            "timings": {"blocked": -1, "dns": -1, "ssl": -1, "connect": -1, "send": 0,
                        "wait": round((socket.get("responded", socket["issued"]) - socket["issued"]) * 1000, 3),
                        "receive": 0},
            "_webSocketMessages": [{"type": kind, "time": stamp + shift, "opcode": opcode, "data": data}
                                   for kind, stamp, opcode, data in socket["frames"]],
        })
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [],
                    "entries": entries}}


def _headers(headers: dict[str, str] | None) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in (headers or {}).items()]


@contextlib.contextmanager
def gp_serve(*arguments: str) -> Iterator[tuple[str, str]]:
    """`gp serve --port 0 ARGUMENTS` with a fresh secret in JWT_SECRET_KEY; yields (WebSocket URL, secret)."""
    secret = secrets.token_urlsafe(32)
    server = subprocess.Popen([sys.executable, "-m", "gp_lib.cli", "serve", "--port", "0", *arguments],
                              env={**os.environ, "JWT_SECRET_KEY": secret}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], START_DEADLINE_S)
        assert ready, f"gp serve printed no listening line within {START_DEADLINE_S:g} s"
        listening = json.loads(server.stdout.readline())
        yield f"ws://127.0.0.1:{listening['ws_port']}/ws", secret
    finally:
        server.terminate()
        server.wait(5)
        server.stdout.close()


def browser_session(devtools_url: str, serve_arguments: tuple[str, ...], path: Path) -> str:
    """Run the page against `gp serve SERVE_ARGUMENTS`, write the HAR to `path`; the token used."""
    with gp_serve(*serve_arguments) as (url, secret):
        token = mint_token(secret, USER)
        page = PAGE % {"runs": RUNS, "url": json.dumps(url), "offer": json.dumps(subprotocol_offer(token))}
        with serving(page) as page_url:
            events = asyncio.run(capture(devtools_url, page_url))
    path.write_text(json.dumps(har_from_devtools(events), indent=1))
    return token


# -- tests ------------------------------------------------------------------------------------

def test_browser_session_against_a_healthy_server_imports_complete_runs(devtools: str, tmp_path: Path) -> None:
    path = tmp_path / "healthy.har"
    token = browser_session(devtools, (), path)

    entry = json.loads(path.read_text())["log"]["entries"][0]
    assert entry["_resourceType"] == "websocket" and entry["response"]["status"] == 101
    assert {m["type"] for m in entry["_webSocketMessages"]} == {"send", "receive"}

    imported = har.load_har(path)
    assert imported.problems == []
    assert imported.websocket_entries == 1
    attempt = imported.attempts.iloc[0]
    assert attempt["user_id"] == USER
    assert attempt["outcome"] == "ok" and attempt["handshake_status"] == 101
    assert 0 <= attempt["t_ready_ms"] < attempt["t_first_send_ms"] < SESSION_DEADLINE_S * 1000

    analysis = analyze.analyze(analyze.load_trace(path))
    assert analysis.findings == []
    assert analysis.metrics["runs"] == RUNS and analysis.metrics["complete_runs"] == RUNS
    assert all(c.passed for c in analysis.checks), [c for c in analysis.checks if not c.passed]

    out = tmp_path / "out"
    assert cli.main(["analyze", str(path), "--out", str(out)]) == 0
    written = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".md", ".json", ".jsonl", ".xml"))
    assert "Verdict: PASS" in written
    assert token not in written and subprotocol_offer(token) not in written
    assert token not in imported.attempts.to_json() + imported.frames.to_json()


def test_browser_session_against_the_events_fault_is_diagnosed_as_missing_events(devtools: str,
                                                                                  tmp_path: Path) -> None:
    path = tmp_path / "omit_tools.har"
    browser_session(devtools, ("--fault", "events"), path)

    analysis = analyze.analyze(analyze.load_trace(path))
    assert analysis.trace.problems == []
    assert analysis.findings and analysis.findings[0].root_cause == "missing_events"
    assert analysis.metrics["runs"] == RUNS and analysis.metrics["complete_runs"] == 0
    failed = {c.name for c in analysis.checks if not c.passed}
    assert failed == {"all_five_events"}
    assert set(analysis.runs["missing"]) == {"tool_executing, tool_completed"}

    out = tmp_path / "out"
    assert cli.main(["analyze", str(path), "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "captured" and summary["verdict"] == "fail"
    assert summary["diagnosis"][0]["root_cause"] == "missing_events"
    assert "missing_events" in (out / analyze.REPORT).read_text()
