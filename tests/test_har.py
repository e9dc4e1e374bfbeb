"""HAR import (gp_lib.har): the mapping onto the two tables, and malformed files reported, not fatal."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd
import pytest

from gp_lib import har

FIXTURE = Path(__file__).parent / "fixtures" / "har_malformed.har"
STARTED = "2026-11-30T12:00:00.000Z"
T0 = 1796040000.0   # the epoch seconds of STARTED


def token_for(sub: str) -> str:
    """An unsigned JWT-shaped token: the importer reads its claims, never checks or keeps it."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': sub, 'iss': 'netra-auth-service'})}.c2lnbmF0dXJl"


def message(kind: str, at_ms: float, data, opcode: int = 1) -> dict:
    return {"type": kind, "time": T0 + at_ms / 1000, "opcode": opcode,
            "data": data if isinstance(data, str) else json.dumps(data)}


def entry(messages: list, status: int = 101, url: str = "wss://chat.example/ws", headers: list | None = None) -> dict:
    return {"_resourceType": "websocket", "startedDateTime": STARTED,
            "request": {"method": "GET", "url": url, "headers": headers or []},
            "response": {"status": status}, "timings": {"blocked": 1.5, "dns": -1, "connect": 2, "send": 0.5,
                                                        "wait": 4},
            "_webSocketMessages": messages}


def imported(*entries: dict, tmp_path: Path) -> har.HarImport:
    path = tmp_path / "capture.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": list(entries)}}))
    return har.load_har(path)


READY = {"type": "connection_established", "data": {"user_id": "bob", "connection_id": "c1"}}


# -- the hand-written fixture with malformed entries ------------------------------------------------

def test_malformed_entries_are_reported_and_the_good_ones_still_import():
    result = har.load_har(FIXTURE)
    assert result.entries == 7 and result.websocket_entries == 5
    assert result.problems == [
        "log.entries[2]: not an object",
        "log.entries[3].request.url: missing",
        "log.entries[3].response.status: missing or not a number",
        "log.entries[3]._webSocketMessages[1].time: missing or not epoch seconds",
        "log.entries[3]._webSocketMessages[2].type: 'bogus' is none of send, receive, error",
        "log.entries[3]._webSocketMessages[3].data: missing or not text",
        "log.entries[3]._webSocketMessages[4].opcode: 'one' is not a number",
        "log.entries[3]._webSocketMessages[5].data: not JSON; kept as an invalid frame",
        "log.entries[3]._webSocketMessages[6]: not an object",
        "log.entries[3].startedDateTime: missing or not a date; times count from the first message",
        "log.entries[4]._webSocketMessages: not a list; no frames imported",
    ]
    attempts = result.attempts.set_index("attempt_id")
    assert list(attempts.index) == ["har-001", "har-003", "har-004", "har-005", "har-006"]
    assert attempts["outcome"].to_dict() == {"har-001": "ok", "har-003": "ok", "har-004": "ready_timeout",
                                             "har-005": "auth_rejected", "har-006": "closed_1011"}
    good = attempts.loc["har-001"]
    assert good["user_id"] == "alice" and good["url"] == "ws://127.0.0.1:8000/ws"
    assert (good["t_open_ms"], good["t_ready_ms"], good["t_first_send_ms"]) == (5.0, 20.0, 21.0)
    assert (good["frames_sent"], good["frames_received"]) == (1, 6)
    assert attempts.loc["har-003", "user_id"] == "bob" and attempts.loc["har-003", "invalid_frames"] == 1
    assert attempts.loc["har-005", "handshake_status"] == 401
    assert attempts.loc["har-006", "close_code"] == 1011
    assert attempts.loc["har-006", "close_reason"] == "Internal error: message handled before connection setup"


