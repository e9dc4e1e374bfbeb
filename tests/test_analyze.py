"""`gp analyze`: traces of real sessions against the reference server, judged and reported like a run."""

from __future__ import annotations

import asyncio
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gp_lib import analyze, batch, cli, history
from gp_lib.auth import mint_token
from gp_lib.client import TracedConnection
from gp_lib.notebook import SECTION_TITLES, SECTIONS
from gp_lib.refserver import Faults, running_server
from gp_lib.trace import load_jsonl, save_jsonl, to_tables

SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
FIXTURE_HAR = Path(__file__).parent / "fixtures" / "har_malformed.har"
USERS = ("alice", "bob")


async def sessions(url: str, secret: str) -> list:
    """Every user connected at once, ready, one agent request each, listening until an agent_completed comes."""
    connections = [TracedConnection(url, attempt_id=f"session-{n}", token=mint_token(secret, user), user_id=user)
                   for n, user in enumerate(USERS)]
    await asyncio.gather(*(c.open() for c in connections))
    await asyncio.gather(*(c.wait_ready(5 * SCALE) for c in connections))
    for connection in connections:
        await connection.send({"type": "agent_request", "agent": "triage", "message": "Where can spend drop?"})
    await asyncio.gather(*(c.receive_until(lambda m: m["type"] == "agent_completed", 3 * SCALE)
                           for c in connections))
    await asyncio.gather(*(c.close() for c in connections))
    return [c.finish() for c in connections]


def captured(faults: Faults, path: Path) -> Path:
    """A toolkit JSONL trace of real sessions against a reference server with `faults`."""
    with running_server(faults) as server:
        records = asyncio.run(asyncio.wait_for(sessions(server.url, server.secret), 20 * SCALE))
    return save_jsonl(path, *to_tables(records))


