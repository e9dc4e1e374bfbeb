"""`gp compare RUN_A RUN_B`: two runs side by side, check by check and metric by metric.

This is how a fix deployed between two runs is verified: run before, run
after, compare. Exit codes: 0 B is no worse than A; 1 B is worse (a check
that passed in A fails in B, or a scenario verdict got worse); 2 a run cannot
be read (the message names the file).
"""

from __future__ import annotations

import argparse
import sys

from gp_lib import history
from gp_lib.escape import markdown as inert
from gp_lib.escape import terminal
from gp_lib.notebook import markdown_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="the earlier run: a run directory or its summary.json")
    parser.add_argument("run_b", metavar="RUN_B", help="the later run: a run directory or its summary.json")


def run(args: argparse.Namespace) -> int:
    try:
        a, b = history.load_run(args.run_a), history.load_run(args.run_b)
    except history.RunError as exc:
        print(f"gp compare: {exc}", file=sys.stderr)
        return 2
    for line in mismatches(a, b):
        print(f"gp compare: warning: {terminal(line)}", file=sys.stderr)
    print(comparison_markdown(a, b))
    return 1 if history.regressions(a, b) else 0


def mismatches(a: history.Run, b: history.Run) -> list[str]:
    """Why the two runs may not be comparable: another mode, another target, no scenario in common."""
    lines = []
    if a.mode != b.mode:
        lines.append(f"the runs differ in mode: A is {a.mode}, B is {b.mode} (a reference run tests the toolkit's "
                     "own server, a live run yours): their checks and metrics do not measure the same thing")
    if a.mode == b.mode and (a.target or None) != (b.target or None):
        lines.append(f"the runs differ in target: A probed {a.target or 'the reference server'}, B "
                     f"{b.target or 'the reference server'}")
    if a.scenarios and b.scenarios and not set(a.scenarios) & set(b.scenarios):
        lines.append(f"the runs have no scenario in common (A: {', '.join(a.scenarios)}; B: {', '.join(b.scenarios)})")
    return lines


def comparison_markdown(a: history.Run, b: history.Run) -> str:
    """The comparison as Markdown: the runs, the verdict, then verdicts, diagnosis, checks and metrics side by side."""
    worse = history.regressions(a, b)
    runs = [{"": name, "run": run.run_id, "started": run.started_at, "mode": run.mode, "target": run.target,
             "verdict": run.verdict, "read from": str(run.path / history.SUMMARY) if run.source == history.SUMMARY
             else f"{run.path}/notebooks (scrapbook)"} for name, run in (("A", a), ("B", b))]
    if worse:
        headline = f"**B is worse than A** in {len(worse)} way{'s' if len(worse) > 1 else ''}:\n\n" \
                   + "\n".join(f"- {inert(line)}" for line in worse)
    else:
        headline = "**B is no worse than A**: no check that passed in A fails in B, and no verdict got worse."
    warnings = mismatches(a, b)
    return "\n\n".join([
        f"# Run comparison: {inert(a.run_id)} (A) against {inert(b.run_id)} (B)",
        markdown_table(runs),
        *(["**Warning:** " + inert("; ".join(warnings)) + "."] if warnings else []),
        headline,
        "## Verdicts",
        markdown_table(history.verdict_changes(a, b)),
        "## Diagnosis",
        markdown_table(_diagnosis_rows(a, b)),
        "## Checks",
        markdown_table(history.check_changes(a, b)),
        "## Metrics",
        markdown_table(history.metric_changes(a, b)),
    ])


def _diagnosis_rows(a: history.Run, b: history.Run) -> list[dict[str, object]]:
    """Each root cause either run's diagnosis names, with its confidence in A and in B."""
    def confidence(run: history.Run, cause: str) -> object:
        return next((d.get("confidence") for d in run.diagnosis if d.get("root_cause") == cause), None)

    causes = dict.fromkeys(d.get("root_cause") for d in [*a.diagnosis, *b.diagnosis])
    return [{"root cause": cause, "confidence a": confidence(a, cause), "confidence b": confidence(b, cause)}
            for cause in causes]
