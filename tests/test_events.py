"""Event-sequence validation on hand-built frames, in every dialect of PROTOCOL.md section 3.

Each dialect is built the way the reference server words it (enveloped,
flat, mixed; float or ISO timestamps), and the frames tables go through
`trace.frame_row`, as the client records them.
"""

from datetime import datetime, timezone

import pandas as pd
import pytest

from gp_lib import events
from gp_lib.trace import frame_row

T0 = 1_790_000_000.0
HEALTHY = [("agent_started", {}), ("agent_thinking", {}), ("tool_executing", {"tool_name": "cost_analyzer"}),
           ("tool_completed", {"tool_name": "cost_analyzer", "result": {"ok": 1}}), ("agent_thinking", {}),
           ("agent_completed", {"result": "Save 18% by rightsizing."})]
OMIT_TOOLS = [HEALTHY[0], HEALTHY[1], HEALTHY[4], HEALTHY[5]]
OUT_OF_ORDER = [HEALTHY[0], HEALTHY[1], HEALTHY[2], HEALTHY[5], HEALTHY[3], HEALTHY[4]]
TOP_LEVEL_IN_MIXED = ("run_id", "user_id", "thread_id", "agent_name", "tool_name")


def event(kind, layout="enveloped", *, step=0, iso=False, run_id="r1", user_id="u1", thread_id="t1", **extra):
    """One agent event as a server of the given dialect words it; `step` x 20 ms after T0."""
    stamp = T0 + step * 0.02
    stamp = datetime.fromtimestamp(stamp, timezone.utc).isoformat() if iso else stamp
    fields = {k: v for k, v in dict(run_id=run_id, user_id=user_id, thread_id=thread_id, agent_name="cost_optimizer",
                                    **extra).items() if v is not None}
    if layout == "flat":
        return {"type": kind, **fields, "timestamp": stamp}
    if layout == "mixed":
        top = {k: v for k, v in fields.items() if k in TOP_LEVEL_IN_MIXED}
        return {"type": kind, **top, "data": {k: v for k, v in fields.items() if k not in top}, "timestamp": stamp}
    return {"type": kind, "data": fields, "timestamp": stamp, "server_id": None}


def run(plan, layout="enveloped", **fields):
    return [event(kind, layout, step=n, **{**extra, **fields}) for n, (kind, extra) in enumerate(plan)]


LAYOUTS = [("enveloped", False), ("flat", False), ("mixed", True), ("flat", True)]
LAYOUT_IDS = ["enveloped", "flat", "mixed-iso", "flat-iso"]


# -- validate_run -------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, iso", LAYOUTS, ids=LAYOUT_IDS)
def test_a_healthy_run_is_complete_and_clean_in_every_dialect(layout, iso):
    report = events.validate_run(run(HEALTHY, layout, iso=iso), "u1")
    assert report.complete and report.clean and report.in_order and report.tools_closed
    assert report.missing == () and report.problems == () and report.notes == ()
    assert (report.run_id, report.owner, report.thread_id) == ("r1", "u1", "t1")
    assert report.types == tuple(kind for kind, _ in HEALTHY)
    assert report.tool_calls == 1 and report.ending == "completed"
    assert report.foreign_events == 0 and not report.foreign
    assert report.server_span_ms == pytest.approx(100.0, abs=0.01)


@pytest.mark.parametrize("layout, iso", LAYOUTS, ids=LAYOUT_IDS)
def test_skipped_tool_events_are_missing_but_break_no_rule(layout, iso):
    report = events.validate_run(run(OMIT_TOOLS, layout, iso=iso), "u1")
    assert report.missing == ("tool_executing", "tool_completed")
    assert not report.complete and not report.clean
    assert report.problems == () and report.in_order and report.tools_closed and report.tool_calls == 0


@pytest.mark.parametrize("layout, iso", LAYOUTS, ids=LAYOUT_IDS)
def test_events_after_agent_completed_break_the_order(layout, iso):
    report = events.validate_run(run(OUT_OF_ORDER, layout, iso=iso), "u1")
    assert report.complete and not report.clean and not report.in_order
    assert report.tools_closed  # the tool call is closed, only too late
    assert report.problems == ("2 events after agent_completed (tool_completed, agent_thinking): "
                               "agent_completed must be last",)


def test_agent_started_must_be_first_and_once_and_agent_completed_once():
    late_start = events.validate_run(run([HEALTHY[1], *HEALTHY]), "u1")
    assert "agent_started is not first: agent_thinking came before it" in late_start.problems
    twice = events.validate_run(run([HEALTHY[0], *HEALTHY, HEALTHY[5]]), "u1")
    assert "agent_started came 2 times: need exactly one" in twice.problems
    assert "agent_completed came 2 times: need exactly one" in twice.problems
    assert not twice.in_order and twice.complete


