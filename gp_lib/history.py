"""Runs as a post-incident review reads them: every run under a reports directory, trends, what changed.

A run is a directory that `gp report` (or `gp analyze`) wrote (DESIGN.md,
"What a run writes"). Its `summary.json` is read when there is one; a run
without it (a batch stopped before the end, notebooks executed by hand into a
run directory) is read from the scrapbook scraps of its executed notebooks
under `notebooks/`. Either way it becomes one `Run`.

Metric names differ per scenario and mode, and reference-mode metrics carry
the arm as a prefix (`faulty.`, `fixed.`). Trends therefore look each figure
up by a list of candidate names (`TRENDS`) and keep the arm as a column; a
run or scenario without the figure is a gap with a reason, never an error.

- `load_run(path)`, `find_runs(reports_dir)`: read runs;
- `checks_table(run)`, `metrics_table(run)`: a run as long tables;
- `check_changes(a, b)`, `metric_changes(a, b)`, `verdict_changes(a, b)`: two runs side by side;
- `regressions(a, b)`: how B is worse than A, in sentences (empty when it is not);
- `trends(runs)`, `trend_gaps(trends)`, `verdicts(runs)`, `changed_checks(runs)`: the review's tables;
- `review(reports_dir)`: all of it for the incident-review notebook (`Review`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from gp_lib.checks import INCONCLUSIVE, overall_verdict, status_of, verdict_of

SUMMARY = "summary.json"
#: A summary holds checks and metrics of a few scenarios: kilobytes. Far more is not one.
MAX_SUMMARY_BYTES = 64 << 20
VERDICT_RANK = {"pass": 0, "fail": 1, "error": 2}
ARMS = ("faulty", "fixed")


class RunError(ValueError):
    """A run cannot be read; the message names the file and what is wrong with it."""


@dataclass
class Run:
    """One run, whichever file it was read from.

    Attributes:
        scenarios: `{name: {"verdict", "checks": [{"name", "passed", "evidence", "status"?, "arm"?}], "metrics": {...}}}`.
        source: `summary.json` or `scrapbook`.
    """

    path: Path
    run_id: str
    started_at: str | None
    mode: str | None
    target: str | None
    verdict: str
    scenarios: dict[str, dict[str, Any]]
    diagnosis: list[dict[str, Any]] = field(default_factory=list)
    source: str = SUMMARY


# -- reading runs -------------------------------------------------------------------------------

def load_run(path: str | Path) -> Run:
    """The run in a run directory (or named by its summary.json).

    Raises:
        RunError: no such file or directory, or nothing readable in it, naming the path.
    """
    path = Path(path)
    if path.is_file() or path.name == SUMMARY:
        return _from_summary(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory or summary.json")
    if (path / SUMMARY).is_file():
        return _from_summary(path / SUMMARY)
    notebooks = sorted((path / "notebooks").glob("*.ipynb"))
    if notebooks:
        return _from_notebooks(path, notebooks)
    raise RunError(f"{path}: neither {SUMMARY} nor executed notebooks under notebooks/")


def find_runs(reports_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Every run in `reports_dir` (itself or its subdirectories), oldest first, and the problems met.

    `reports/latest` and other links to a run are read once. A directory that
    is not a run is skipped; one that looks like a run but cannot be read is
    listed in the problems, not fatal. Two runs with one run id (a copied
    run) are told apart by their folder names.
    """
    root = Path(reports_dir)
    if not root.is_dir():
        return [], [f"{root}: no such reports directory"]
    runs: list[Run] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        resolved = candidate.resolve()
        if resolved in seen or not _looks_like_run(candidate):
            continue
        seen.add(resolved)
        try:
            runs.append(load_run(candidate))
        except RunError as exc:
            problems.append(str(exc))
    counts = Counter(run.run_id for run in runs)
    for run in runs:  # a copied run keeps its id: tell the copies apart by folder
        if counts[run.run_id] > 1:
            run.run_id = f"{run.run_id} ({run.path.name})"
    return sorted(runs, key=_run_order), problems


def _looks_like_run(path: Path) -> bool:
    return (path / SUMMARY).is_file() or any((path / "notebooks").glob("*.ipynb"))


def _run_order(run: Run) -> tuple[str, str]:
    return (run.started_at or "", run.run_id)


