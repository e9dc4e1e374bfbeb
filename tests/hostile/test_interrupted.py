"""Class 7, interrupted runs: Ctrl-C or SIGTERM still leaves summary.json and junit.xml, marked
`interrupted`, with what finished and redacted; an --out that holds an earlier run is refused unless --force."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hostile_servers import SECRET, TIME_SCALE, serving
from leak_scan import leaks_under

from gp_lib import batch
from gp_lib.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["-p", "open_timeout_s=2", "-p", "ready_timeout_s=0.3", "-p", "receive_timeout_s=0.3",
         "-p", "factory_initialization.health_checks=1", "-p", "factory_initialization.connections=1",
         "-p", "factory_initialization.recovery_deadline_s=0.3", "-p", "factory_initialization.max_recovery_attempts=1",
         "-p", "factory_initialization.reconnect_wait_s=0",
         "-p", "race_conditions.concurrency_levels=[1]", "-p", "race_conditions.send_delays_ms=[0]",
         "-p", "race_conditions.sweep_repeats=400", "-p", "race_conditions.deadline_s=300"]


def _popen(args: list[str], ignoring_sigint: bool, **kwargs) -> subprocess.Popen:
    """Popen, the child started with SIGINT ignored when asked (as a shell does for a background job, and
    nohup): set in this process just around the fork, since an ignored disposition survives exec."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignoring_sigint else None
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        if ignoring_sigint:
            signal.signal(signal.SIGINT, previous)


def _wait_for(condition, what: str, process: subprocess.Popen, lines: list[str]) -> None:
    """Wait (bounded, scaled by GP_TIME_SCALE) until `condition()` holds; the run must not end first."""
    deadline = time.monotonic() + 180 * TIME_SCALE
    while not condition():
        assert process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, f"never saw {what}: " + "".join(lines)
        time.sleep(0.2)


@pytest.mark.notebook
@pytest.mark.parametrize("signum, background", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-started-ignoring-SIGINT"])
def test_an_interrupted_run_still_writes_its_summary_and_junit(tmp_path, signum, background):
    out = tmp_path / "out"
    with serving("silent_ws") as server:
        process = _popen(
            [sys.executable, "-m", "gp_lib.cli", "report", "--target", server.url, "--jobs", "1", "--out", str(out),
             "--scenario", "factory_initialization", "--scenario", "race_conditions", *QUICK],
            background, cwd=ROOT, env={**os.environ, "JWT_SECRET_KEY": SECRET}, stderr=subprocess.PIPE, text=True)
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
            reader.start()
            # one job at a time: the factory notebook's requests are all in once it is reported finished
            _wait_for(lambda: any("factory_initialization: finished" in line for line in lines),
                      "the factory notebook finish", process, lines)
            factory_requests = len(server.requests)
            _wait_for(lambda: len(server.requests) > factory_requests, "the race notebook's traffic", process, lines)
            process.send_signal(signum)  # the race notebook is running now
            code = process.wait(90 * TIME_SCALE)
            reader.join(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    err = "".join(lines)
    assert code == 130 and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["verdict"] == "error"
    assert summary["scenarios"]["factory_initialization"]["verdict"] in ("pass", "fail")
    assert "interrupted" in summary["scenarios"]["race_conditions"]["error"]
    suites = ET.parse(out / "junit.xml").getroot()
    assert int(suites.get("errors")) >= 1
    assert leaks_under(out, {"secret": SECRET}) == []
    # the race notebook was stopped, not killed after the grace period: papermill wrote it as it stopped,
    # with the cells that had started (a killed worker leaves the copy written before the first cell)
    cells = json.loads((out / "notebooks" / "01_websocket_race_conditions.ipynb").read_text())["cells"]
    started = [c for c in cells if c["metadata"].get("papermill", {}).get("start_time")]
    assert 0 < len(started) < len(cells)


def test_an_out_folder_holding_an_earlier_run_is_refused_without_force(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{}")
    assert main(["report", "--scenario", "race_conditions", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1
    parser = argparse.ArgumentParser()
    batch.configure(parser)
    plan = batch.make_plan(parser.parse_args(["--scenario", "race_conditions", "--out", str(tmp_path), "--force"]))
    assert plan.out == tmp_path.resolve()
