"""`gp analyze FILE`: judge a captured trace as a run is judged, and write the same kind of report.

The frames captured during an incident (the toolkit's own JSONL trace, or a
browser HAR saved from DevTools) become the attempts and frames tables; the
event validators of `gp_lib.events` and the diagnosis then read them as they
read a live run. OUT receives a `GOLDEN_PATH_CAPTURED_TRACE_TEST_REPORT.md`
(rendered by `gp_lib.report`), `summary.json` (mode `captured`, one scenario
`captured`), `junit.xml`, the figures under `assets/` and the imported tables
as `traces/captured.jsonl`.

Exit codes: 0 nothing wrong found; 1 a root cause found or a check failed;
2 the file cannot be read as a trace.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

from gp_lib import diagnosis, events, har, protocol, report
from gp_lib.checks import Check, none_check, ratio_check, verdict
from gp_lib.escape import markdown as inert
from gp_lib.next_steps import IMPACT
from gp_lib.notebook import checks_markdown, diagnosis_markdown, markdown_table, package_version
from gp_lib.protocol import INTERNAL_ERROR
from gp_lib.trace import ATTEMPT_COLUMNS, connection_metrics, load_jsonl, save_jsonl

SCENARIO = har.SCENARIO
REPORT = "GOLDEN_PATH_CAPTURED_TRACE_TEST_REPORT.md"
TITLE = "Captured trace"
class TraceError(ValueError):
    """The file cannot be read as a trace; the message names it."""


@dataclass
class Trace:
    """A captured trace as tables, and what could not be read from it."""

    path: Path
    kind: str                     # "HAR" or "JSONL"
    attempts: pd.DataFrame
    frames: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    entries: int | None = None    # HAR entries of any kind


@dataclass
class Analysis:
    """What a trace says: checks, metrics, the runs the validators saw, the diagnosis."""

    trace: Trace
    checks: list[Check]
    metrics: dict[str, Any]
    runs: pd.DataFrame
    findings: list[Any]

    @property
    def verdict(self) -> str:
        return verdict(self.checks) if not self.findings else "fail"


# -- reading -------------------------------------------------------------------------------------

#: The largest trace read (a HAR import has the same limit).
MAX_TRACE_BYTES = har.MAX_HAR_BYTES
#: What `gp analyze` reads, said whenever a file is not it.
EXPECTED = ("expected a toolkit JSONL trace (one JSON object per line, each with \"record\": \"attempt\" or "
            "\"frame\", as in OUT/traces/*.jsonl) or a HAR saved from browser DevTools (a JSON object with \"log\")")
#: Leading bytes of files people pick up by mistake.
MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
         (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip file"), (b"<?xml", "an XML file"),
         (b"<testsuites", "a JUnit XML report"), (b"<!doctype html", "an HTML page"), (b"<html", "an HTML page"))


def load_trace(path: str | Path) -> Trace:
    """Read a HAR file or a toolkit JSONL trace, told apart by content, not by name.

    Raises:
        TraceError: the file is missing, neither a HAR nor a JSONL trace (saying what it is instead,
            and what was expected), or holds no connection.
    """
    path = Path(path)
    if path.is_dir():
        traces = sorted(path.glob("traces/*.jsonl"))
        raise TraceError(f"{path}: is a directory" + (f" (a run folder: analyze one of its traces, e.g. "
                                                       f"{traces[0]})" if traces else "") + f"; {EXPECTED}")
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_TRACE_BYTES + 1)  # read, not stat: a pipe has no size
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read ({exc})") from None
    if len(raw) > MAX_TRACE_BYTES:
        raise TraceError(f"{path}: over the {MAX_TRACE_BYTES}-byte limit of a trace; analyze a part of it")
    what = describe(raw)
    if what:
        raise TraceError(f"{path}: is {what}, not a trace; {EXPECTED}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TraceError(f"{path}: is binary, not text; {EXPECTED}") from None
    try:
        if _is_har(text):
            imported = har.load_har(path)
            if not imported.websocket_entries:
                raise TraceError(f"{path}: none of its {imported.entries} entries is a WebSocket: save the HAR "
                                 "from the page that opened the socket, with the socket in the Network panel")
            return Trace(path, "HAR", imported.attempts, imported.frames, imported.problems, imported.entries)
        attempts, frames = load_jsonl(path)
    except ValueError as exc:
        raise TraceError(f"{exc}; {EXPECTED}") from None
    if attempts.empty and frames.empty:
        raise TraceError(f"{path}: holds no attempts and no frames; {EXPECTED}")
    columns = dict.fromkeys([*ATTEMPT_COLUMNS, *attempts.columns])  # a trace written by other tools may lack some
    return Trace(path, "JSONL", attempts.reindex(columns=list(columns)), frames)


def describe(raw: bytes) -> str | None:
    """What a file that is surely not a trace is ("a PNG image", "a run's summary.json"...), else None."""
    head = raw[:64].lstrip()
    for magic, what in MAGIC:
        if head.lower().startswith(magic.lower()):
            return what
    if not raw.strip():
        return "empty"
    text = raw.decode("utf-8", "replace")
    data, _, _ = protocol.load_json(text, limit=len(text) + 1)  # a file the user chose: its depth stays bounded
    if isinstance(data, dict):
        if "scenarios" in data and "verdict" in data:
            return "a run's summary.json (compare runs with `gp compare`; the run's traces are in its traces/ folder)"
        if "cells" in data and "nbformat" in data:
            return "a Jupyter notebook"
    if text.lstrip().startswith("#") and not text.lstrip().startswith("#!"):
        return "Markdown text (a report?)"
    return None


def _is_har(text: str) -> bool:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "log" in data


# -- judging -------------------------------------------------------------------------------------

def analyze(trace: Trace) -> Analysis:
    """Run the checks, the event validators and the diagnosis on a trace."""
    checks, metrics, runs = trace_checks(trace.attempts, trace.frames)
    metrics["problems"] = len(trace.problems)
    findings = diagnosis.diagnose_tables(trace.attempts, trace.frames, {SCENARIO: checks})
    return Analysis(trace, checks, metrics, runs, findings)


def trace_checks(attempts: pd.DataFrame, frames: pd.DataFrame) -> tuple[list[Check], dict[str, Any], pd.DataFrame]:
    """Checks, metrics and the agent runs of a trace, from its tables alone.

    The connection checks apply to any trace; the event checks only when an
    agent run was requested or seen, so a capture without agent traffic is
    not failed for what it never tried.
    """
    total = len(attempts)
    outcomes = attempts["outcome"]
    received_any = pd.to_numeric(attempts["frames_received"], errors="coerce").fillna(0) > 0
    upgraded = attempts[(attempts["handshake_status"] == 101) | received_any]  # a HAR may lack the status
    ready = int(upgraded["t_ready_ms"].notna().sum())
    close_codes = pd.to_numeric(attempts["close_code"], errors="coerce")
    closed_1011 = int((close_codes == INTERNAL_ERROR).sum())
    unknown = int(close_codes.isna().sum())
    runs = events.requested_runs(frames, attempts)
    observed = runs[runs["events"] > 0]
    received = events.run_events(frames, attempts)
    complete = int(runs["complete"].astype(bool).sum())
    out_of_order = int((~observed["in_order"].astype(bool)).sum())
    open_tools = int((~observed["tools_closed"].astype(bool)).sum())
    leaks = int(received["foreign"].astype(bool).sum())

    checks = [
        none_check("upgrades_accepted", total - len(upgraded), total, what="upgrades not answered with 101"),
        ratio_check("connections_ready", ready, len(upgraded), at_least=1.0,
                    what="upgraded connections received a readiness marker"),
        none_check("no_1011_closes", closed_1011, total, what="attempts closed 1011"
                   + (f" (close code not recorded for {unknown})" if unknown else "")),
    ]
    if len(runs):
        checks += [
            _completeness(runs, complete),
            Check("started_first_completed_last", out_of_order == 0,
                  f"{out_of_order} of {len(observed)} runs broke the order" + _example(observed, "in_order")),
            Check("tool_calls_closed", open_tools == 0,
                  f"{open_tools} of {len(observed)} runs left a tool call unclosed" + _example(observed, "tools_closed")),
            Check("no_cross_user_events", leaks == 0,
                  f"{leaks} of {len(received)} agent events arrived on another user's socket"),
        ]
    metrics = {
        "attempts": total,
        **{outcome: int((outcomes == outcome).sum()) for outcome in dict.fromkeys(outcomes.dropna())},
        "closed_1011": closed_1011,
        "close_code_unknown": unknown,
        **connection_metrics(attempts),
        "runs": len(runs),
        "complete_runs": complete,
        "completeness_rate": round(complete / len(runs), 4) if len(runs) else None,
        "cross_user_events": leaks,
        "invalid_frames": int(pd.to_numeric(attempts["invalid_frames"], errors="coerce").fillna(0).sum()),
    }
    return checks, metrics, runs


def _completeness(runs: pd.DataFrame, complete: int) -> Check:
    lacking = runs.loc[~runs["complete"].astype(bool), "missing"].value_counts()
    return Check("all_five_events", complete == len(runs),
                 f"{complete} of {len(runs)} agent runs showed all five events"
                 + "".join(f"; {n} lacked {missing}" for missing, n in lacking.items()))


def _example(runs: pd.DataFrame, column: str) -> str:
    bad = runs.loc[~runs[column].astype(bool), "problems"]
    return f"; e.g. {bad.iloc[0].split('; ')[0]}" if len(bad) and bad.iloc[0] else ""


# -- writing -------------------------------------------------------------------------------------

def write(analysis: Analysis, out: str | Path, command: str) -> Path:
    """Write the report, summary.json, junit.xml, figures and the imported tables under `out`; the report's path."""
    from gp_lib.plots.history import trace_timeline

    out = Path(out)
    (out / report.ASSETS).mkdir(parents=True, exist_ok=True)
    trace = analysis.trace
    figure = out / report.ASSETS / f"{SCENARIO}-timeline.png"
    trace_timeline(trace.attempts, trace.frames).savefig(figure, dpi=110, bbox_inches="tight")
    save_jsonl(out / "traces" / f"{SCENARIO}.jsonl", trace.attempts, trace.frames)
    summary = summary_of(analysis, out.name)
    (out / "summary.json").write_text(report.summary_json(summary))
    (out / "junit.xml").write_text(report.junit_xml(summary, {}))
    context = report.ReportContext(
        scenario=SCENARIO, title=f"{TITLE}: {trace.path.name}", verdict=analysis.verdict, error=None,
        facts=[("file", str(trace.path)), ("kind", trace.kind), ("analysed", summary["started_at"])],
        command=command, parameters={})
    text, _ = report.render(report_notebook(analysis, f"{report.ASSETS}/{figure.name}"), context)
    path = out / REPORT
    path.write_text(text)
    return path