def _from_summary(path: Path) -> Run:
    if path.is_file() and path.stat().st_size > MAX_SUMMARY_BYTES:
        raise RunError(f"{path}: {path.stat().st_size} bytes, over the {MAX_SUMMARY_BYTES}-byte limit of a summary")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{path}: not a readable JSON file ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise RunError(f"{path}: not a readable JSON file (nested too deeply)") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: a summary must be a JSON object")
    raw = data.get("scenarios")
    if not isinstance(raw, dict):
        raise RunError(f"{path}: 'scenarios' must be an object of scenario entries")
    scenarios = {str(name): _scenario(path, str(name), entry) for name, entry in raw.items()}
    diagnosis = data.get("diagnosis") or []
    if not isinstance(diagnosis, list):
        raise RunError(f"{path}: 'diagnosis' must be a list")
    verdict = data.get("verdict") or overall_verdict(s["verdict"] for s in scenarios.values())
    if verdict not in VERDICT_RANK:
        raise RunError(f"{path}: verdict must be pass, fail or error, not {verdict!r}")
    return Run(path=path.parent, run_id=str(data.get("run_id") or path.parent.name),
               started_at=_text(data.get("started_at")), mode=_text(data.get("mode")),
               target=_text(data.get("target")), verdict=verdict, scenarios=scenarios,
               diagnosis=[d for d in diagnosis if isinstance(d, dict)], source=SUMMARY)


def _scenario(path: Path, name: str, entry: Any) -> dict[str, Any]:
    """One scenario entry, checked field by field so that a bad file is named, not half-read."""
    where = f"{path}: scenarios.{name}"
    if not isinstance(entry, dict):
        raise RunError(f"{where} must be an object")
    checks = entry.get("checks") or []
    if not isinstance(checks, list):
        raise RunError(f"{where}.checks must be a list")
    for number, check in enumerate(checks):
        if not isinstance(check, dict) or not isinstance(check.get("name"), str) \
                or not (isinstance(check.get("passed"), bool) or check.get("status") == INCONCLUSIVE):
            raise RunError(f"{where}.checks[{number}] needs a text 'name' and a true/false 'passed' "
                           f"(or status 'inconclusive')")
    metrics = entry.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise RunError(f"{where}.metrics must be an object")
    verdict = entry.get("verdict") or verdict_of({status_of(c) for c in checks})
    if verdict not in VERDICT_RANK:
        raise RunError(f"{where}.verdict must be pass, fail or error, not {verdict!r}")
    return {"verdict": verdict, "checks": checks, "metrics": _flat(metrics), "report": entry.get("report")}


def _from_notebooks(path: Path, notebooks: Sequence[Path]) -> Run:
    """A run read from the scraps its executed notebooks glued (gp_lib.notebook.glue_result)."""
    import nbformat
    import scrapbook as sb

    scenarios: dict[str, dict[str, Any]] = {}
    diagnosis: list[dict[str, Any]] = []
    modes, targets, starts = set(), set(), []
    for notebook in notebooks:
        try:
            scraps = {name: scrap.data for name, scrap in sb.read_notebook(str(notebook)).scraps.items()}
            started = nbformat.read(str(notebook), as_version=4).metadata.get("papermill", {}).get("start_time")
        except Exception as exc:  # scrapbook and nbformat raise many kinds for a broken file
            raise RunError(f"{notebook}: not a readable executed notebook ({exc})") from None
        if "scenario" not in scraps and "verdict" not in scraps:
            continue  # not a scenario notebook (no result glued)
        name = str(scraps.get("scenario") or notebook.stem)
        scenarios[name] = _scenario(notebook, name, {"verdict": scraps.get("verdict") or "error",
                                                     "checks": scraps.get("checks"),
                                                     "metrics": scraps.get("metrics")})
        diagnosis += [d for d in scraps.get("diagnosis") or [] if isinstance(d, dict)]
        modes.add(scraps.get("mode"))
        targets.add(scraps.get("target"))
        if started:
            starts.append(str(started))
    if not scenarios:
        raise RunError(f"{path}: no executed notebook under notebooks/ holds a glued result")
    strongest = {}
    for finding in sorted(diagnosis, key=lambda d: -float(d.get("confidence") or 0)):
        strongest.setdefault(finding.get("root_cause"), finding)
    return Run(path=path, run_id=path.name, started_at=min(starts) if starts else None,
               mode=_only(modes), target=_only(targets),
               verdict=overall_verdict(s["verdict"] for s in scenarios.values()), scenarios=scenarios,
               diagnosis=list(strongest.values()), source="scrapbook")


