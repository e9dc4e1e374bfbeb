"""What the investigation notebooks display, so that they stay thin.

Each function shows one part of a notebook as Markdown (readable in JupyterLab
and in the Markdown report alike). Report sections are cell tags: a cell tagged
`section-<name>` lands in that section of the GOLDEN_PATH_*_TEST_REPORT.md, in
the order of `SECTIONS`; untagged cells stay in the notebook only.

Scraps glued for batch runs and reviews (`glue_result`): `scenario`, `verdict`,
`mode`, `target` (live mode only), `checks`, `arm_checks`, `metrics`, `diagnosis`, `params`,
`traces`, `figures`, `summary`, and when there is one, `headline` (the words after the report title's badge)
and `failures_belong_to` (the root cause that failed this scenario's checks when its own was not seen).
"""

from __future__ import annotations

import ast
import difflib
import platform
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from gp_lib import escape
from gp_lib.checks import Check, checks_table

#: Report sections, in order: what to do first, then the findings before their business impact (issue 11 changed
#: DESIGN.md's order); a cell joins one with the tag `section-<name>`.
SECTIONS = ("next", "verdict", "root-cause", "impact", "results", "plots", "environment", "remediation", "reproduce")
SECTION_TITLES = {
    "next": "What to do now",
    "verdict": "Verdict",
    "impact": "Business impact",
    "root-cause": "Technical root-cause analysis",
    "results": "Test execution results",
    "plots": "Plots",
    "environment": "Environment",
    "remediation": "Remediation verification",
    "reproduce": "Reproduce this run",
}
VERSIONED = ("golden-path-lab", "websockets", "PyJWT", "pandas", "matplotlib", "papermill", "nbconvert", "scrapbook")
BADGES = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "inconclusive": "INCONCLUSIVE"}


# -- text building (pure, tested) ---------------------------------------------------------

