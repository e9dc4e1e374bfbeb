"""Triage: a quick pass of all four scenarios against one target, diagnosed together.

When a server drops sessions with 1011 and nobody knows why yet, the first
question is which of the four root causes it is (or a look-alike). Triage runs
every scenario with small counts, so the whole pass takes seconds, and hands
the results to `gp_lib.diagnosis`, which ranks the causes across them. The
scenario notebooks then go deep on the cause it names.

`TriageParams` is the documented parameter set of `notebooks/00_triage.ipynb`
(the common parameters, plus which scenarios to run); `QUICK` holds the small
counts each scenario runs with. In reference mode each scenario starts its
own reference server with its fault and without (see `diagnosis.diagnose`).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from gp_lib import diagnosis, notebook as nb
from gp_lib.checks import Check, overall_verdict
from gp_lib.diagnosis import Finding
from gp_lib.scenarios import factory_initialization, missing_events, race_conditions, service_dependencies
from gp_lib.scenarios.common import CommonParams, ParameterError, ScenarioResult, list_field

MODULES = {module.NAME: module for module in (race_conditions, service_dependencies, factory_initialization,
                                              missing_events)}

#: Small counts per scenario: enough for each contrast the diagnosis draws, a few seconds each.
QUICK: dict[str, dict[str, Any]] = {
    race_conditions.NAME: {"concurrency_levels": [1, 10], "send_delays_ms": [0, 50], "sweep_repeats": 1,
                           "burst_connections": 2, "burst_messages": 2, "rapid_cycles": 2, "deadline_s": 20.0},
    service_dependencies.NAME: {"requests_per_condition": 1, "outages": ["llm_service"]},
    factory_initialization.NAME: {"health_checks": 2, "connections": 6, "recovery_deadline_s": 1.5,
                                  "reconnect_wait_s": 0.2, "max_recovery_attempts": 10},
    missing_events.NAME: {"sequential_runs": 2, "concurrent_users": 2, "runs_per_user": 1, "reconnect_trials": 1,
                          "run_timeout_s": 10.0, "settle_ms": 100.0, "deadline_s": 20.0},
}


@dataclass
class TriageParams(CommonParams):
    """Parameters of the triage pass: the common ones (shared by every scenario), plus these."""

    receive_timeout_s: float = 3.0         # deadline for an awaited answer and for each next event of a run, s
    scenarios: list = list_field(*MODULES)  # which scenarios to run, in this order

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.scenarios, list) or not self.scenarios:
            raise ParameterError(f"scenarios must be a non-empty list, got {self.scenarios!r}")
        unknown = [name for name in self.scenarios if not isinstance(name, str) or name not in MODULES]
        if unknown:
            raise ParameterError(f"scenarios: unknown scenario {unknown[0]!r} (known: {', '.join(MODULES)})")
        for name in self.scenarios:  # the quick counts must hold with these common parameters too
            try:
                scenario_params(self, name)
            except ParameterError as exc:
                raise ParameterError(f"{name} (with the triage's quick counts): {exc}") from None


def scenario_params(params: TriageParams, name: str) -> CommonParams:
    """The quick parameters of one scenario: the common ones from `params`, the counts from `QUICK`.

    The missing-events scenario waits `event_timeout_s` for each next event of a run; triage uses
    `receive_timeout_s` for it, so that one deadline bounds every wait of the pass.
    """
    common = {f.name: getattr(params, f.name) for f in dataclasses.fields(CommonParams)}
    derived = {"event_timeout_s": params.receive_timeout_s} if name == missing_events.NAME else {}
    return MODULES[name].Params.from_mapping({**common, **QUICK[name], **derived})


async def run(params: TriageParams, progress: Callable[..., Any] | None = None) -> list[ScenarioResult]:
    """Run the chosen scenarios one after another (so that one's traffic never lands in another's).

    Raises:
        ParameterError: before any traffic, naming the parameter.
    """
    params.validate()
    chosen = [(name, scenario_params(params, name)) for name in params.scenarios]
    return [await MODULES[name].run(p, progress=progress) for name, p in chosen]


def verdict(results: Sequence[ScenarioResult]) -> str:
    """The triage pass's verdict over its scenarios (`checks.overall_verdict`)."""
    return overall_verdict(r.verdict for r in results)


def overview(results: Sequence[ScenarioResult]) -> list[dict[str, Any]]:
    """One row per scenario: its verdict and the checks that failed, with their evidence."""
    return [{"scenario": r.scenario, "verdict": r.verdict,
             "failed checks": "; ".join(f"{c.name}: {c.evidence}" for c in r.checks if c.failed)
             or (r.error or "none")} for r in results]