def test_every_tool_call_must_be_closed_by_the_same_tool():
    unclosed = events.validate_run(run([HEALTHY[0], HEALTHY[2], HEALTHY[5]]), "u1")
    assert unclosed.problems == ("tool_executing of cost_analyzer never closed by a tool_completed",)
    assert not unclosed.tools_closed and unclosed.in_order and unclosed.tool_calls == 1
    other_tool = [HEALTHY[0], HEALTHY[2], ("tool_completed", {"tool_name": "billing_reader"}), HEALTHY[5]]
    mismatched = events.validate_run(run(other_tool), "u1")
    assert "tool_executing of cost_analyzer never closed by a tool_completed" in mismatched.problems
    assert "tool_completed of billing_reader without a tool_executing before it" in mismatched.problems
    backwards = events.validate_run(run([HEALTHY[0], HEALTHY[3], HEALTHY[2], HEALTHY[5]]), "u1")
    assert not backwards.tools_closed
    twice_open = events.validate_run(run([HEALTHY[0], HEALTHY[2], HEALTHY[2], HEALTHY[3], HEALTHY[5]]), "u1")
    assert twice_open.problems == ("tool_executing of cost_analyzer never closed by a tool_completed",)
    assert twice_open.tool_calls == 2


def test_one_run_id_throughout():
    mixed_ids = run(HEALTHY)
    mixed_ids[3] = event("tool_completed", step=3, run_id="r2", tool_name="cost_analyzer")
    report = events.validate_run(mixed_ids, "u1")
    assert report.problems == ("events carry 2 run_ids (r1, r2): need one per run",)


@pytest.mark.parametrize("layout", ["enveloped", "flat", "mixed"])
def test_another_users_events_are_a_cross_user_leak(layout):
    report = events.validate_run(run(HEALTHY, layout, user_id="u2"), "u1")
    assert report.foreign and report.owner == "u2"
    assert report.foreign_events == 6 and report.foreign_users == ("u2",)
    assert report.problems == ("6 of 6 events carry another user's user_id (u2): a cross-user leak",)
    one_stray = run(HEALTHY)
    one_stray[2] = event("tool_executing", layout, step=2, user_id="u3", tool_name="cost_analyzer")
    report = events.validate_run(one_stray, "u1")
    assert report.owner == "u1" and not report.foreign and report.foreign_events == 1


def test_behind_a_server_that_masks_ids_the_toolkits_users_stay_apart():
    """The real backend names the socket's user by its first 8 characters: the concurrent users' names
    differ there, so one's events on another's socket are still a leak, and a socket's own are its own."""
    from gp_lib.scenarios.missing_events import concurrent_user_name

    names = [concurrent_user_name(i) for i in range(12)]
    masked = [name[:8] + "..." for name in names]
    assert len(set(masked)) == len(names)
    leaked = events.validate_run(run(HEALTHY, "mixed", user_id=names[1]), names[0], server_user=masked[0])
    assert leaked.foreign and leaked.foreign_events == 6
    own = events.validate_run(run(HEALTHY, "mixed", user_id=masked[0]), names[0], server_user=masked[0])
    assert not own.foreign and own.foreign_events == 0


def test_events_without_user_id_are_not_judged_as_leaks():
    report = events.validate_run(run(HEALTHY, "flat", user_id=None), "u1")
    assert report.clean and report.owner is None and report.foreign_events == 0
    assert events.validate_run(run(HEALTHY), None).foreign_events == 0


def test_a_run_ending_in_agent_error_or_a_fallback_is_noted():
    failed = run([HEALTHY[0], HEALTHY[1], ("agent_error", {"error_message": "LLM quota exceeded"})])
    report = events.validate_run(failed, "u1")
    assert report.ending == "agent_error" and report.notes == ("ended with agent_error: LLM quota exceeded",)
    assert "agent_completed" in report.missing
    late = events.validate_run(failed + [event("agent_thinking", step=9)], "u1")  # a straggler after the error
    assert late.ending == "agent_error" and late.notes == ("ended with agent_error: LLM quota exceeded",)
    fallback = run([HEALTHY[0], ("agent_completed", {"result": "A fallback answered: the agent service is "
                                                             "temporarily unavailable."})])
    report = events.validate_run(fallback, "u1")
    assert report.ending == "fallback" and report.notes[0].startswith("completed through a fallback: A fallback")
    flagged = run([HEALTHY[0], ("agent_completed", {"result": "done", "fallback": True})], "flat")
    assert events.validate_run(flagged, "u1").ending == "fallback"