def gp_analyze(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["analyze", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- real sessions ------------------------------------------------------------------------------------

def test_a_healthy_trace_finds_nothing_and_exits_0(tmp_path, capsys):
    trace = captured(Faults(), tmp_path / "healthy.jsonl")
    code, out, _ = gp_analyze(capsys, trace, "--out", tmp_path / "out")
    assert code == 0 and out.startswith("gp analyze: pass:")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["diagnosis"] == [] and summary["verdict"] == "pass"
    metrics = summary["scenarios"]["captured"]["metrics"]
    assert metrics["attempts"] == 2 and metrics["runs"] == 2 and metrics["complete_runs"] == 2
    assert all(c["passed"] for c in summary["scenarios"]["captured"]["checks"])


def test_a_trace_without_tool_events_is_diagnosed_as_missing_events(tmp_path, capsys):
    trace = captured(Faults.from_specs(["events"]), tmp_path / "omit_tools.jsonl")
    out_dir = tmp_path / "out"
    code, out, _ = gp_analyze(capsys, trace, "--out", out_dir)
    assert code == 1 and out.startswith("gp analyze: fail:")

    summary = json.loads((out_dir / "summary.json").read_text())
    assert set(summary) == {"run_id", "mode", "target", "started_at", "finished_at", "verdict", "scenarios",
                            "diagnosis"}
    assert summary["mode"] == "captured" and summary["target"] == str(trace)
    assert summary["diagnosis"][0]["root_cause"] == "missing_events"
    entry = summary["scenarios"]["captured"]
    assert entry["report"] == analyze.REPORT
    assert [c["name"] for c in entry["checks"] if not c["passed"]] == ["all_five_events"]
    failing = next(c for c in entry["checks"] if c["name"] == "all_five_events")
    assert failing["evidence"] == "0 of 2 agent runs showed all five events; 2 lacked tool_executing, tool_completed"

    report = (out_dir / analyze.REPORT).read_text()
    headings = [line[3:] for line in report.splitlines() if line.startswith("## ")]
    assert headings == [SECTION_TITLES[s] for s in SECTIONS]
    assert "1. **missing_events** (confidence" in report
    assert "![timeline](assets/captured-timeline.png)" in report and (out_dir / "assets/captured-timeline.png").stat().st_size
    assert f"gp analyze {trace} --out {out_dir}" in report

    junit = ET.parse(out_dir / "junit.xml").getroot()
    assert junit.get("failures") == "1" and junit.find(".//failure").text == failing["evidence"]
    attempts, frames = load_jsonl(out_dir / "traces" / "captured.jsonl")
    assert len(attempts) == 2 and len(frames) > 10


def test_events_delivered_to_another_user_fail_the_leak_check(tmp_path):
    trace = captured(Faults.from_specs(["events:misroute"]), tmp_path / "misroute.jsonl")
    analysis = analyze.analyze(analyze.load_trace(trace))
    checks = {c.name: c for c in analysis.checks}
    assert not checks["no_cross_user_events"].passed
    assert "arrived on another user's socket" in checks["no_cross_user_events"].evidence
    assert analysis.findings[0].root_cause == "missing_events"


def test_two_analyses_compare_like_runs(tmp_path, capsys):
    before = captured(Faults(), tmp_path / "before.jsonl")
    after = captured(Faults.from_specs(["events"]), tmp_path / "after.jsonl")
    assert gp_analyze(capsys, before, "--out", tmp_path / "a")[0] == 0
    assert gp_analyze(capsys, after, "--out", tmp_path / "b")[0] == 1
    assert history.load_run(tmp_path / "b").mode == "captured"
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "| captured | all_five_events | live | PASS | FAIL | broke |" in capsys.readouterr().out


# -- HAR and bad files --------------------------------------------------------------------------------

def test_a_malformed_har_is_analysed_with_its_problems_listed(tmp_path, capsys):
    code, _, err = gp_analyze(capsys, FIXTURE_HAR, "--out", tmp_path / "out")
    assert code == 1
    assert "gp analyze: warning: log.entries[2]: not an object" in err
    report = (tmp_path / "out" / analyze.REPORT).read_text()
    assert "**11 parts of the file could not be read**" in report
    assert "| kind | HAR |" in report and "| HAR entries | 7 |" in report
    assert "| 1 | ready_timeout | not recorded |  |" in report and "| 1 | auth_rejected | not recorded | HTTP 401 |" in report
    assert "[traces/captured.jsonl](traces/captured.jsonl)" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scenarios"]["captured"]["metrics"]["problems"] == 11
    evidence = {c["name"]: c["evidence"] for c in summary["scenarios"]["captured"]["checks"]}
    assert evidence["upgrades_accepted"] == "1 of 5 upgrades not answered with 101"
    assert evidence["no_1011_closes"] == "1 of 5 attempts closed 1011 (close code not recorded for 4)"
    assert {f["root_cause"] for f in summary["diagnosis"]} >= {"authentication"}


def test_default_out_is_a_new_run_under_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch, "REPORTS_DIR", tmp_path / "reports")
    code, out, _ = gp_analyze(capsys, FIXTURE_HAR)
    (run,) = (tmp_path / "reports").iterdir()
    assert code == 1 and run.name.endswith("-har_malformed") and str(run) in out
    assert history.find_runs(tmp_path / "reports")[0][0].run_id == run.name


def test_an_out_that_cannot_be_written_exits_2(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    code, out, err = gp_analyze(capsys, FIXTURE_HAR, "--out", tmp_path / "taken")
    assert code == 2 and f"cannot write {tmp_path / 'taken'}" in err


def test_a_trace_from_another_tool_may_lack_columns(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"record": "attempt", "attempt_id": "x", "t_open_ms": 3, "t_ready_ms": None,
                                "t_first_send_ms": None, "t_close_ms": 9, "close_code": 1011,
                                "handshake_status": 101}) + "\n")
    analysis = analyze.analyze(analyze.load_trace(path))
    assert analysis.metrics["closed_1011"] == 1 and analysis.findings
    assert not next(c for c in analysis.checks if c.name == "no_1011_closes").passed