def markdown_table(table: pd.DataFrame | Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; every cell is shown literally (`escape.markdown`: no markup, no
    line break, cut at `escape.DEFAULT_LIMIT` characters), except `escape.Trusted` text."""
    if isinstance(table, pd.DataFrame):
        names = list(columns) if columns is not None else list(table.columns)
        cells = [list(row) for row in table[names].itertuples(index=False)]
    else:  # rows as given: a DataFrame would turn `escape.Trusted` text into plain str
        rows = list(table)
        names = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
        cells = [[row.get(name) for name in names] for row in rows]
    if not cells:
        return "_(none)_"
    header = "| " + " | ".join(escape.markdown(c) for c in names) + " |"
    rule = "| " + " | ".join("---" for _ in names) + " |"
    lines = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in cells]
    return "\n".join([header, rule, *lines])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):  # four significant digits, but 30000 ms stays 30000, not 3e+04
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return escape.markdown(value)


def verdict_markdown(result: Any, headline: Sequence[str] = (), findings: Sequence[Any] = ()) -> str:
    """The verdict line, whose failures they are when another root cause made them, and the headline figures."""
    from gp_lib import next_steps

    badge = BADGES[result.verdict]
    if result.error:
        lines = [f"**Verdict: {badge}**: the run could not be made: {escape.markdown(result.error)}"]
    elif result.mode == "reference":
        reproduced = next((c for c in result.checks if c.name == "issue_reproduced"), None)
        fixed_failures = [c for c in result.checks if c.arm == "fixed" and c.failed]
        lines = [f"**Verdict: {badge}** (reference mode: the reference server with the fault injected and fixed, "
                 "both arms at once)",
                 "",
                 f"- Issue reproduced in the faulty arm: **{'yes' if reproduced and reproduced.passed else 'no'}**",
                 f"- Remediation verified in the fixed arm: **{'yes' if not fixed_failures else 'no'}**"
                 + ("" if not fixed_failures else " (" + ", ".join(escape.markdown(c.name) for c in fixed_failures)
                    + " failed)")]
    else:
        failed = [c for c in result.checks if c.failed]
        undecided = [c for c in result.checks if c.inconclusive]
        decided = f"{len(result.checks) - len(undecided)}{' decided' if undecided else ''} checks"
        lines = [f"**Verdict: {badge}** against {escape.markdown(result.target)}: "
                 + (f"{len(failed)} of {decided} failed ({', '.join(escape.markdown(c.name) for c in failed)})"
                    if failed else f"all {decided} passed")
                 + (f"; {len(undecided)} inconclusive on this target "
                    f"({', '.join(escape.markdown(c.name) for c in undecided)})" if undecided else "")]
        other = next_steps.attribution(result, findings)
        if other:
            lines += ["", f"**These failures belong to another root cause: {other}.** This scenario's own cause, "
                          f"{next_steps.GUIDES[result.scenario].name}, was not seen (the diagnosis says why)."]
    figures = [(name, result.metrics[name]) for name in _headline_keys(result, headline) if name in result.metrics]
    if figures:
        lines += ["", "| figure | value |", "| --- | --- |"] + [f"| {n} | {_cell(v)} |" for n, v in figures]
    return "\n".join(lines)


def _headline_keys(result: Any, headline: Sequence[str]) -> list[str]:
    if result.mode == "reference":
        return [f"{arm}.{name}" for name in headline for arm in ("faulty", "fixed")]
    return list(headline)


def checks_markdown(checks: Iterable[Check]) -> str:
    return markdown_table(checks_table(checks))


def remediation_markdown(result: Any) -> str:
    """Fault arm against fixed arm, check by check; in live mode, how to verify a fix."""
    if result.mode != "reference":
        return ("A live run alone cannot verify a fix. Keep this run and compare it with one made after the fix "
                "is deployed: `gp compare reports/<before> reports/<after>` lists every check and metric side by "
                "side and exits 1 when the later run is worse.")
    faulty = {c.name: c for c in result.arm_checks.get("faulty", [])}
    fixed = {c.name: c for c in result.arm_checks.get("fixed", [])}
    rows = []
    for name in list(dict.fromkeys([*faulty, *fixed])):
        rows.append({"check": name,
                     "faulty arm": _judged(faulty.get(name)),
                     "fixed arm": _judged(fixed.get(name))})
    verified = not any(c.failed for c in fixed.values()) and any(c.failed for c in faulty.values())
    summary = ("The fault makes these checks fail and the fix makes every one pass: remediation verified."
               if verified else "The arms do not show a clean fault/fix contrast: remediation NOT verified.")
    return summary + "\n\n" + markdown_table(rows)


def _judged(check: Check | None) -> str:
    if check is None:
        return ""
    return check.status.upper() + f": {check.evidence}"


def environment_markdown(result: Any) -> str:
    """Target, mode, parameters (secrets redacted) and versions."""
    rows = [{"item": "mode", "value": result.mode},
            {"item": "target", "value": result.target or "reference server (started per arm on 127.0.0.1)"},
            *({"item": f"dialect ({arm})", "value": found["how"]} for arm, found in result.dialect.items()),
            {"item": "started", "value": result.started_at},
            {"item": "finished", "value": result.finished_at},
            {"item": "python", "value": platform.python_version()},
            {"item": "platform", "value": platform.platform(terse=True)}]
    rows += [{"item": name, "value": package_version(name)} for name in VERSIONED]
    params = [{"parameter": k, "value": v} for k, v in sorted(result.params.items())]
    return markdown_table(rows) + "\n\n**Parameters** (secrets are never parameters; only the names of the " \
                                  "environment variables that hold them)\n\n" + markdown_table(params)


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def reproduce_command(result: Any, defaults: dict[str, Any]) -> str:
    """The `gp report` command that repeats this run: every parameter that differs from its default."""
    parts = ["gp", "report", "--scenario", result.scenario]
    if result.target:
        parts += ["--target", result.target]
    for name, value in sorted(result.params.items()):
        if name in ("target_url", "out_dir") or value == defaults.get(name) or value == "<redacted>":
            continue
        parts += ["-p", f"{name}={_param_text(value)}"]
    return " ".join(shlex.quote(p) for p in parts)


def _param_text(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def diagnosis_markdown(findings: Sequence[Any]) -> str:
    """The diagnosis, strongest cause first, with its evidence."""
    if not findings:
        return "**Diagnosis:** nothing wrong was seen: none of the root causes has evidence in this run."
    lines = ["**Diagnosis** (strongest first)", ""]
    for rank, finding in enumerate(findings, 1):
        lines.append(f"{rank}. **{escape.markdown(finding.root_cause)}** (confidence {finding.confidence:.2f})")
        lines += [f"   - {escape.markdown(sentence)}" for sentence in finding.evidence]
    return "\n".join(lines)


def params_from(namespace: dict[str, Any], params_class: type) -> Any:
    """The scenario's Params built from the notebook's parameter variables, validated.

    A name assigned in the parameters cell or injected by papermill that the
    scenario does not know (a typo) stops the notebook, naming it: left alone it
    would leave the default in force without a word.

    Raises:
        ParameterError: naming the unknown parameter, or the first wrong value.
    """
    from gp_lib.scenarios.common import ParameterError

    known = params_class.names()
    unknown = [name for name in parameter_names(namespace.get("In") or []) if name not in known]
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1)) else name
                 for name in unknown]
        raise ParameterError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: set in the "
                             f"parameters cell or injected by papermill, but {params_class.__module__} does not "
                             f"know {'them' if len(unknown) > 1 else 'it'} (known: {', '.join(known)})")
    return params_class.from_mapping({name: namespace[name] for name in known if name in namespace})


def parameter_names(sources: Sequence[str]) -> list[str]:
    """Names assigned by the parameter cells just run, from the executed cell sources (IPython's `In`).

    A parameters cell, and the cell papermill injects after it, hold only
    assignments of literal values. They are the run of such cells right before
    the cell executing now, so a typo fixed and run again is forgotten.
    """
    cells = list(sources)
    if cells and not _assigns_literals(cells[-1]):  # the cell running now
        cells.pop()
    names: dict[str, None] = {}
    for source in reversed(cells):
        body = _assigns_literals(source)
        if not body:
            break
        names.update((target.id, None) for node in body for target in node.targets if isinstance(target, ast.Name))
    return list(names)


def _assigns_literals(source: str) -> list[ast.Assign]:
    """The statements of `source` when it only assigns literal values, else an empty list."""
    try:
        body = ast.parse(source or "").body
    except SyntaxError:
        return []
    return body if body and all(isinstance(node, ast.Assign) and _literal(node.value) for node in body) else []


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


# -- display in a notebook ------------------------------------------------------------------

def show(markdown: str) -> None:
    """Display Markdown (in JupyterLab, and as Markdown in the nbconvert export)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown))


