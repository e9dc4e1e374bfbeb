"""What a paged engineer does next: the "What to do now" block that opens every report.

It depends on what the run found: the cause (the scenario's own, or another
root cause whose symptoms failed this scenario's checks), where to look in the
server, which checks prove the fix, and the exact commands to run after the
fix is deployed (`gp report` into a new folder, then `gp compare`). A run
that could not be made says what to fix before anything else.

`attribution(result, findings)` is the root cause this scenario's failures
belong to when it is not the scenario's own; the report's headline and
summary.json (`failures_belong_to`) say so.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gp_lib.diagnosis import SECURITY
from gp_lib.escape import markdown as inert

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Guide:
    """What one root cause means for the server, and what proves it fixed."""

    name: str              # in words, e.g. "the handshake race"
    where: str             # where to look in the server, and what to change
    scenario: str | None   # the scenario whose checks prove the fix
    proof: tuple[str, ...]  # those checks


GUIDES = {
    "race_conditions": Guide(
        "the handshake race",
        "the WebSocket endpoint between accepting the upgrade and sending the readiness marker (authentication, "
        "connection registration, the per-user execution context). Messages that arrive there are handled "
        "before setup finished: queue them until setup is done (or answer them with a retryable error, never "
        "1011), and make clients send only after the readiness marker.",
        "race_conditions", ("no_1011_closes", "early_messages_answered", "rapid_cycles_complete")),
    "service_dependencies": Guide(
        "a missing service dependency",
        "the agent handler's dependency checks (supervisor, thread service, LLM, database), the readiness guard "
        "in front of the upgrade, and `/ws/health`. When a service is missing, accept the socket and send "
        "`agent_started`, a user-facing \"temporarily unavailable, please try again\" message, then an "
        "`agent_completed` that names the fallback; never silence, never 1011, never a refused or stalled "
        "upgrade.",
        "service_dependencies", ("no_silent_failure", "graceful_message_in_every_failure",
                                 "completion_or_fallback_notice")),
    "factory_initialization": Guide(
        "a factory initialization failure",
        "the WebSocket manager factory's configuration as deployed (the values and environment variables it "
        "reads) and its startup log; `system_health_check` names the invalid setting. Fix the configuration, "
        "then restart (a restart alone keeps it broken), and validate the configuration at deploy time.",
        "factory_initialization", ("no_factory_errors", "health_reports_ok", "recovers_after_restart")),
    "missing_events": Guide(
        "missing or misrouted agent events",
        "the agent execution path that emits `agent_started`, `agent_thinking`, `tool_executing`, "
        "`tool_completed` and `agent_completed` (every tool call must emit both of its events), the routing "
        "that picks the socket by `user_id` (an event on another user's socket is a data leak, and a "
        "connection never registered with the manager gets none), and the loop that reads client messages: a "
        "server that closes the socket normally right after a message it never answered fails there.",
        "missing_events", ("all_five_events", "started_first_completed_last", "tool_calls_closed",
                           "no_cross_user_events")),
    "authentication": Guide(
        "an authentication rejection",
        "the secret the tokens are minted with (the variable `jwt_secret_env` names) against the server's JWT "
        "secret, the token's expiry and issuer, and any proxy in front of the server that strips the "
        "`Authorization` header (try `-p auth_transport=subprotocol`). `gp token --inspect` lists a token's "
        "problems.",
        None, ()),
    "unreachable": Guide(
        "an unreachable target",
        "the URL (scheme, host, port, path `/ws`), DNS, the load balancer, and whether the service is running: "
        "`gp probe URL` shows what one connection gets.",
        None, ()),
    "authentication_not_enforced": Guide(
        "authentication that is not enforced",
        "the WebSocket endpoint's authentication mode (a demo or relaxed mode left on, such as the real "
        "backend's `DEMO_MODE`, on by default, or an `ENVIRONMENT` that is not production) and what it does when "
        "the auth service cannot be reached. Every upgrade must verify the token's signature, expiry and "
        "issuer, and refuse one that fails (HTTP 401/403, or `AUTH_FAILED` then close 1008).",
        None, ()),
    "unknown": Guide(
        "a failure none of the four root causes explains",
        "the failing checks and the close codes below; `gp probe URL` shows one session frame by frame.",
        None, ()),
}
#: What each root cause costs users, in one sentence.
IMPACT = {
    "race_conditions": "Users cannot establish chat sessions: the connection dies during the handshake, "
                       "before any AI answer can be delivered, and most often when traffic peaks.",
    "service_dependencies": "Chat appears to work but gives no substantive answer: the agent fails silently "
                            "(or drops the session) when a service it needs is down.",
    "factory_initialization": "The real-time layer is broken for everyone: connections close before they are "
                              "ready, so no user gets live updates or an answer, until the configuration is fixed.",
    "missing_events": "Users see no progress while the agent works, think the system is broken and abandon the "
                      "session.",
    "authentication": "Users are refused at the door: the token or the way it travels is rejected.",
    "unreachable": "The service cannot be reached at all.",
    "authentication_not_enforced": "Anyone can open a chat session as some user without a valid token.",
    "unknown": "Sessions fail in a way none of the known root causes explains.",
}
#: Said only when this run saw an event reach another user's socket.
LEAK = "Events reached another user's socket: one customer's data shown to another, a security incident."
#: Per scenario, how many of what this run saw were hurt: (bad metric or metrics, total metric, what they are).
AFFECTED = {
    "race_conditions": (("closed_1011",), "attempts", "connection attempts ended in 1011"),
    "service_dependencies": (("silent", "crashed"), "requests", "agent requests met silence or a dropped session"),
    "factory_initialization": (("closed_before_ready",), "connections", "fresh connections closed before readiness"),
    "missing_events": (("incomplete_runs",), "runs", "agent runs lacked events"),
}
#: The root cause each scenario investigates.
OWN_CAUSE = {name: name for name in ("race_conditions", "service_dependencies", "factory_initialization",
                                     "missing_events")}


def attribution(result: Any, findings: Sequence[Any]) -> str | None:
    """The root cause this scenario's failures belong to, when the scenario's own cause was not seen
    (None for anything but one of the four scenarios: a triage pass or a stub has no cause of its own)."""
    own = OWN_CAUSE.get(result.scenario)
    causes = [f.root_cause for f in findings if f.root_cause not in SECURITY]  # a security finding fails no check
    if own is None or getattr(result, "error", None) or result.verdict != "fail" or not causes:
        return None
    return None if own in causes else causes[0]


def headline(result: Any, findings: Sequence[Any]) -> str | None:
    """The words after the badge in the report's title, or None: whose failures these are, and what was
    left undecided."""
    parts = []
    other = attribution(result, findings)
    if other:
        parts.append(f"caused by {other}, not by {GUIDES[result.scenario].name}")
    undecided = [c for c in result.checks if getattr(c, "inconclusive", False)]
    if undecided:
        parts.append(f"{len(undecided)} check{'s' if len(undecided) > 1 else ''} inconclusive")
    return "; ".join(parts) or None


def impact_markdown(result: Any, findings: Sequence[Any]) -> str:
    """Business impact, short, from what this run found: nothing about a cause this run did not see."""
    if result.error:
        return "Not measured: nothing could be tested, so this run says nothing about users yet."
    if result.mode == "reference":
        return (f"None for your users: this run tested the toolkit on its own reference server. Where a live run "
                f"finds it, {GUIDES[result.scenario].name} costs this: {IMPACT[result.scenario]}")
    if result.verdict == "pass" or not findings:
        return "None seen: no check failed and no root cause has evidence in this run."
    lines = [f"**{f.root_cause}**: {IMPACT.get(f.root_cause, IMPACT['unknown'])}"
             + (f" {LEAK}" if any("cross-user delivery" in e for e in f.evidence) else "") for f in findings[:2]]
    hurt = affected(result)
    if hurt:
        lines.append(f"In this run: {hurt}. The chat carries about 90% of the product's value over these sessions.")
    return "\n\n".join(lines)


def affected(result: Any) -> str | None:
    """'493 of 1126 connection attempts (44%) ended in 1011', from the scenario's own metrics."""
    if result.scenario not in AFFECTED:
        return None
    bad_names, total_name, what = AFFECTED[result.scenario]
    metrics = result.metrics
    if result.scenario == "missing_events" and "runs" in metrics and "complete_runs" in metrics:
        metrics = {**metrics, "incomplete_runs": (metrics["runs"] or 0) - (metrics["complete_runs"] or 0)}
    total = metrics.get(total_name)
    if not total or any(metrics.get(name) is None for name in bad_names):
        return None
    bad = sum(int(metrics[name]) for name in bad_names)
    return f"{bad} of {total} {what} ({bad / total:.0%})"