def summary_of(analysis: Analysis, run_id: str) -> dict[str, Any]:
    """The summary.json of an analysis, in the DESIGN.md schema (mode `captured`)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"run_id": run_id, "mode": "captured", "target": str(analysis.trace.path), "started_at": now,
            "finished_at": now, "verdict": analysis.verdict,
            "scenarios": {SCENARIO: {"verdict": analysis.verdict, "report": REPORT,
                                     "checks": [c.to_dict() for c in analysis.checks],
                                     "metrics": analysis.metrics}},
            "diagnosis": [f.to_dict() for f in analysis.findings]}


def report_notebook(analysis: Analysis, figure: str) -> nbformat.NotebookNode:
    """The report's sections as section-tagged Markdown cells, for `report.render`."""
    trace = analysis.trace
    failed = [c.name for c in analysis.checks if c.failed]
    headline = [{"figure": k, "value": analysis.metrics.get(k)} for k in
                ("attempts", "closed_1011", "close_code_unknown", "runs", "complete_runs", "cross_user_events")]
    verdict_text = (f"**Verdict: {report.BADGES[analysis.verdict]}** for `{trace.path.name}`: "
                    + (f"{len(failed)} of {len(analysis.checks)} checks failed ({', '.join(failed)})"
                       if failed else f"all {len(analysis.checks)} checks passed")
                    + ("" if not analysis.findings else f"; strongest root cause: {analysis.findings[0].root_cause}")
                    + "\n\n" + markdown_table(headline))
    impact = "\n\n".join(f"**{f.root_cause}**: {IMPACT[f.root_cause]}" for f in analysis.findings[:2]
                         if f.root_cause in IMPACT) or "Nothing wrong was found in this trace: no impact to report."
    root_cause = diagnosis_markdown(analysis.findings)
    if trace.problems:
        root_cause += (f"\n\n**{len(trace.problems)} parts of the file could not be read** (left out of the "
                       "analysis):\n\n" + "\n".join(f"- {p}" for p in trace.problems))
    results = (checks_markdown(analysis.checks) + "\n\n**How the connections ended**\n\n"
               + markdown_table(endings(trace.attempts)))
    if len(analysis.runs):
        results += "\n\n**Agent runs seen by the validators**, alike ones counted once\n\n" \
            + markdown_table(run_kinds(analysis.runs))
    results += (f"\n\nEvery attempt ({len(trace.attempts)}) and frame ({len(trace.frames)}) is in "
                f"[traces/{SCENARIO}.jsonl](traces/{SCENARIO}.jsonl): `gp analyze` reads it back, and pandas reads "
                "it with `gp_lib.trace.load_jsonl`.")
    from gp_lib.plots.history import MAX_TIMELINE_ROWS

    sampled = len(trace.attempts) > MAX_TIMELINE_ROWS
    plots = ("Each row is one connection; each mark a frame, at its time since the connection started; an x is a "
             "close, coloured by its code. A run missing events shows gaps in its colour sequence."
             + (f" With {len(trace.attempts)} connections the timeline shows an evenly spaced sample of "
                f"{MAX_TIMELINE_ROWS}, as its title says." if sampled else "") + f"\n\n![timeline]({figure})")
    environment = markdown_table([
        {"item": "file", "value": str(trace.path)}, {"item": "kind", "value": trace.kind},
        *([{"item": "HAR entries", "value": trace.entries}] if trace.entries is not None else []),
        {"item": "connection attempts", "value": len(trace.attempts)},
        {"item": "frames and marks", "value": len(trace.frames)},
        {"item": "problems in the file", "value": len(trace.problems)},
        {"item": "golden-path-lab", "value": package_version("golden-path-lab")},
        {"item": "python", "value": platform.python_version()}])
    remediation = ("A capture alone cannot verify a fix. Capture the same user flow after the fix is deployed, "
                   "analyse it with `gp analyze`, and compare the two outputs: `gp compare OUT_BEFORE OUT_AFTER` "
                   "exits 1 when the later one is worse.")
    reproduce = "The analysis reads only the file, so the same command gives the same report."
    notebook = nbformat.v4.new_notebook()
    for section, text in (("next", next_text(analysis)), ("verdict", verdict_text), ("impact", impact), ("root-cause", root_cause),
                          ("results", results), ("plots", plots), ("environment", environment),
                          ("remediation", remediation), ("reproduce", reproduce)):
        notebook.cells.append(nbformat.v4.new_markdown_cell(text, metadata={"tags": [f"section-{section}"]}))
    return notebook