def _only(values: set[Any]) -> str | None:
    values = {v for v in values if v}
    return str(values.pop()) if len(values) == 1 else (", ".join(sorted(map(str, values))) or None)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric objects as dotted names, so every metric is one comparable value."""
    flat: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- a run as tables ---------------------------------------------------------------------------

def checks_table(run: Run) -> pd.DataFrame:
    """One row per check: scenario, check, arm, status (PASS, FAIL, INCONCLUSIVE), evidence."""
    rows = [{"scenario": scenario, "check": c["name"], "arm": c.get("arm") or "live", "status": status_of(c).upper(),
             "evidence": c.get("evidence", "")}
            for scenario, entry in run.scenarios.items() for c in entry["checks"]]
    return pd.DataFrame(rows, columns=["scenario", "check", "arm", "status", "evidence"])


def metrics_table(run: Run) -> pd.DataFrame:
    """One row per metric: scenario, metric, value."""
    rows = [{"scenario": scenario, "metric": name, "value": value}
            for scenario, entry in run.scenarios.items() for name, value in entry["metrics"].items()]
    return pd.DataFrame(rows, columns=["scenario", "metric", "value"])


# -- two runs ----------------------------------------------------------------------------------

def _status(status: Any) -> str:
    return status if isinstance(status, str) else "absent"


CHANGE_WORDS = {("PASS", "FAIL"): "broke", ("INCONCLUSIVE", "FAIL"): "broke", ("FAIL", "PASS"): "fixed",
                ("FAIL", "INCONCLUSIVE"): "undecided", ("PASS", "INCONCLUSIVE"): "undecided",
                ("INCONCLUSIVE", "PASS"): "decided", **{("absent", s): "new" for s in ("PASS", "FAIL", "INCONCLUSIVE")},
                **{(s, "absent"): "gone" for s in ("PASS", "FAIL", "INCONCLUSIVE")}}


CHECK_CHANGE_COLUMNS = ["scenario", "check", "arm", "a", "b", "change", "evidence a", "evidence b"]


def check_changes(a: Run, b: Run) -> pd.DataFrame:
    """Every check of either run side by side (`CHECK_CHANGE_COLUMNS`).

    `change` is `broke` (PASS or INCONCLUSIVE in A, FAIL in B), `fixed`, `undecided` (decided in A,
    INCONCLUSIVE in B), `decided`, `new`, `gone` or empty.
    """
    keys = ["scenario", "check", "arm"]
    merged = checks_table(a).merge(checks_table(b), on=keys, how="outer", suffixes=("_a", "_b"), sort=False)
    rows = []
    for row in merged.to_dict(orient="records"):
        before, after = _status(row["status_a"]), _status(row["status_b"])
        rows.append({**{k: row[k] for k in keys}, "a": before, "b": after,
                     "change": CHANGE_WORDS.get((before, after), ""),
                     "evidence a": _blank(row["evidence_a"]), "evidence b": _blank(row["evidence_b"])})
    return pd.DataFrame(rows, columns=CHECK_CHANGE_COLUMNS)


def metric_changes(a: Run, b: Run) -> pd.DataFrame:
    """Every metric of either run side by side: scenario, metric, a, b, change (B minus A for numbers)."""
    merged = metrics_table(a).merge(metrics_table(b), on=["scenario", "metric"], how="outer",
                                    suffixes=("_a", "_b"), sort=False)
    rows = []
    for row in merged.to_dict(orient="records"):
        before, after = _blank(row["value_a"]), _blank(row["value_b"])
        rows.append({"scenario": row["scenario"], "metric": row["metric"], "a": before, "b": after,
                     "change": _difference(before, after)})
    return pd.DataFrame(rows, columns=["scenario", "metric", "a", "b", "change"])


def verdict_changes(a: Run, b: Run) -> pd.DataFrame:
    """Each scenario's verdict in both runs: scenario, a, b, change (`worse`, `better` or empty)."""
    rows = []
    for scenario in dict.fromkeys([*a.scenarios, *b.scenarios]):
        before = a.scenarios.get(scenario, {}).get("verdict", "absent")
        after = b.scenarios.get(scenario, {}).get("verdict", "absent")
        change = ""
        if before in VERDICT_RANK and after in VERDICT_RANK and before != after:
            change = "worse" if VERDICT_RANK[after] > VERDICT_RANK[before] else "better"
        rows.append({"scenario": scenario, "a": before, "b": after, "change": change})
    return pd.DataFrame(rows, columns=["scenario", "a", "b", "change"])