def markdown(result: Any, findings: Sequence[Any], defaults: dict[str, Any], out_dir: str | Path) -> str:
    """The "What to do now" block (see the module docstring)."""
    from gp_lib.notebook import reproduce_command

    here = run_folder(out_dir)
    # one folder per run fixed: a second try must not find the first one's files there (gp report refuses them)
    after = f"{here.rstrip('/')}-after-fix" if here not in (".", "") else "after-fix"
    again = f"{reproduce_command(result, defaults)} --out {shlex.quote(after)}"
    compare = f"gp compare {shlex.quote(here)} {shlex.quote(after)}"
    if result.error:
        cause = next((f.root_cause for f in findings if f.root_cause in ("unreachable", "authentication")),
                     "unreachable" if "unreachable" in result.error else "authentication"
                     if "authentication" in result.error else "unknown")
        why = result.error.removeprefix("nothing could be tested: ")
        return _block([f"**Nothing could be tested:** {inert(why)}.",
                       f"**Fix this first:** {GUIDES[cause].where}",
                       "**Then run it again:**\n\n" + _commands(reproduce_command(result, defaults))])
    if result.mode == "reference":
        return _reference(result, defaults)
    security = _security(findings)
    if result.verdict == "pass":
        undecided = [c.name for c in result.checks if getattr(c, "inconclusive", False)]
        return _block([*security,
                       f"**{'No other issue' if security else 'Nothing to fix'}:** every decided check passed "
                       f"against `{result.target}`"
                       + (f"; inconclusive on this target: {', '.join(undecided)} (see the results)" if undecided
                          else "") + ".",
                       f"**{'After the fix' if security else 'Keep this run as the baseline.'}** After the next "
                       "deployment:\n\n" + _commands(again, compare)])
    causes = [f.root_cause for f in findings if f.root_cause not in SECURITY]
    own = OWN_CAUSE.get(result.scenario)
    cause = own if own in causes else causes[0] if causes else "unknown"
    guide = GUIDES.get(cause, GUIDES["unknown"])
    finding = next((f for f in findings if f.root_cause == cause), None)
    lines = list(security)
    if cause == own:
        lines.append(f"**Cause:** {guide.name}" + _strongest(finding))
    else:
        lines.append(f"**Cause:** {guide.name} (`{cause}`), not {GUIDES[result.scenario].name}: this scenario's "
                     f"failing checks follow from it" + _strongest(finding))
    lines.append(f"**Where to look in the server:** {guide.where}")
    if guide.scenario:
        lines.append(f"**The fix is proven when** {_names(guide.proof)} pass in `{guide.scenario}` against the "
                     "same target" + ("" if guide.scenario == result.scenario else
                                      f" (its report: `{_report_of(guide.scenario)}` in this run)") + ".")
    if guide.scenario and guide.scenario != result.scenario:
        again = again.replace(f"--scenario {result.scenario}", f"--scenario {guide.scenario}")
    lines.append("**After deploying the fix:**\n\n" + _commands(again, compare)
                 + "\n\n`gp compare` exits 1 if any check that passed here fails there, and shows every check "
                   "side by side.")
    return _block(lines)


