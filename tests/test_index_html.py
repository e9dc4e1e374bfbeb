"""OUT/index.html: one self-contained page per run, with what a target sent escaped; and the page of a real
run opened in headless Chromium: it loads without errors, every image renders, and a screenshot is kept."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from websockets.asyncio.client import connect

from chromium_cdp import SCALE, Session, chromium, needing_chromium
from gp_lib import index_html
from gp_lib.report import ReportContext

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "parameters" / "quick.yaml"
HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _summary(**changes):
    summary = {"run_id": "20261203T120000Z", "mode": "live", "target": "ws://127.0.0.1:9/ws",
               "started_at": "2026-12-03T12:00:00Z", "finished_at": "2026-12-03T12:00:30Z", "verdict": "fail",
               "scenarios": {"race_conditions": {
                   "verdict": "fail", "report": "GOLDEN_PATH_WEBSOCKET_RACE_CONDITIONS_TEST_REPORT.md",
                   "checks": [{"name": "no_1011_closes", "passed": False, "status": "fail", "evidence": HOSTILE}],
                   "metrics": {}}},
               "diagnosis": [{"root_cause": "race_conditions", "confidence": 0.9, "evidence": [f"said {HOSTILE}"]}]}
    return {**summary, **changes}


def _executed(path: Path) -> Path:
    cell = nbformat.v4.new_code_cell("nb.show(...)", metadata={"tags": ["section-root-cause"]})
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/markdown": f"| close reason |\n| --- |\n| {HOSTILE} |\n\n[link](javascript:alert(3))"})]
    figure = nbformat.v4.new_code_cell("nb.show_figure(...)", metadata={"tags": ["section-plots"]})
    figure.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode()})]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, figure]), str(path))
    return path


def test_server_text_is_escaped_and_the_page_needs_nothing_from_elsewhere(tmp_path):
    context = ReportContext(scenario="race_conditions", title="WebSocket race conditions", verdict="fail",
                            error=None, facts=[("target", HOSTILE)], command="gp report", parameters={},
                            headline="caused by factory_initialization, not by the handshake race")
    section = index_html.section("WebSocket race conditions", _executed(tmp_path / "x.ipynb"), context)
    page = index_html.write(tmp_path, _summary(), [section]).read_text()
    tags = _tags(page)
    assert "script" not in {tag for tag, _ in tags}
    assert not [(tag, name) for tag, attrs in tags for name, value in attrs
                if name.startswith("on") or "javascript:" in (value or "")]
    assert "&lt;img src=x onerror=" in page  # shown as text, wherever it came from
    assert not re.findall(r"""(?:src|href)=["']https?://""", page)  # no script, style or image fetched
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == 1
    assert '<a href="GOLDEN_PATH_WEBSOCKET_RACE_CONDITIONS_TEST_REPORT.md">' in page
    assert '<a href="#race_conditions">race_conditions</a>' in page and '<h1 id="race_conditions">' in page
    assert "WebSocket race conditions: FAIL (caused by factory_initialization, not by the handshake race)" in page
    assert page.index("Golden Path run 20261203T120000Z") < page.index('<h1 id="race_conditions">')


def _tags(page: str) -> list[tuple[str, list]]:
    """Every start tag of the page with its attributes, as a browser's parser reads them."""
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, attrs))

    parser = Collect()
    parser.feed(page)
    return parser.tags


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A reference run of two scenarios with the quick parameters, as `gp report` writes it."""
    out = tmp_path_factory.mktemp("run") / "out"
    done = subprocess.run([sys.executable, "-m", "gp_lib.cli", "report", "--scenario", "race_conditions",
                           "--scenario", "missing_events", "--params", str(QUICK), "--out", str(out)],
                          capture_output=True, text=True, timeout=300 * SCALE, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.notebook
@pytest.mark.timeout(900)  # the fixture's run may take up to 300 s scaled
def test_gp_report_writes_index_html_with_the_summary_first_and_every_figure_embedded(real_run):
    page = (real_run / "index.html").read_text()
    summary = json.loads((real_run / "summary.json").read_text())
    figures = sorted((real_run / "assets").glob("*.png"))
    embedded = re.findall(r'<img[^>]+src="data:image/png;base64,', page)
    assert len(embedded) == len(figures) >= 4  # the figures, each once
    for scenario, entry in summary["scenarios"].items():
        assert f'<a href="{entry["report"]}">' in page and f'<h1 id="{scenario}">' in page
    assert page.index("Golden Path run") < page.index("What to do now")
    assert "script" not in {tag for tag, _ in _tags(page)}



@pytest.mark.notebook
@pytest.mark.timeout(900)  # the fixture's run may take up to 300 s scaled
@needing_chromium
def test_index_html_opens_in_chromium_without_errors_and_every_image_renders(real_run, tmp_path):
    shot = tmp_path / "index-first-screen.png"
    with chromium(tmp_path / "profile") as devtools:
        result = asyncio.run(asyncio.wait_for(_open(devtools, (real_run / "index.html").as_uri(), shot), 60 * SCALE))
    print(f"\nscreenshot of index.html: {shot}")
    assert result["errors"] == [], result["errors"]
    assert result["failed_loads"] == [], result["failed_loads"]
    images = result["images"]
    assert len(images) == len(list((real_run / "assets").glob("*.png")))
    assert all(complete and width > 0 for complete, width in images), images
    assert result["title"].startswith("Golden Path run ") and result["scripts"] == 0
    assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")


async def _open(devtools: str, url: str, shot: Path) -> dict:
    async with connect(devtools, max_size=2**26, proxy=None) as cdp:
        browser = Session(cdp)
        target = (await browser.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await browser.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await browser.call(f"{domain}.enable", {}, session)
        await browser.call("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        await browser.call("Page.navigate", {"url": url}, session)
        await browser.until("Page.loadEventFired", 30 * SCALE)
        checked = await browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """
            ({images: Array.from(document.images).map(i => [i.complete, i.naturalWidth]),
              title: document.title, scripts: document.scripts.length})"""}, session)
        screenshot = await browser.call("Page.captureScreenshot", {"format": "png"}, session)
        shot.write_bytes(base64.b64decode(screenshot["data"]))
        await browser.call("Target.closeTarget", {"targetId": target})
    events = browser.events
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or e.get("method") == "Page.javascriptDialogOpening"]
    failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
    return {**checked["result"]["value"], "errors": errors, "failed_loads": failed}
