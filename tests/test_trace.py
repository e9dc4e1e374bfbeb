"""The attempts and frames tables: columns, types, JSONL round trip, redaction."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from gp_lib import auth, trace
from gp_lib.redact import register_secret
from gp_lib.trace import ATTEMPT_COLUMNS, FRAME_COLUMNS, AttemptRecord, frame_row, load_jsonl, save_jsonl, to_tables


def _record(attempt_id="a1", **overrides):
    record = AttemptRecord(attempt_id=attempt_id, user_id="u1", scenario="race_conditions", arm="faulty",
                           condition="delay=0ms", t_open_ms=1.5, close_code=1011, close_reason="Internal error",
                           closed_by="server", outcome="closed_1011", extra={"send_delay_ms": 0.0, "concurrency": 5})
    record.frames.append(frame_row(attempt_id, 2.0, "received", {"type": "agent_started", "data": {
        "run_id": "r1", "user_id": "u1", "thread_id": "t1"}}))
    record.frames.append(frame_row(attempt_id, 3.0, "mark", None, kind="close"))
    for name, value in overrides.items():
        setattr(record, name, value)
    return record


def test_tables_have_the_design_columns_then_extras():
    attempts, frames = to_tables([_record("a1"), _record("a2")])
    assert list(attempts.columns[:len(ATTEMPT_COLUMNS)]) == list(ATTEMPT_COLUMNS)
    assert {"send_delay_ms", "concurrency"} <= set(attempts.columns)
    assert list(frames.columns) == list(FRAME_COLUMNS)
    assert str(attempts["close_code"].dtype) == "Int64"
    assert frames.loc[0, "run_id"] == "r1" and frames.loc[0, "thread_id"] == "t1"


def test_empty_tables_still_have_columns():
    attempts, frames = to_tables([])
    assert list(attempts.columns) == list(ATTEMPT_COLUMNS) and len(attempts) == 0
    assert list(frames.columns) == list(FRAME_COLUMNS)


def test_jsonl_round_trip(tmp_path):
    attempts, frames = to_tables([_record("a1"), _record("a2", close_code=None, outcome="refused",
                                                        handshake_status=None, t_open_ms=None)])
    path = save_jsonl(tmp_path / "traces" / "x.jsonl", attempts, frames)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["record"] for line in lines] == ["attempt"] * 2 + ["frame"] * 4
    assert lines[1]["close_code"] is None and lines[1]["t_open_ms"] is None
    loaded_attempts, loaded_frames = load_jsonl(path)
    pd.testing.assert_frame_equal(loaded_attempts[attempts.columns], attempts, check_dtype=False)
    assert loaded_frames["type"].tolist() == frames["type"].tolist()


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"record": "attempt", "attempt_id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        load_jsonl(path)
    path.write_text('{"record": "session"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: record is neither"):
        load_jsonl(path)
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON \(nested too deeply\)"):
        load_jsonl(path)


def test_tokens_never_reach_a_row():
    token = auth.mint_token("trace-test-secret-0123456789", "u1")
    record = _record(close_reason=f"bad token {token}", error=f"Authorization: Bearer {token}")
    record.frames.append(frame_row("a1", 4.0, "received", {"type": "echo", "token": token}))
    attempts, frames = to_tables([record])
    text = attempts.to_json() + frames.to_json()
    assert token not in text and auth.subprotocol_offer(token) not in text
    assert "<redacted>" in frames.iloc[-1]["payload"]


def test_jsonl_without_a_timing_column_names_file_and_column(tmp_path):
    path = tmp_path / "older.jsonl"
    path.write_text('{"record": "attempt", "attempt_id": "a", "outcome": "ok", "t_open_ms": 1.0}\n')
    with pytest.raises(ValueError, match=r"older.jsonl: attempt records lack the column 't_ready_ms'"):
        load_jsonl(path)


def test_tokens_in_frame_id_columns_are_redacted():
    token = auth.mint_token("trace-test-secret-0123456789", "u1")
    row = frame_row("a1", 1.0, "received", {"type": "echo", "user_id": token, "data": {"thread_id": f"t-{token}"}})
    assert token not in json.dumps(row) and row["user_id"] == "<redacted>"


@pytest.mark.parametrize("secret", ['quote"and\\backslash-0123', "s\u00e9cret-non-ascii-0123"])
def test_a_secret_that_json_escapes_is_redacted_from_payloads(secret):
    register_secret(secret)
    row = frame_row("a1", 1.0, "sent", {"type": "echo", "config": {"jwt_secret": secret}})
    received = frame_row("a1", 2.0, "received", {}, raw=json.dumps({"type": "error", "message": secret},
                                                                    ensure_ascii=False))
    assert "<redacted>" in row["payload"] and "<redacted>" in received["payload"]
    for text in (secret, json.dumps(secret)[1:-1]):
        assert text not in row["payload"] and text not in received["payload"]


@pytest.mark.parametrize("fields, words", [
    ({"outcome": ["x"]}, "field 'outcome' holds a list"),
    ({"attempt_id": {"x": 1}}, "field 'attempt_id' holds a dict"),
    ({"close_code": 1e30}, "field 'close_code' must be a whole number"),
    ({"close_code": 1000.5}, "field 'close_code' must be a whole number"),
    ({"close_code": float("inf")}, "field 'close_code' must be a whole number"),
    ({"handshake_status": float("nan")}, "field 'handshake_status' must be a whole number"),
    ({"t_open_ms": "abc"}, "field 't_open_ms' must be a number"),
])
def test_odd_field_values_name_file_line_and_field(tmp_path, fields, words):
    good = {"record": "attempt", "attempt_id": "a", "outcome": "ok", "t_open_ms": 1.0, "t_ready_ms": None,
            "t_first_send_ms": None, "t_close_ms": None, "close_code": 1000, "handshake_status": 101}
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **fields}) + "\n")
    with pytest.raises(ValueError, match=f"odd.jsonl:2: {words}"):
        load_jsonl(path)


def test_an_over_long_line_is_refused_after_reading_no_more_than_the_limit(tmp_path, monkeypatch):
    """The limit bounds what is read, not just what is parsed: a multi-GB line never reaches memory."""
    monkeypatch.setattr(trace, "MAX_JSONL_LINE", 100)
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"record": "frame", "attempt_id": "a"}) + "\n" + "x" * 10_000 + "\n")
    taken = []

    class Counting(io.StringIO):
        def readline(self, size=-1):
            taken.append(len(line := super().readline(size)))
            return line

    monkeypatch.setattr(trace, "Path", lambda p: SimpleNamespace(open=lambda **_: Counting(Path(p).read_text())))
    with pytest.raises(ValueError, match="long.jsonl:2: a line over the 100-character limit"):
        load_jsonl(path)
    assert max(taken) == 101