@pytest.mark.parametrize("content, why", [
    (None, "cannot be read"),
    ("", "is empty, not a trace"),
    ("garbage\n", "not JSON"),
    ('{"some": "object"}\n', "record is neither 'attempt' nor 'frame'"),
    ('{"log": {"entries": 3}}', "not a HAR file"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ('{"log": {"entries": [{"_resourceType": "document"}]}}', "none of its 1 entries is a WebSocket"),
    ('{"record": "attempt", "attempt_id": "x"}\n', "attempt records lack the column 't_open_ms'"),
])
def test_an_unreadable_file_exits_2_naming_it(tmp_path, capsys, content, why):
    path = tmp_path / "trace.jsonl"
    if content is not None:
        path.write_text(content)
    code, out, err = gp_analyze(capsys, path, "--out", tmp_path / "out")
    assert code == 2 and out == "" and str(path) in err and why in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "is a PNG image, not a trace"),
    (b'{"run_id": "x", "verdict": "fail", "scenarios": {}}', "is a run's summary.json"),
    (b'{"cells": [], "nbformat": 4, "metadata": {}}', "is a Jupyter notebook"),
    (b'<?xml version="1.0"?>\n<testsuites/>', "is an XML file"),
    (b"# WebSocket race conditions: FAIL\n", "is Markdown text"),
])
def test_a_file_that_is_not_a_trace_says_what_it_is_and_what_was_expected(tmp_path, capsys, content, what):
    path = tmp_path / "picked-up.bin"
    path.write_bytes(content)
    code, out, err = gp_analyze(capsys, path, "--out", tmp_path / "out")
    assert code == 2 and out == "" and what in err
    assert "expected a toolkit JSONL trace" in err and "HAR saved from browser DevTools" in err


def test_a_run_folder_points_at_its_traces(tmp_path, capsys):
    (tmp_path / "run" / "traces").mkdir(parents=True)
    (tmp_path / "run" / "traces" / "race_conditions-live.jsonl").write_text("")
    code, _, err = gp_analyze(capsys, tmp_path / "run")
    assert code == 2 and "is a directory (a run folder: analyze one of its traces" in err
    assert "race_conditions-live.jsonl" in err


def _many_attempts(n: int) -> tuple:
    """`n` attempts, every other one closed 1011 by the server, the rest closed 1000 by the client."""
    from gp_lib.trace import AttemptRecord, frame_row

    records = []
    for k in range(n):
        failed = k % 2 == 0
        record = AttemptRecord(f"a{k:03d}", user_id=f"u{k}", t_open_ms=2.0, t_ready_ms=None if failed else 15.0,
                               t_first_send_ms=3.0, t_close_ms=20.0, close_code=1011 if failed else 1000,
                               close_reason="Internal error" if failed else "", closed_by="server" if failed else "client",
                               handshake_status=101, outcome="closed_1011" if failed else "ok", frames_sent=1)
        record.frames += [frame_row(record.attempt_id, 3.0, "sent", {"type": "ping"}),
                          frame_row(record.attempt_id, 20.0, "mark", None, kind="close")]
        records.append(record)
    return to_tables(records)


def test_a_large_trace_is_summarised_with_the_attempts_left_in_the_trace_file(tmp_path, capsys):
    trace = save_jsonl(tmp_path / "storm.jsonl", *_many_attempts(300))
    code, _, _ = gp_analyze(capsys, trace, "--out", tmp_path / "out")
    assert code == 1
    report = (tmp_path / "out" / analyze.REPORT).read_text()
    assert len(report.splitlines()) < 150  # a listing of every attempt made it 1,200 lines long
    assert "| a150 |" not in report
    assert "| 150 | closed_1011 | 1011 | Internal error |" in report and "| 150 | ok | 1000 |  |" in report
    assert "an evenly spaced sample of 40, as its title says" in report
    attempts, _ = load_jsonl(tmp_path / "out" / "traces" / "captured.jsonl")
    assert len(attempts) == 300


def test_the_timeline_tells_close_codes_apart_and_says_when_it_shows_a_sample():
    from gp_lib.plots.history import trace_timeline

    attempts, frames = _many_attempts(100)
    figure = trace_timeline(attempts, frames)
    title = figure.axes[0].get_title()
    assert title.endswith("(a sample: 40 of 100 connections, evenly spaced)")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "close 1011 (internal error) (20)" in labels and "close 1000 (normal) (20)" in labels
    rows = [tick.get_text().split()[0] for tick in figure.axes[0].get_yticklabels()]
    assert rows[0] == "a000" and rows[-1] == "a099" and len(set(rows)) == 40
    small, small_frames = _many_attempts(4)
    assert "sample" not in trace_timeline(small, small_frames).axes[0].get_title()