def next_text(analysis: Analysis) -> str:
    """What to do now about a capture: the strongest cause, where to look, and how to verify the fix."""
    from gp_lib.next_steps import GUIDES

    name = analysis.trace.path.name
    verify = ("**After deploying the fix**, capture the same user flow again and compare:\n\n```sh\n"
              f"gp analyze AFTER.{'har' if analysis.trace.kind == 'HAR' else 'jsonl'} --out OUT_AFTER\n"
              "gp compare OUT OUT_AFTER\n```\n\n(OUT is this report's folder.)")
    if not analysis.findings:
        failed = [c.name for c in analysis.checks if c.failed]
        if not failed:
            return f"**Nothing to fix in `{name}`:** no check failed and no root cause has evidence."
        return (f"**No known root cause explains the failing checks** ({', '.join(failed)}): "
                f"{GUIDES['unknown'].where}\n\n{verify}")
    top = analysis.findings[0]
    guide = GUIDES.get(top.root_cause, GUIDES["unknown"])
    return "\n\n".join([f"**Cause:** {guide.name} (`{top.root_cause}`)" + (f": {inert(top.evidence[0])}."
                                                                            if top.evidence else "."),
                          f"**Where to look in the server:** {guide.where}",
                          *([f"**Then prove it live:** `gp report --target URL --scenario {guide.scenario}`."]
                            if guide.scenario else []),
                          verify])


