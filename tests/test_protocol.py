"""Message shapes: every dialect of PROTOCOL.md sections 3, 4 and 7 is read the same way."""

import json

import pytest

from gp_lib import protocol

ENVELOPED = {"type": "tool_executing", "data": {"tool_name": "cost_analyzer", "run_id": "r1"}, "timestamp": 1726.1,
             "server_id": None}
FLAT = {"type": "tool_executing", "tool_name": "cost_analyzer", "run_id": "r1", "timestamp": 1726.1}
MIXED = {"type": "tool_executing", "run_id": "r1", "tool_name": "cost_analyzer", "data": {"timestamp": "1970-01-01T00:28:46.1Z"}}


@pytest.mark.parametrize("message", [ENVELOPED, FLAT, MIXED], ids=["enveloped", "flat", "mixed"])
def test_fields_are_read_from_every_layout(message):
    assert protocol.field(message, "tool_name") == "cost_analyzer"
    assert protocol.field(message, "run_id") == "r1"
    assert protocol.event_time(message) == pytest.approx(1726.1)


def test_top_level_wins_over_data():
    assert protocol.field({"type": "x", "user_id": "top", "data": {"user_id": "inner"}}, "user_id") == "top"
    assert protocol.field({"type": "x", "data": {"user_id": "inner"}}, "user_id") == "inner"
    assert protocol.field({"type": "x", "payload": {"content": "hi"}}, "content") == "hi"
    assert protocol.field({"type": "x"}, "missing", "default") == "default"


@pytest.mark.parametrize("value, expected", [
    (1726.5, 1726.5),
    (1_700_000_000_123, 1_700_000_000.123),        # milliseconds
    ("2026-11-30T12:00:00Z", 1796040000.0),
    ("2026-11-30T12:00:00+00:00", 1796040000.0),
    ("2026-11-30T12:00:00", 1796040000.0),           # naive means UTC
    ("1726.5", 1726.5),
    ("yesterday", None), ("", None), (None, None), (True, None), (float("nan"), None),
])
def test_timestamps(value, expected):
    result = protocol.parse_timestamp(value)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("message", [
    {"type": "connection_established", "data": {"connection_id": "c"}},
    {"type": "system_message", "data": {"event": "connection_established", "connection_ready": True}},
    {"type": "system_message", "event": "connection_established"},
    {"type": "connection_ready"},
    {"type": "handshake_complete"},
])
def test_readiness_forms(message):
    assert protocol.is_ready_marker(message)


@pytest.mark.parametrize("message", [
    {"type": "system_message", "data": {"event": "maintenance"}},
    {"type": "handshake_response", "thread_id": "t"},
    {"type": "pong"},
])
def test_not_readiness(message):
    assert not protocol.is_ready_marker(message)


def test_handshake_reply_echoes_ids_from_any_layout():
    assert protocol.handshake_reply({"type": "handshake_response", "data": {"thread_id": "t1", "run_id": "r1"}}) == \
        {"type": "handshake_acknowledged", "thread_id": "t1", "run_id": "r1"}
    assert protocol.handshake_reply({"type": "handshake_response", "thread_id": "t2"}) == \
        {"type": "handshake_acknowledged", "thread_id": "t2"}
    assert protocol.handshake_reply({"type": "connection_established"}) is None


@pytest.mark.parametrize("raw, problem", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON but not an object"),
    ('{"data": {}}', "no type"),
    ('{"type": 7}', "no type"),
    (b"\xff\xfe", "binary frame, not UTF-8"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
])
def test_bad_frames_become_evidence(raw, problem):
    message = protocol.decode(raw)
    assert message["type"] == protocol.INVALID_TYPE
    assert message.problem == problem and not message.valid
    assert len(message.raw) <= protocol.MAX_RAW_CHARS + 40 and message.raw_length == len(raw)


