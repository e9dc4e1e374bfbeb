"""`make lab` in a root shell: JupyterLab starts (Jupyter refuses root unless told), serves the Lab page,
opens no browser, and keeps its token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gp_lib.refserver import free_port

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
START_DEADLINE_S = 60 * SCALE
URL = re.compile(r"(http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]+))")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="about the root shell: run the suite as root to cover it"),
]


def _get(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    try:
        with opener.open(request, timeout=10 * SCALE) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_make_lab_runs_as_root_serves_the_lab_page_and_keeps_its_token(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "BROWSER": "false",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = tmp_path / "lab.log"
    with log.open("wb") as sink:
        lab = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "lab", f"LAB_PORT={port}"],
                               env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        match = None
        while match is None:
            assert lab.poll() is None, f"make lab exited with {lab.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no Lab URL within {START_DEADLINE_S:g} s:\n{log.read_text()[-3000:]}"
            match = URL.search(log.read_text(errors="replace"))
            time.sleep(0.2)
        url, served_port, token = match.group(1), int(match.group(2)), match.group(3)
        assert served_port == port
        assert len(token) >= 32

        status, page = _get(url)
        assert status == 200 and "JupyterLab" in page

        status, _ = _get(f"http://127.0.0.1:{port}/api/contents")  # no token: refused
        assert status == 403
        status, listing = _get(f"http://127.0.0.1:{port}/api/contents?token={token}")
        assert status == 200 and "01_websocket_race_conditions.ipynb" in listing  # it serves notebooks/

        text = log.read_text(errors="replace")
        assert "--allow-root" in text and "--no-browser" in text  # the command make ran
    finally:
        os.killpg(lab.pid, signal.SIGTERM)  # the group this test started: make and its jupyter
        try:
            lab.wait(20 * SCALE)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(5)