# -- what the notebook shows ------------------------------------------------------------------------

def save_traces(results: Sequence[ScenarioResult], out_dir: str | Path) -> list[str]:
    """Every result's traces under `out_dir/triage/traces/`, apart from the scenario notebooks' own."""
    return [path for result in results for path in result.save_traces(Path(out_dir) / "triage")]


def fixed_findings(results: Sequence[ScenarioResult]) -> list[Finding]:
    """In reference mode, the diagnosis of the fixed arms, which should be empty; [] in live mode."""
    reference = [r for r in results if r.mode == "reference"]
    return diagnosis.diagnose(reference, arm="fixed") if reference else []


def diagnosis_markdown(results: Sequence[ScenarioResult], findings: Sequence[Finding]) -> str:
    """The diagnosis table first (strongest cause on top), then every finding with all its evidence."""
    if not findings:
        head = "**Diagnosis: nothing wrong was seen.** None of the root causes has evidence in this pass."
    else:
        head = "**Diagnosis**\n\n" + nb.markdown_table(diagnosis.findings_table(findings))
    parts = [head]
    if findings:
        parts.append(nb.diagnosis_markdown(findings))
    if any(r.mode == "reference" for r in results):
        fixed = fixed_findings(results)
        parts.append("Reference mode: each scenario ran against its own reference server, once with its fault "
                     "injected and once fixed; the table ranks what the faulty servers showed. The fixed servers: "
                     + ("nothing wrong was seen, as it should be." if not fixed else
                        "**" + ", ".join(f.root_cause for f in fixed) + " seen even there** (see the remediation "
                        "section)."))
    return "\n\n".join(parts)


def verdict_markdown(results: Sequence[ScenarioResult]) -> str:
    """The pass's verdict and one line per scenario."""
    failed = [r.scenario for r in results if r.verdict != "pass"]
    badge = verdict(results).upper()
    line = (f"**Verdict: {badge}**: {len(failed)} of {len(results)} scenarios did not pass ({', '.join(failed)})"
            if failed else f"**Verdict: {badge}**: all {len(results)} scenarios passed")
    return line + "\n\n" + nb.markdown_table(overview(results))


def results_markdown(results: Sequence[ScenarioResult]) -> str:
    """Every scenario's checks with their evidence."""
    return "\n\n".join(f"**{r.scenario}** ({r.verdict})\n\n{nb.checks_markdown(r.checks)}" for r in results)


def remediation_markdown(results: Sequence[ScenarioResult]) -> str:
    """Reference mode: fault against fix per scenario, and the fixed arms' diagnosis; live: how to verify."""
    if not any(r.mode == "reference" for r in results):
        return nb.remediation_markdown(results[0]) if results else ""
    fixed = fixed_findings(results)
    parts = [f"**{r.scenario}**: {nb.remediation_markdown(r)}" for r in results]
    parts.append("Diagnosis of the fixed arms: " + ("empty, as it should be." if not fixed
                                                      else nb.diagnosis_markdown(fixed)))
    return "\n\n".join(parts)


def environment_markdown(params: TriageParams, results: Sequence[ScenarioResult]) -> str:
    """Target, mode, the triage parameters and versions (as a scenario notebook shows them)."""
    return nb.environment_markdown(as_one_result(params, results))


def reproduce_command(params: TriageParams) -> str:
    """The papermill command that repeats this pass: every parameter that differs from its default."""
    changed = {name: value for name, value in dataclasses.asdict(params).items()
               if name != "out_dir" and value != getattr(TriageParams(), name)}
    command = ["papermill", "notebooks/00_triage.ipynb", "reports/interactive/00_triage.ipynb", "--cwd", "notebooks"]
    if changed:
        command += ["-y", json.dumps(changed)]
    return shlex.join(command)


# -- the strongest evidence, in figures ------------------------------------------------------------------

@dataclass(frozen=True)
class EvidenceFigure:
    """A figure that shows a root cause: which scenario's result it draws, and how to read it."""

    scenario: str
    name: str
    draw: Callable[[ScenarioResult], Any]
    caption: str