def test_an_unfinished_run_and_an_empty_one():
    report = events.validate_run(run(HEALTHY[:3]), "u1")
    assert report.ending == "unfinished" and report.missing == ("tool_completed", "agent_completed")
    assert report.notes == ("no agent_completed or agent_error: the run never ended on this socket",)
    assert not report.tools_closed
    empty = events.validate_run([], "u1")
    assert empty.missing == events.EVENT_NAMES and empty.ending == "unfinished" and empty.server_span_ms is None


def test_frames_that_are_not_agent_events_are_ignored():
    noise = [{"type": "pong"}, {"type": "connection_established", "data": {}}, "not a dict", {"no": "type"}]
    report = events.validate_run([noise[0], *run(HEALTHY), *noise[1:]], "u1")
    assert report.clean and len(report.types) == 6


# -- frames tables --------------------------------------------------------------------------------

def frames(*rows):
    """A frames table from `(attempt_id, t_ms, direction, message)` rows, as the client records them."""
    return pd.DataFrame([frame_row(a, t, d, m) for a, t, d, m in rows])


def received(attempt_id, messages, t0=10.0, gap=20.0):
    return [(attempt_id, t0 + n * gap, "received", m) for n, m in enumerate(messages)]


def request(attempt_id, t_ms, thread_id="t1"):
    return (attempt_id, t_ms, "sent", {"type": "agent_request", "agent": "cost_optimizer", "thread_id": thread_id})


ATTEMPTS = pd.DataFrame({"attempt_id": ["a1", "a2"], "user_id": ["u1", "u2"], "condition": ["x", "y"]})


@pytest.mark.parametrize("layout, iso", LAYOUTS, ids=LAYOUT_IDS)
def test_run_table_has_one_row_per_run_per_socket(layout, iso):
    table = events.run_table(frames(
        request("a1", 1.0), *received("a1", run(HEALTHY, layout, iso=iso)),
        request("a1", 200.0, "t2"), *received("a1", run(OMIT_TOOLS, layout, iso=iso, run_id="r2"), t0=205.0),
        request("a2", 3.0), *received("a2", run(HEALTHY, layout, iso=iso, run_id="r3", user_id="u2")),
    ), ATTEMPTS)
    assert list(table.columns) == events.RUN_COLUMNS
    assert list(table["run_key"]) == ["r1", "r2", "r3"]
    assert list(table["socket_user"]) == ["u1", "u1", "u2"]
    assert list(table["complete"]) == [True, False, True]
    assert list(table["missing"]) == ["", "tool_executing, tool_completed", ""]
    assert list(table["agent_thinking"]) == [2, 2, 2] and list(table["tool_executing"]) == [1, 0, 1]
    assert list(table["t_request_ms"]) == [1.0, 200.0, 3.0]
    assert list(table["t_first_ms"]) == [10.0, 205.0, 10.0] and list(table["t_last_ms"]) == [110.0, 265.0, 110.0]
    assert table.loc[0, "sequence"].startswith("agent_started > agent_thinking > tool_executing")
    assert not table["foreign"].any() and list(table["ending"]) == ["completed"] * 3


def test_late_events_of_a_run_stay_with_their_run():
    late = run(OUT_OF_ORDER)
    second = run(HEALTHY, run_id="r2", thread_id="t2")
    interleaved = late[:4] + second[:2] + late[4:] + second[2:]
    table = events.run_table(frames(request("a1", 1.0), *received("a1", interleaved)), {"a1": "u1"})
    assert list(table["run_key"]) == ["r1", "r2"]
    assert list(table["events"]) == [6, 6]
    assert list(table["in_order"]) == [False, True]
    assert table.loc[0, "problems"].startswith("2 events after agent_completed")


def test_a_misrouted_run_shows_as_another_users_run_on_the_wrong_socket():
    own_start = run(HEALTHY)[:1]
    rest = run(HEALTHY)[1:]
    table = events.run_table(frames(request("a1", 1.0), *received("a1", own_start),
                                    request("a2", 2.0, "t9"), *received("a2", rest, t0=30.0)), ATTEMPTS)
    mine, leaked = table.iloc[0], table.iloc[1]
    assert (mine["socket_user"], mine["owner"], mine["foreign"]) == ("u1", "u1", False)
    assert mine["missing"] == "agent_thinking, tool_executing, tool_completed, agent_completed"
    assert (leaked["socket_user"], leaked["owner"], leaked["foreign"]) == ("u2", "u1", True)
    assert leaked["foreign_events"] == 5 and "cross-user leak" in leaked["problems"]
    assert pd.isna(leaked["t_request_ms"])  # u2's own request did not start u1's run
    matrix = events.delivery_matrix(frames(*received("a1", own_start), *received("a2", rest)), ATTEMPTS)
    assert matrix.loc["u1", "u1"] == 1 and matrix.loc["u2", "u1"] == 5
    assert matrix.loc["u2", "u2"] == 0 and matrix.loc["u1", "u2"] == 0
    assert matrix.index.name == "receiving socket's user" and matrix.columns.name == "event's user_id"