def regressions(a: Run, b: Run) -> list[str]:
    """How B is worse than A: a check passing in A fails in B, or a scenario verdict got worse."""
    found = [f"{r['scenario']}: verdict {r['a']} -> {r['b']}"
             for r in verdict_changes(a, b).to_dict(orient="records") if r["change"] == "worse"]
    found += [f"{r['scenario']}: {r['check']} ({r['arm']}) {'passed' if r['a'] == 'PASS' else 'was inconclusive'} "
              f"in {a.run_id}, fails in {b.run_id}: "
              f"{r['evidence b']}" for r in check_changes(a, b).to_dict(orient="records") if r["change"] == "broke"]
    return found


def _blank(value: Any) -> Any:
    try:
        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _difference(before: Any, after: Any) -> str:
    x, y = _number(before), _number(after)
    if x is not None and y is not None:
        delta = y - x
        if delta == 0:
            return "0"
        relative = f" ({delta / x:+.0%})" if x else ""
        return f"{delta:+.4g}{relative}"
    if before is None and after is not None:
        return "new"
    if after is None and before is not None:
        return "gone"
    return "" if before == after else "changed"


# -- many runs: the review's tables ---------------------------------------------------------------

@dataclass(frozen=True)
class Trend:
    """A figure followed over time: its candidate metric names, or a ratio of two of them."""

    name: str
    title: str
    unit: str
    names: tuple[str, ...]
    ratios: tuple[tuple[str, str], ...] = ()


TRENDS = (
    Trend("rate_1011", "1011 rate", "share of attempts", (),
          (("closed_1011", "attempts"), ("closed_1011", "requests"))),
    Trend("connect_p95_ms", "connect p95", "ms", ("ws_connecting_p95_ms",)),
    Trend("ready_p95_ms", "readiness p95", "ms", ("ready_p95_ms",)),
    Trend("event_completeness", "event completeness", "share of agent runs with all five events",
          ("completeness_rate",), (("complete_runs", "runs"),)),
)
TREND_COLUMNS = ["run_id", "started_at", "scenario", "arm", "trend", "value", "source"]