def endings(attempts: pd.DataFrame, limit: int = 12) -> pd.DataFrame:
    """How the attempts ended, counted: outcome, close code and reason (or HTTP status), most frequent first."""
    columns = ["attempts", "outcome", "close code", "close reason or HTTP status"]
    if not len(attempts):
        return pd.DataFrame(columns=columns)
    code = pd.to_numeric(attempts["close_code"], errors="coerce")
    status = pd.to_numeric(attempts["handshake_status"], errors="coerce")
    said = [f"HTTP {int(s)}" if pd.notna(s) and s != 101 else (r if isinstance(r, str) and r else "")
            for s, r in zip(status, attempts["close_reason"])]
    table = pd.DataFrame({"outcome": attempts["outcome"].fillna("unknown").astype(str),
                          "close code": [str(int(c)) if pd.notna(c) else "not recorded" for c in code],
                          "close reason or HTTP status": said})
    counted = table.value_counts().rename("attempts").reset_index()
    if len(counted) > limit:
        rest = int(counted["attempts"].iloc[limit - 1:].sum())
        counted = pd.concat([counted.iloc[:limit - 1], pd.DataFrame([{
            "attempts": rest, "outcome": f"{len(counted) - limit + 1} other endings", "close code": "",
            "close reason or HTTP status": ""}])], ignore_index=True)
    return counted[columns]