def show_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> None:
    show(markdown_table(table, columns))


def show_figure(figure: Any, name: str, result: Any, out_dir: str | Path, figures: list[str]) -> None:
    """Save a figure as `OUT/assets/<scenario>-<name>.png`, record its path, and display it."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    path = Path(out_dir) / "assets" / f"{result.scenario}-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)  # laid out by its maker (tight_layout), so no second draw to crop it
    plt.close(figure)
    figures.append(str(path))
    display(Image(filename=str(path)))


def glue_result(result: Any, findings: Sequence[Any], traces: Sequence[str], figures: Sequence[str]) -> None:
    """Glue the scraps that batch runs and reviews read (see the module docstring)."""
    from gp_lib import next_steps

    glue({
        "scenario": result.scenario,
        "verdict": result.verdict,
        "mode": result.mode,
        "target": result.target,
        "checks": [c.to_dict() for c in result.checks],
        "arm_checks": {arm: [c.to_dict() for c in checks] for arm, checks in result.arm_checks.items()},
        "metrics": result.metrics,
        "diagnosis": [f.to_dict() for f in findings],
        "params": result.params,
        "traces": list(traces),
        "figures": list(figures),
        "summary": result.summary(),
        "headline": next_steps.headline(result, findings),
        "failures_belong_to": next_steps.attribution(result, findings),
    })


#: The output type scrapbook stores a JSON scrap under.
SCRAP_MIMETYPE = "application/scrapbook.scrap.json+json"


def glue(scraps: Mapping[str, Any]) -> None:
    """Glue each scrap as `scrapbook.glue` would (see `scrap_output`); a None value is left out,
    since scrapbook cannot read a null scrap (the target in reference mode)."""
    from IPython.display import display

    for name, value in scraps.items():
        if value is not None:
            data, metadata = scrap_output(name, value)
            display(data, metadata=metadata, raw=True)


def scrap_output(name: str, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The display data and metadata of one JSON scrap, exactly as `scrapbook.glue` writes it.

    Written here rather than by `scrapbook.glue` because importing scrapbook in
    the kernel pulls in papermill and jsonschema's format checkers: seconds of
    start-up per notebook for what is one display call. `scrapbook.read_notebook`
    reads these scraps like its own (a test keeps it so).
    """
    payload = {"name": name, "data": _jsonable(value), "encoder": "json", "version": 1}
    return ({SCRAP_MIMETYPE: payload},
            {"scrapbook": {"name": name, "data": True, "display": False}})


def read_scraps(nb: Any) -> dict[str, Any]:
    """The JSON scraps of an executed notebook, by name (a later one replaces an earlier one), as
    `scrapbook.read_notebook(...).scraps` reads them: the inverse of `scrap_output`, without importing
    scrapbook (and papermill with it) into the batch process."""
    scraps = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(SCRAP_MIMETYPE)
            if isinstance(payload, dict) and "name" in payload:
                scraps[payload["name"]] = payload.get("data")
    return scraps


def _jsonable(value: Any) -> Any:
    """Numpy and pandas scalars as plain Python, so scrapbook's JSON encoder takes them."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