def test_good_frame_decodes():
    assert protocol.decode(json.dumps({"type": "pong"})) == {"type": "pong"}
    message = protocol.decode(b'{"type": "pong"}')
    assert message == {"type": "pong"} and message.valid and message.raw == '{"type": "pong"}'


def test_a_frame_over_the_size_limit_is_refused_not_decoded():
    raw = json.dumps({"type": "pong", "pad": "x" * protocol.MAX_FRAME_BYTES})
    message = protocol.decode(raw)
    assert message["type"] == protocol.INVALID_TYPE and "over the" in message.problem
    assert message.raw_length == len(raw) and len(message.raw) < protocol.MAX_RAW_CHARS + 100


def test_long_strings_wide_containers_and_deep_nesting_are_cut_with_a_marker():
    deep: dict = {"leaf": 1}
    for _ in range(protocol.MAX_DEPTH + 5):
        deep = {"d": deep}
    raw = json.dumps({"type": "agent_completed", "result": "y" * 100_000, "items": list(range(1000)), "deep": deep})
    message = protocol.decode(raw)
    assert message.valid and message.cut and message["type"] == "agent_completed"
    assert len(message["result"]) < protocol.MAX_STRING_CHARS + 50 and "100000 characters" in message["result"]
    assert len(message["items"]) == protocol.MAX_ITEMS + 1 and "1000 items" in message["items"][-1]
    inner = message["deep"]
    for _ in range(protocol.MAX_DEPTH - 1):
        inner = inner["d"]
    assert isinstance(inner, str) and "nested deeper" in inner
    assert message.raw_length == len(raw) and len(message.raw) <= protocol.MAX_RAW_CHARS + 40
    assert protocol.decode(message.raw.split("…[cut")[0]).problem == "not JSON"  # evidence, cut: said so


def test_long_keys_are_cut_too():
    message = protocol.decode(json.dumps({"type": "agent_started", "k" * 100_000: 1}))
    assert message.valid and message.cut
    assert max(len(key) for key in message) < protocol.MAX_KEY_CHARS + 50


@pytest.mark.parametrize("frame", [float("nan"), 3, ["a"], {"type": "x"}])
def test_what_is_not_text_is_an_empty_frame_not_an_exception(frame):
    assert protocol.decode(frame).problem == "empty frame"
    assert protocol.load_json(frame) == (None, "not text", False)


def test_an_event_wrapped_in_data_type_is_that_event():
    wrapped = {"type": "agent_progress", "run_id": "r1", "data": {"type": "agent_thinking", "thought": "..."}}
    message = protocol.decode(json.dumps(wrapped))
    assert message["type"] == "agent_thinking" and message.outer_type == "agent_progress"
    assert protocol.field(message, "run_id") == "r1"
    status = protocol.decode(json.dumps({"type": "system_message", "data": {"type": "status", "text": "hi"}}))
    assert status["type"] == "system_message" and status.outer_type is None
    unhashable = protocol.decode(json.dumps({"type": "agent_progress", "data": {"type": [1]}}))
    assert unhashable.valid and unhashable["type"] == "agent_progress" and unhashable.outer_type is None


def test_a_row_decodes_from_its_payload_else_from_its_columns():
    row = {"type": "agent_started", "run_id": "r1", "user_id": "u1", "thread_id": None, "tool_name": float("nan"),
           "payload": json.dumps({"type": "agent_started", "run_id": "r1", "data": {"user_id": "u1"}})}
    assert protocol.message_from_row(row)["data"] == {"user_id": "u1"}
    assert protocol.message_from_row({**row, "payload": "<redacted"}) == \
        {"type": "agent_started", "run_id": "r1", "user_id": "u1"}
    assert protocol.message_from_row({"type": "close", "payload": '{"code": 1000}'})["type"] == protocol.INVALID_TYPE
    assert protocol.message_from_row({**row, "payload": float("nan")})["run_id"] == "r1"  # a JSONL row without payload