def test_the_fixture_tokens_are_read_but_never_kept():
    result = har.load_har(FIXTURE)
    fixture = json.loads(FIXTURE.read_text())["log"]["entries"][1]
    token = fixture["request"]["queryString"][0]["value"]
    offer = fixture["request"]["headers"][0]["value"]
    tables = result.attempts.to_json() + result.frames.to_json()
    assert token not in tables and offer not in tables and "eyJ" not in tables


def test_binary_frames_are_decoded_from_base64():
    frames = har.load_har(FIXTURE).frames
    carol = frames[(frames["attempt_id"] == "har-006") & (frames["direction"] == "received")]
    assert carol[["type", "user_id"]].values.tolist() == [["connection_established", "carol"]]


# -- the mapping --------------------------------------------------------------------------------------

def test_a_session_maps_onto_attempt_and_frames(tmp_path):
    result = imported(entry([
        message("receive", 12.5, READY),
        message("send", 13, {"type": "agent_request", "agent": "triage", "message": "hi"}),
        message("receive", 20, {"type": "agent_started", "run_id": "r1", "user_id": "bob"}),
        message("receive", 30, "", opcode=9),
        message("receive", 31, "", opcode=10),
        message("error", 40, "net::ERR_CONNECTION_RESET"),
    ]), tmp_path=tmp_path)
    attempt = result.attempts.iloc[0]
    assert attempt["scenario"] == "captured" and attempt["started_at"] == STARTED
    assert attempt["t_open_ms"] == 8.0   # blocked + connect + send + wait; -1 means not applicable
    assert (attempt["t_ready_ms"], attempt["t_first_send_ms"]) == (12.5, 13.0)
    assert attempt["user_id"] == "bob" and attempt["error"] == "net::ERR_CONNECTION_RESET"
    assert pd.isna(attempt["close_code"]) and attempt["outcome"] == "ok"
    rows = result.frames[["t_ms", "direction", "type"]].values.tolist()
    assert rows == [[8.0, "mark", "open"], [12.5, "received", "connection_established"], [12.5, "mark", "ready"],
                    [13.0, "sent", "agent_request"], [20.0, "received", "agent_started"], [30.0, "mark", "ping"],
                    [31.0, "mark", "pong"], [40.0, "mark", "error"]]
    assert result.frames.iloc[4]["run_id"] == "r1"


def test_without_a_start_time_the_first_message_is_time_zero(tmp_path):
    broken = entry([message("receive", 500, READY), message("send", 525, {"type": "ping"})])
    del broken["startedDateTime"]
    result = imported(broken, tmp_path=tmp_path)
    assert result.frames[result.frames["direction"] != "mark"]["t_ms"].tolist() == [0.0, 25.0]
    assert result.problems == ["log.entries[0].startedDateTime: missing or not a date; times count from the first "
                               "message"]


def test_the_user_comes_from_the_token_before_the_frames(tmp_path):
    in_offer = entry([message("receive", 1, READY)], headers=[
        {"name": "Sec-WebSocket-Protocol", "value": "chat, jwt." + base64.urlsafe_b64encode(
            token_for("alice").encode()).decode().rstrip("=")}])
    in_header = entry([message("receive", 1, READY)],
                      headers=[{"name": "Authorization", "value": f"Bearer {token_for('carol')}"}])
    in_url = entry([message("receive", 1, READY)], url=f"wss://chat.example/ws?access_token={token_for('dave')}#x")
    nowhere = entry([message("receive", 1, READY)])
    result = imported(in_offer, in_header, in_url, nowhere, tmp_path=tmp_path)
    assert result.attempts["user_id"].tolist() == ["alice", "carol", "dave", "bob"]
    assert result.attempts["url"].tolist() == ["wss://chat.example/ws"] * 4
    assert "eyJ" not in result.attempts.to_json() + result.frames.to_json()


