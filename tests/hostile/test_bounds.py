"""Class 2, recursion and size: every decode, every field kept and every string shown is bounded.

Frames come from real hostile servers on loopback; files are real files.
"""

from __future__ import annotations

import json

import pytest
from hostile_servers import HostileServer, big_string, huge_frame, nested_json

from gp_lib import trace
from gp_lib.client import TracedConnection
from gp_lib.notebook import markdown_table

MEGA = 1_000_000


async def session(behaviour, **options) -> TracedConnection:
    with HostileServer(behaviour) as server:
        conn = TracedConnection(server.url, attempt_id="b1", open_timeout_s=5, ready_timeout_s=2, **options)
        if await conn.open():
            await conn.wait_ready()
            await conn.collect(0.5)
        await conn.close()
    conn.finish()
    return conn


async def test_nested_frames_are_invalid_frames_not_a_crash():
    conn = await session(nested_json)
    record = conn.record
    assert record.outcome == "closed_other" and record.close_code == 1000
    assert record.invalid_frames == 2 and record.frames_received == 3  # both nested frames kept as evidence
    assert trace.to_tables([record])[1]["payload"].str.len().max() < 20_000


async def test_an_oversize_frame_is_a_protocol_violation_never_ok():
    conn = await session(huge_frame)
    record = conn.record
    assert record.outcome == "protocol_error" and record.close_code == 1009
    assert "6000051 bytes exceeds" in record.error


async def test_a_megabyte_string_is_cut_in_every_table_field_with_its_length_kept():
    conn = await session(big_string)
    attempts, frames = trace.to_tables([conn.record])
    for column in ("user_id", "run_id", "payload"):
        longest = frames[column].dropna().astype(str)
        assert longest.str.len().max() <= trace.MAX_FIELD_CHARS[column] + 40, column
        assert longest.str.contains(str(MEGA)).any() or column == "payload", column
    assert attempts["user_id"].isna().all() or attempts["user_id"].str.len().max() <= 240


def test_a_megabyte_string_in_a_markdown_cell_is_cut_naming_its_length():
    text = markdown_table([{"evidence": "E" * MEGA}])
    assert len(text) < 2_000 and str(MEGA) in text


def test_compare_on_a_deeply_nested_summary_exits_2_with_one_line(tmp_path, run_gp):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text('{"scenarios": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_text(json.dumps({"verdict": "pass", "scenarios": {}}))
    result = run_gp("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.code == 2 and "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert "summary.json" in result.err


def test_analyze_on_a_deeply_nested_har_exits_2_with_one_line(tmp_path, run_gp):
    path = tmp_path / "deep.har"
    path.write_text('{"log": {"entries": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    result = run_gp("analyze", str(path), "--out", str(tmp_path / "out"))
    assert result.code == 2 and "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_analyze_on_a_jsonl_line_of_twenty_megabytes_exits_2_naming_the_line(tmp_path, run_gp):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"record": "frame", "payload": "x" * 20 * MEGA}) + "\n")
    result = run_gp("analyze", str(path), "--out", str(tmp_path / "out"))
    assert result.code == 2 and "Traceback" not in result.err and f"{path}:1" in result.err


def test_imports_over_their_size_limit_are_refused_naming_the_file(tmp_path, monkeypatch):
    from gp_lib import har, history

    monkeypatch.setattr(har, "MAX_HAR_BYTES", 1000)
    monkeypatch.setattr(history, "MAX_SUMMARY_BYTES", 1000)
    path = tmp_path / "big.har"
    path.write_text(json.dumps({"log": {"entries": ["x" * 2000]}}))
    with pytest.raises(ValueError, match="over the 1000-byte limit"):
        har.load_har(path)
    (tmp_path / "summary.json").write_text(json.dumps({"scenarios": {}, "pad": "x" * 2000}))
    with pytest.raises(history.RunError, match="over the 1000-byte limit"):
        history.load_run(tmp_path)