def test_error_forms_and_user_facing_text():
    plain = {"type": "error", "message": "The agent service is temporarily unavailable. Please try again."}
    rich = {"type": "error_message", "error_code": "SERVICE_UNAVAILABLE", "error_message": "Agent busy",
            "details": {}, "recovery_suggestions": ["Please try again in a minute"]}
    technical = {"type": "error", "message": "Service not ready: llm_service"}
    assert all(protocol.is_error(m) for m in (plain, rich, technical))
    assert protocol.is_graceful_text(protocol.message_text(plain))
    assert protocol.is_graceful_text(protocol.message_text(rich))
    assert not protocol.is_graceful_text(protocol.message_text(technical))
    assert protocol.error_code(rich) == "SERVICE_UNAVAILABLE"


def test_fallback_completion():
    assert protocol.is_fallback_completion({"type": "agent_completed", "data": {"result": "A fallback answered: ..."}})
    assert protocol.is_fallback_completion({"type": "agent_completed", "final_response": "Degraded mode reply"})
    assert not protocol.is_fallback_completion({"type": "agent_completed", "data": {"result": "Cut costs by 12%"}})
    assert not protocol.is_fallback_completion({"type": "error", "message": "fallback"})


def test_auth_failure_frames():
    assert protocol.is_auth_failure({"type": "error", "error_code": "AUTH_FAILED", "message": "expired"})
    assert protocol.is_auth_failure({"type": "error_message", "data": {"error_code": "TOKEN_EXPIRED"}})
    assert not protocol.is_auth_failure({"type": "error", "error_code": "RATE_LIMITED"})


def _frame(direction, kind, t_ms, **message):
    return {"direction": direction, "type": kind, "t_ms": t_ms,
            "payload": json.dumps({"type": kind, **message}) if kind else ""}


@pytest.mark.parametrize("received, unanswered", [
    ([], 2),                                                            # nothing came back
    ([_frame("received", "heartbeat", 30.0)], 2),                       # a heartbeat answers nothing
    ([_frame("received", "connection_established", 30.0)], 2),         # nor a readiness marker after the send
    ([_frame("received", "agent_started", 5.0)], 2),                    # nor anything before the first send
    ([_frame("received", "agent_started", 30.0)], 0),
    ([_frame("received", "error", 30.0, message="bad")], 0),            # an error is an answer
    ([_frame("received", "system_message", 30.0, data={"event": "connection_established"})], 2),
], ids=["silence", "heartbeat", "marker", "before", "event", "error", "wrapped-marker"])
def test_unanswered_sends_are_the_sends_nothing_answered(received, unanswered):
    sent = [_frame("sent", "user_message", 20.0), _frame("sent", "handshake_acknowledged", 10.0),
            _frame("sent", "ping", 25.0)]
    result = protocol.unanswered_sends(sent + received)
    assert len(result) == unanswered
    assert [f["type"] for f in result] == ["user_message", "ping"][:unanswered]  # first sent first


def test_unanswered_sends_without_a_send_or_a_readable_time():
    assert protocol.unanswered_sends([_frame("received", "agent_started", 1.0)]) == []
    assert protocol.unanswered_sends([_frame("sent", "handshake_acknowledged", 1.0)]) == []
    untimed = [_frame("sent", "user_message", float("nan")), _frame("received", "agent_started", 5.0)]
    assert len(protocol.unanswered_sends(untimed)) == 1   # no time to put an answer after


def test_unanswered_sends_read_a_message_the_caller_already_decoded():
    """The diagnosis passes the messages it decoded once; a row without one is decoded from its payload."""
    sent = _frame("sent", "user_message", 20.0)
    decoded_marker = {"direction": "received", "type": "system_message", "t_ms": 30.0, "payload": "",
                      "message": protocol.decode(json.dumps({"type": "system_message",
                                                             "data": {"event": "connection_established"}}))}
    assert len(protocol.unanswered_sends([sent, decoded_marker])) == 1   # the marker, read from `message`
    assert protocol.unanswered_sends([sent, {**decoded_marker, "message": float("nan")}]) == []  # no message: the row
