"""The simulated agent run: the five events of PROTOCOL.md section 6, and their faults.

A run emits agent_started, agent_thinking, tool_executing, tool_completed,
agent_thinking and agent_completed, `agent_step_ms` apart. The `events` fault
changes that sequence (`event_plan`) or where it goes (`misroute`), which is
root cause 4; the `dependencies` fault and its fix end a run early
(`run_stalled`) or through a fallback (`run_fallback`), which is root cause 2.

Runs belong to the server, not to a socket: they are kept per thread in a
`RunBook`, keep going when the socket closes, and answer `status_request`
after a reconnect. How a frame is worded and where it goes is the caller's
`emit`; this module only decides what happens, in which order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from gp_lib.protocol import AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, TOOL_COMPLETED, TOOL_EXECUTING

TOOL_NAME = "cost_analyzer"
DEFAULT_AGENT = "cost_optimizer"
UNAVAILABLE_TEXT = "The agent service is temporarily unavailable. Please try again in a moment."
FALLBACK_TEXT = ("A fallback answered because the agent service is temporarily unavailable: "
                 "no analysis was run. Please try again in a moment for a full answer.")
ANSWER_TEXT = "Your compute spend can drop by about 18% by rightsizing idle instances and moving batch work to spot."
TOOL_RESULT = {"summary": "12 idle instances, 3 batch queues on on-demand", "monthly_savings_usd": 4180}

#: `emit(kind, fields)` sends one event; the caller renders and routes it.
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class Run:
    """One agent run, kept by thread so that it outlives its socket."""

    run_id: str
    thread_id: str
    user_id: str
    agent_name: str
    state: str = "running"
    last_event: str | None = None
    started_at: float = field(default_factory=time.time)

    def event(self, **extra: Any) -> dict[str, Any]:
        """The fields every event of this run carries, plus `extra`."""
        return {"run_id": self.run_id, "user_id": self.user_id, "thread_id": self.thread_id,
                "agent_name": self.agent_name, **extra}

    def status(self) -> dict[str, Any]:
        return {"thread_id": self.thread_id, "run_id": self.run_id, "state": self.state, "last_event": self.last_event}


class RunBook:
    """The runs of the server, newest per thread, bounded in number."""

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self._by_thread: OrderedDict[str, Run] = OrderedDict()

    def start(self, user_id: str, thread_id: str | None, agent_name: str | None) -> Run:
        run = Run(run_id=f"run_{uuid.uuid4().hex[:16]}", thread_id=thread_id or f"thread_{uuid.uuid4().hex[:16]}",
                  user_id=user_id, agent_name=agent_name or DEFAULT_AGENT)
        self._by_thread[run.thread_id] = run
        self._by_thread.move_to_end(run.thread_id)
        while len(self._by_thread) > self.limit:
            self._by_thread.popitem(last=False)
        return run

    def status(self, thread_id: Any, user_id: str) -> dict[str, Any]:
        """The status of the newest run in `thread_id`; "unknown" for none or another user's."""
        run = self._by_thread.get(thread_id) if isinstance(thread_id, str) else None
        if run is None or run.user_id != user_id:
            return {"thread_id": thread_id, "run_id": None, "state": "unknown", "last_event": None}
        return run.status()


def event_plan(events_fault: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The events of a run in the order they are sent, under the `events` fault mode."""
    started = (AGENT_STARTED, {"message": "Looking into your request"})
    thinking = (AGENT_THINKING, {"message": "Checking which resources cost the most"})
    executing = (TOOL_EXECUTING, {"tool_name": TOOL_NAME})
    completed_tool = (TOOL_COMPLETED, {"tool_name": TOOL_NAME, "result": TOOL_RESULT})
    thinking_again = (AGENT_THINKING, {"message": "Turning the analysis into recommendations"})
    completed = (AGENT_COMPLETED, {"result": ANSWER_TEXT})
    if events_fault == "omit_tools":
        return [started, thinking, thinking_again, completed]
    if events_fault == "out_of_order":
        return [started, thinking, executing, completed, completed_tool, thinking_again]
    return [started, thinking, executing, completed_tool, thinking_again, completed]


async def run_agent(run: Run, emit: Emit, *, step_s: float, events_fault: str | None = None,
                    emit_elsewhere: Emit | None = None) -> None:
    """A whole run; under `misroute` every event after agent_started goes to `emit_elsewhere`."""
    for index, (kind, extra) in enumerate(event_plan(events_fault)):
        if index:
            await asyncio.sleep(step_s)
        target = emit_elsewhere if events_fault == "misroute" and kind != AGENT_STARTED else emit
        run.last_event = kind
        if target is not None:
            await target(kind, run.event(**extra))
    run.state = "completed"


async def run_stalled(run: Run, emit: Emit) -> None:
    """agent_started, then nothing: the silent failure of a missing dependency."""
    run.last_event = AGENT_STARTED
    await emit(AGENT_STARTED, run.event(message="Looking into your request"))


async def run_fallback(run: Run, emit: Emit, warn: Callable[[str, dict[str, Any]], Awaitable[None]], *,
                       step_s: float, missing: list[str]) -> None:
    """The graceful answer to a missing dependency: started, a user-facing error, a fallback completion."""
    run.last_event = AGENT_STARTED
    await emit(AGENT_STARTED, run.event(message="Looking into your request"))
    await asyncio.sleep(step_s)
    await warn(UNAVAILABLE_TEXT, {"run_id": run.run_id, "thread_id": run.thread_id, "unavailable": missing})
    await asyncio.sleep(step_s)
    run.last_event = AGENT_COMPLETED
    await emit(AGENT_COMPLETED, run.event(result=FALLBACK_TEXT, message=FALLBACK_TEXT, fallback=True))
    run.state = "completed"