def _reference(result: Any, defaults: dict[str, Any]) -> str:
    """A reference run tested the toolkit: how to point it at a server, and what the fault means there."""
    guide = GUIDES[result.scenario]
    live = reproduce_live(result, defaults)
    if result.verdict == "pass":
        first = ("**This run tested the toolkit, not your server:** the reference server reproduced "
                 f"{guide.name} with the fault injected and cleared it with the fix.")
    else:
        first = ("**The reference run did not show a clean fault/fix contrast** (see the verdict): the toolkit "
                 "itself needs a look before it can judge a server; check the reference tunables in the parameters.")
    return _block([first,
                   "**To test your server:**\n\n" + _commands(live),
                   f"**If it shows {guide.name}, look at** {guide.where}"])


def reproduce_live(result: Any, defaults: dict[str, Any]) -> str:
    """The command that runs this scenario against a live server."""
    from gp_lib.notebook import reproduce_command

    command = reproduce_command(result, defaults)
    return command.replace("gp report", "gp report --target wss://YOUR-SERVER/ws", 1)


def run_folder(out_dir: str | Path) -> str:
    """This run's folder as a user types it: relative to the project when inside it, else absolute."""
    path = Path(os.path.abspath(out_dir))
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _security(findings: Sequence[Any]) -> list[str]:
    """The lines a security finding puts before everything else."""
    lines = []
    for finding in (f for f in findings if f.root_cause in SECURITY):
        guide = GUIDES[finding.root_cause]
        lines += [f"**Security first:** {guide.name}" + _strongest(finding),
                  f"**Where to look:** {guide.where} It is fixed when a run against the same target no longer "
                  f"reports `{finding.root_cause}`."]
    return lines


def _strongest(finding: Any) -> str:
    return f": {inert(finding.evidence[0])}." if finding is not None and finding.evidence else "."


def _names(checks: Sequence[str]) -> str:
    quoted = [f"`{name}`" for name in checks]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _report_of(scenario: str) -> str:
    from gp_lib.batch import REGISTRY

    return REGISTRY[scenario].report


def _commands(*commands: str) -> str:
    return "```sh\n" + "\n".join(commands) + "\n```"


def _block(lines: Sequence[str]) -> str:
    return "\n\n".join(lines)