def run_kinds(runs: pd.DataFrame) -> pd.DataFrame:
    """The agent runs grouped by how they ended and what they lacked, with an example run of each."""
    table = runs.assign(missing=runs["missing"].fillna("").astype(str).replace("", "none"),
                        ending=runs["ending"].fillna("").astype(str),
                        problems=runs["problems"].fillna("").astype(str).map(lambda p: p.split("; ")[0]))
    grouped = table.groupby(["ending", "missing", "problems"], sort=False).agg(
        runs=("run_id", "size"), example=("run_id", "first")).reset_index()
    grouped = grouped.sort_values("runs", ascending=False, kind="stable")
    return grouped[["runs", "ending", "missing", "problems", "example"]].rename(
        columns={"problems": "first problem", "example": "example run"})


# -- the command line -----------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a trace: the toolkit's JSONL (OUT/traces/*.jsonl) or a "
                        "browser HAR saved from DevTools")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: reports/<run id>-<file "
                        "name>)")


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.file)
    except TraceError as exc:
        print(f"gp analyze: {exc}", file=sys.stderr)
        return 2
    analysis = analyze(trace)
    if args.out:
        out = Path(args.out)
    else:
        from gp_lib.batch import REPORTS_DIR

        out = REPORTS_DIR / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{trace.path.stem}"
    command = shlex.join(["gp", "analyze", str(args.file), *(["--out", str(args.out)] if args.out else [])])
    try:
        path = write(analysis, out, command)
    except OSError as exc:  # exit 1 would say "a root cause was found"
        print(f"gp analyze: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    for problem in trace.problems:
        print(f"gp analyze: warning: {problem}", file=sys.stderr)
    print(f"gp analyze: {analysis.verdict}: {path}")
    return 1 if analysis.findings or any(c.failed for c in analysis.checks) else 0