@pytest.mark.parametrize("status, messages, outcome", [
    (403, [], "auth_rejected"),
    (0, [], "refused"),
    (502, [], "refused"),
    (101, [], "ready_timeout"),
    (101, [message("receive", 1, READY), message("receive", 5, "1000 bye", opcode=8)], "ok"),
    (101, [message("receive", 1, READY), message("receive", 5, "1001", opcode=8)], "closed_other"),
    (101, [message("receive", 5, "1008 Authentication failed", opcode=8)], "auth_rejected"),
    (101, [message("receive", 1, {"type": "error", "error_code": "AUTH_FAILED", "message": "bad token"})],
     "auth_rejected"),
    (101, [message("receive", 5, base64.b64encode((1011).to_bytes(2, "big") + b"Factory initialization failed")
                   .decode(), opcode=8)], "closed_1011"),
])
def test_outcome_is_inferred_plainly(tmp_path, status, messages, outcome):
    result = imported(entry(messages, status=status), tmp_path=tmp_path)
    assert result.attempts.iloc[0]["outcome"] == outcome


def test_a_close_payload_gives_code_and_reason(tmp_path):
    payload = base64.b64encode((1011).to_bytes(2, "big") + b"Factory initialization failed").decode()
    result = imported(entry([message("receive", 5, payload, opcode=8)]), tmp_path=tmp_path)
    attempt = result.attempts.iloc[0]
    assert (attempt["close_code"], attempt["close_reason"], attempt["t_close_ms"]) == (
        1011, "Factory initialization failed", 5.0)


def test_entries_that_are_not_websockets_are_skipped_silently(tmp_path):
    page = {"_resourceType": "document", "startedDateTime": STARTED, "request": {"url": "https://chat.example/"},
            "response": {"status": 200}}
    result = imported(page, entry([message("receive", 1, READY)]), tmp_path=tmp_path)
    assert result.problems == [] and result.entries == 2 and result.websocket_entries == 1
    assert result.attempts["attempt_id"].tolist() == ["har-001"]


@pytest.mark.parametrize("change, problem", [
    ({"startedDateTime": "1e20"}, "log.entries[0].startedDateTime: missing or not a date"),
    ({"startedDateTime": 1e300}, "log.entries[0].startedDateTime: missing or not a date"),
    ({"startedDateTime": None, "_webSocketMessages": [{"type": "receive", "time": float("inf"), "data": "{}"}]},
     "log.entries[0]._webSocketMessages[0].time: missing or not epoch seconds"),
    ({"_webSocketMessages": [{"type": "receive", "time": 10 ** 400, "data": "{}"}]},
     "log.entries[0]._webSocketMessages[0].time: missing or not epoch seconds"),
    ({"request": {"url": "wss://[::1/ws"}}, "log.entries[0].request.url: not a URL (Invalid IPv6 URL)"),
    ({"response": {"status": 10 ** 30}}, f"log.entries[0].response.status: {10 ** 30} is not an HTTP status"),
    ({"_webSocketMessages": [{"type": "receive", "time": T0, "data": "[" * 100_000 + "]" * 100_000}]},
     "log.entries[0]._webSocketMessages[0].data: "),
])
def test_values_out_of_range_are_problems_not_crashes(tmp_path, change, problem):
    result = imported({**entry([message("receive", 1, READY)]), **change}, tmp_path=tmp_path)
    assert problem in "\n".join(result.problems)
    assert len(result.attempts) == 1 and result.attempts.iloc[0]["outcome"]


@pytest.mark.parametrize("text, why", [
    ("not json at all", "not a readable JSON file"),
    ("[" * 100_000 + "]" * 100_000, "not a readable JSON file"),
    (json.dumps({"log": {"entries": {}}}), "not a HAR file"),
    (json.dumps([1, 2]), "not a HAR file"),
])
def test_a_file_that_is_no_har_raises_naming_it(tmp_path, text, why):
    path = tmp_path / "bad.har"
    path.write_text(text)
    with pytest.raises(ValueError, match=why) as raised:
        har.load_har(path)
    assert str(path) in str(raised.value)