def test_requested_runs_count_unanswered_requests_and_leave_out_other_users_runs():
    own_start = run(HEALTHY)[:1]
    rest = run(HEALTHY)[1:]
    table = events.requested_runs(frames(request("a1", 1.0), *received("a1", own_start),
                                         request("a2", 2.0, "t9"), *received("a2", rest, t0=30.0),
                                         request("a2", 90.0, "t10")), ATTEMPTS)
    assert list(table.columns) == events.RUN_COLUMNS
    assert list(table["attempt_id"]) == ["a1", "a2", "a2"]        # u1's leaked run on a2 is not a2's own
    assert list(table["events"]) == [1, 0, 0] and not table["complete"].any()
    assert list(table["missing"][1:]) == [", ".join(events.EVENT_NAMES)] * 2


def test_without_run_ids_each_agent_started_opens_a_run():
    no_ids = run(HEALTHY, "flat", run_id=None)
    stray = [event("agent_thinking", "flat", run_id=None)]
    table = events.run_table(frames(*received("a1", stray + no_ids + run(OMIT_TOOLS, "flat", run_id=None),
                                              gap=5.0)), {"a1": "u1"})
    assert list(table["run_key"]) == ["run 1 without run_id", "run 2 without run_id", "run 3 without run_id"]
    assert list(table["events"]) == [1, 6, 4]
    assert list(table["complete"]) == [False, True, False]
    assert table["run_id"].isna().all()


def test_events_without_run_id_join_the_run_their_agent_started_opened():
    partly = run(HEALTHY, "mixed")
    partly = [partly[0]] + [{k: v for k, v in m.items() if k != "run_id"} for m in partly[1:]]
    table = events.run_table(frames(*received("a1", partly)), {"a1": "u1"})
    assert list(table["run_key"]) == ["r1"] and table.loc[0, "complete"]


def test_payload_is_the_source_so_traces_from_elsewhere_work():
    table = frames(*received("a1", run(HEALTHY, "mixed", iso=True)))
    table[["run_id", "user_id", "thread_id", "tool_name"]] = None  # e.g. a browser HAR import fills only payloads
    judged = events.run_table(table, {"a1": "u1"})
    assert judged.loc[0, "run_id"] == "r1" and judged.loc[0, "owner"] == "u1" and judged.loc[0, "complete"]


def test_transitions_are_the_gaps_between_consecutive_events():
    table = events.transitions(frames(*received("a1", run(HEALTHY), gap=20.0)), {"a1": "u1"})
    assert list(table["transition"]) == ["agent_started > agent_thinking", "agent_thinking > tool_executing",
                                         "tool_executing > tool_completed", "tool_completed > agent_thinking",
                                         "agent_thinking > agent_completed"]
    assert list(table["gap_ms"]) == [20.0] * 5 and not table["foreign"].any()


def test_run_events_mark_each_foreign_event():
    mixed_users = run(HEALTHY)
    mixed_users[2] = event("tool_executing", step=2, user_id="u2", tool_name="cost_analyzer")
    table = events.run_events(frames(*received("a1", mixed_users)), ATTEMPTS)
    assert list(table.columns) == events.EVENT_COLUMNS
    assert list(table["foreign"]) == [False, False, True, False, False, False]
    assert list(table["seq"]) == list(range(6)) and table.loc[2, "event_user"] == "u2"


def test_delivery_matrix_keeps_silent_users_and_counts_events_without_user():
    matrix = events.delivery_matrix(frames(*received("a1", run(HEALTHY[:2], "flat", user_id=None)),
                                           *received("a1", run(HEALTHY[:1], run_id="r5"))), ATTEMPTS)
    assert list(matrix.index) == ["u1", "u2"] and list(matrix.columns) == ["u1", "u2", events.NO_USER]
    assert matrix.loc["u1", events.NO_USER] == 2 and matrix.loc["u1", "u1"] == 1
    assert matrix.loc["u2"].sum() == 0


def test_empty_frames_give_empty_tables_with_their_columns():
    empty = pd.DataFrame(columns=["attempt_id", "t_ms", "direction", "type", "payload"])
    assert list(events.run_table(empty, ATTEMPTS).columns) == events.RUN_COLUMNS
    assert events.run_events(empty, ATTEMPTS).empty and events.transitions(empty, {}).empty
    assert events.delivery_matrix(empty, ATTEMPTS).to_numpy().sum() == 0
    only_pongs = frames(("a1", 1.0, "received", {"type": "pong"}), request("a1", 0.5))
    assert events.run_table(only_pongs, ATTEMPTS).empty