def _arms(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Metrics split by arm: the `faulty.`/`fixed.` prefixes of reference mode, else one arm `live`."""
    arms: dict[str, dict[str, Any]] = {}
    for name, value in metrics.items():
        arm, _, rest = name.partition(".")
        if arm in ARMS and rest:
            arms.setdefault(arm, {})[rest] = value
        else:
            arms.setdefault("live", {})[name] = value
    return arms or {"live": {}}


def trend_value(metrics: dict[str, Any], trend: Trend) -> tuple[float | None, str]:
    """The trend's value in one arm's metrics and where it came from, or (None, why it is missing)."""
    for name in trend.names:
        value = _number(metrics.get(name))
        if value is not None:
            return value, name
    for top, bottom in trend.ratios:
        x, y = _number(metrics.get(top)), _number(metrics.get(bottom))
        if x is not None and y:
            return x / y, f"{top} / {bottom}"
    return None, "missing: none of " + ", ".join([*trend.names, *(f"{t}/{b}" for t, b in trend.ratios)])


def trends(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, scenario, arm and trend (`TREND_COLUMNS`); `value` is NaN where the run lacks it."""
    rows = []
    for run in runs:
        for scenario, entry in run.scenarios.items():
            for arm, metrics in _arms(entry["metrics"]).items():
                for trend in TRENDS:
                    value, source = trend_value(metrics, trend)
                    rows.append({"run_id": run.run_id, "started_at": run.started_at, "scenario": scenario,
                                 "arm": arm, "trend": trend.name, "value": value, "source": source})
    table = pd.DataFrame(rows, columns=TREND_COLUMNS)
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    return table


def verdicts(runs: Sequence[Run]) -> pd.DataFrame:
    """Scenario (rows) by run (columns, oldest first): each scenario's verdict, `absent` where it did not run."""
    scenarios = list(dict.fromkeys(s for run in runs for s in run.scenarios))
    table = pd.DataFrame({run.run_id: [run.scenarios.get(s, {}).get("verdict", "absent") for s in scenarios]
                          for run in runs}, index=scenarios)
    table.index.name = "scenario"
    return table


def changed_checks(runs: Sequence[Run]) -> pd.DataFrame:
    """The checks whose result changed between the two newest runs (broke, fixed, new, gone)."""
    if len(runs) < 2:
        return pd.DataFrame(columns=CHECK_CHANGE_COLUMNS)
    changes = check_changes(runs[-2], runs[-1])
    return changes[changes["change"] != ""].reset_index(drop=True)


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, oldest first: run id, start, mode, target, verdict, scenarios, source, path."""
    rows = [{"run_id": r.run_id, "started_at": r.started_at, "mode": r.mode, "target": r.target,
             "verdict": r.verdict, "scenarios": len(r.scenarios), "source": r.source, "path": str(r.path)}
            for r in runs]
    return pd.DataFrame(rows, columns=["run_id", "started_at", "mode", "target", "verdict", "scenarios", "source",
                                       "path"])


def trend_gaps(trends: pd.DataFrame) -> pd.DataFrame:
    """The holes in the trend lines: a run lacks a figure that the same scenario and arm report elsewhere."""
    keys = ["scenario", "arm", "trend"]
    reported = trends.groupby(keys)["value"].transform(lambda v: v.notna().any()) if len(trends) else []
    gaps = trends[(trends["value"].isna()) & reported] if len(trends) else trends
    return gaps[["run_id", *keys, "source"]].rename(columns={"source": "why"}).reset_index(drop=True)


# -- the review --------------------------------------------------------------------------------

@dataclass
class Review:
    """What the incident-review notebook shows: the runs, oldest first, and what could not be read."""

    reports_dir: Path
    runs: list[Run]
    problems: list[str]
    scenario: str = "incident_review"   # names the figures that notebook.show_figure saves

    @property
    def newest_pair(self) -> tuple[Run, Run] | None:
        return (self.runs[-2], self.runs[-1]) if len(self.runs) >= 2 else None

    def scraps(self, figures: Sequence[str]) -> dict[str, Any]:
        """What the notebook glues for tests and tools: verdict (fail when the newest run is worse), runs,
        changed_checks, regressions, trend_gaps, problems, figures; all plain JSON."""
        worse = self.regressions()
        return {"verdict": "fail" if worse else "pass", "runs": _records(runs_table(self.runs)),
                "changed_checks": _records(changed_checks(self.runs)), "regressions": worse,
                "trend_gaps": _records(trend_gaps(trends(self.runs))), "problems": list(self.problems),
                "figures": list(figures)}

    def regressions(self) -> list[str]:
        """How the newest run is worse than the one before it (empty with fewer than two runs)."""
        return regressions(*self.newest_pair) if self.newest_pair else []

    def headline(self) -> str:
        """What was read, and whether the newest run got worse, as Markdown."""
        lines = [f"**{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}** read from `{self.reports_dir}`"
                 + (f"; {len(self.problems)} could not be read (see Environment)" if self.problems else "") + "."]
        if not self.runs:
            return lines[0] + " Nothing to review: run `gp report` first, or point `reports_dir` at its runs."
        newest = self.runs[-1]
        lines.append(f"Newest: `{newest.run_id}` ({newest.mode or 'mode unknown'}, verdict **{newest.verdict}**).")
        if not self.newest_pair:
            return " ".join(lines) + " A second run is needed to say what changed."
        before = self.newest_pair[0]
        worse = self.regressions()
        lines.append(f"Against the run before it, `{before.run_id}` (verdict {before.verdict}): "
                     + (f"**worse in {len(worse)} way{'s' if len(worse) > 1 else ''}**:" if worse
                        else "**no worse**: no check that passed fails now, and no verdict got worse."))
        return " ".join(lines) + "".join(f"\n- {line}" for line in worse)


def review(reports_dir: str | Path, max_runs: int = 0) -> Review:
    """Every run under `reports_dir` (the newest `max_runs` of them when it is above 0)."""
    runs, problems = find_runs(reports_dir)
    return Review(Path(reports_dir), runs[-max_runs:] if max_runs > 0 else runs, problems)


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON-ready rows (NaN and NA become null, numpy numbers plain)."""
    return json.loads(table.to_json(orient="records"))