def _figures() -> dict[str, list[EvidenceFigure]]:
    from gp_lib.plots import dependencies, events, factory, race

    close_codes = EvidenceFigure(
        race_conditions.NAME, "close-codes", race.close_codes,
        "**How the race scenario's connections ended.** Close codes counted, by who closed; 1000 by the client is a "
        "normal end, 1011 by the server the incident class, 1008 an authentication rejection.")
    return {
        race_conditions.NAME: [
            EvidenceFigure(race_conditions.NAME, "rate-by-delay", race.rate_1011_by_delay,
                           "**1011 rate against first-send delay.** A race shows as a high rate for early sends that "
                           "falls to zero past the setup time, while clients that waited for readiness (dashed) "
                           "stay at zero."),
            EvidenceFigure(race_conditions.NAME, "timeline", race.attempt_timeline,
                           "**Per-attempt timeline.** Upgrade, readiness, first send and close per attempt, coloured "
                           "by outcome: red rows whose first send comes before readiness are the race.")],
        factory_initialization.NAME: [
            EvidenceFigure(factory_initialization.NAME, "close-reasons", factory.close_reasons,
                           "**How connection attempts ended.** Close codes and reasons, by traffic kind: a factory "
                           "failure closes every kind 1011 naming the factory or initialization."),
            EvidenceFigure(factory_initialization.NAME, "time-to-ready", factory.time_to_ready,
                           "**Time to readiness, by send timing.** A factory failure closes connections before "
                           "readiness whether they sent early or waited: the curves look alike.")],
        service_dependencies.NAME: [
            EvidenceFigure(service_dependencies.NAME, "outcomes", dependencies.outcome_matrix,
                           "**Request outcomes by condition.** Silent and crashed cells are the defect; graceful "
                           "('temporarily unavailable, try again') is the correct answer to a missing service."),
            EvidenceFigure(service_dependencies.NAME, "message-timings", dependencies.message_timings,
                           "**Time to the first and last message of each request.** A dotted line is a silent wait "
                           "up to the deadline; a cross, a close by the server.")],
        missing_events.NAME: [
            EvidenceFigure(missing_events.NAME, "completeness", events.completeness_heatmap,
                           "**Which events each run delivered.** A red cell is an event that never came."),
            EvidenceFigure(missing_events.NAME, "delivery", events.delivery_matrix,
                           "**Whose socket received whose events.** Anything off the diagonal is a cross-user leak.")],
        diagnosis.AUTHENTICATION: [close_codes],
        diagnosis.UNREACHABLE: [close_codes],
        diagnosis.UNKNOWN: [close_codes],
    }


def evidence_figures(results: Sequence[ScenarioResult], findings: Sequence[Finding],
                     causes: int = 2) -> list[tuple[ScenarioResult, EvidenceFigure]]:
    """The figures of the `causes` strongest findings (the close codes when nothing was found), drawable."""
    by_scenario = {r.scenario: r for r in results}
    chosen = [f.root_cause for f in findings[:causes]] or [diagnosis.UNKNOWN]
    catalogue = _figures()
    picked = [figure for cause in chosen for figure in catalogue[cause]]
    unique = list({(f.scenario, f.name): f for f in picked}.values())
    return [(by_scenario[f.scenario], f) for f in unique if f.scenario in by_scenario]


def as_one_result(params: TriageParams, results: Sequence[ScenarioResult]) -> SimpleNamespace:
    """The pass in the shape of one ScenarioResult (scenario "triage", checks and metrics named
    `<scenario>.<name>`), so that the scenario notebooks' display and scrap helpers serve it too."""
    def renamed(scenario: str, checks: Sequence[Check]) -> list[Check]:
        return [replace(c, name=f"{scenario}.{c.name}") for c in checks]

    arm_checks: dict[str, list[Check]] = {}
    for result in results:
        for arm, checks in result.arm_checks.items():
            arm_checks.setdefault(arm, []).extend(renamed(result.scenario, checks))
    checks = [c for r in results for c in renamed(r.scenario, r.checks)]
    metrics = {f"{r.scenario}.{name}": value for r in results for name, value in r.metrics.items()}
    summary = {"verdict": verdict(results), "checks": [c.to_dict() for c in checks], "metrics": metrics}
    return SimpleNamespace(scenario="triage", verdict=summary["verdict"], mode=params.mode, target=params.target_url,
                           params=params.public(), checks=checks, arm_checks=arm_checks, metrics=metrics,
                           started_at=results[0].started_at if results else "",
                           finished_at=results[-1].finished_at if results else "", summary=lambda: summary)


def glue(params: TriageParams, results: Sequence[ScenarioResult], findings: Sequence[Finding],
         traces: Sequence[str], figures: Sequence[str]) -> None:
    """The scraps of a scenario notebook (gp_lib.notebook.glue_result) for the whole pass, plus
    `fixed_diagnosis`: the fixed arms' findings in reference mode (empty when the fixes hold), else []."""
    nb.glue_result(as_one_result(params, results), findings, traces, figures)
    nb.glue({"fixed_diagnosis": [f.to_dict() for f in fixed_findings(results)]})
