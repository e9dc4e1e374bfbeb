"""Reading runs, their trends and what changed between them (gp_lib.history, gp_lib.plots.history)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from gp_lib import history
from gp_lib.plots import history as plots_history

FIXTURES = Path(__file__).parent / "fixtures" / "runs_history"
OLDEST, MIDDLE, NEWEST = "20261101T090000Z", "20261108T090000Z", "20261115T090000Z"


def runs():
    found, _ = history.find_runs(FIXTURES)
    return found


def a_run(run_id: str, scenarios: dict, started_at: str | None = None, verdict: str = "pass") -> history.Run:
    return history.Run(Path(run_id), run_id, started_at, "live", None, verdict, scenarios)


def scenario(checks: list[tuple[str, bool]], metrics: dict | None = None, verdict: str | None = None) -> dict:
    return {"verdict": verdict or ("pass" if all(p for _, p in checks) else "fail"),
            "checks": [{"name": n, "passed": p, "evidence": f"{n} {'ok' if p else 'broken'}"} for n, p in checks],
            "metrics": metrics or {}}


def executed_notebook(path: Path, scraps: dict, start_time: str | None) -> None:
    """An executed notebook holding scrapbook scraps, in the format `scrapbook.glue` writes."""
    outputs = [nbformat.v4.new_output("display_data", data={"application/scrapbook.scrap.json+json": {
        "name": name, "data": value, "encoder": "json", "version": 1}},
        metadata={"scrapbook": {"name": name, "data": True, "display": False}}) for name, value in scraps.items()]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("glue", outputs=outputs)])
    if start_time:
        notebook.metadata["papermill"] = {"start_time": start_time}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))


# -- reading runs -------------------------------------------------------------------------------

def test_find_runs_reads_every_run_oldest_first_and_reports_the_broken_one():
    found, problems = history.find_runs(FIXTURES)
    assert [r.run_id for r in found] == [OLDEST, MIDDLE, NEWEST]
    assert [r.mode for r in found] == ["reference", "live", "live"]
    assert len(problems) == 1 and "broken/summary.json" in problems[0] and "not a readable JSON" in problems[0]


def test_latest_link_is_read_once_and_a_missing_directory_is_a_problem(tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(FIXTURES, reports)
    (reports / "latest").symlink_to(NEWEST)
    found, _ = history.find_runs(reports)
    assert [r.run_id for r in found] == [OLDEST, MIDDLE, NEWEST]
    assert history.find_runs(tmp_path / "nowhere") == ([], [f"{tmp_path / 'nowhere'}: no such reports directory"])


def test_copies_of_one_run_are_told_apart_by_folder(tmp_path):
    shutil.copytree(FIXTURES / NEWEST, tmp_path / "a")
    shutil.copytree(FIXTURES / NEWEST, tmp_path / "b")
    found, _ = history.find_runs(tmp_path)
    assert [r.run_id for r in found] == [f"{NEWEST} (a)", f"{NEWEST} (b)"]
    assert list(history.verdicts(found).columns) == [f"{NEWEST} (a)", f"{NEWEST} (b)"]


def test_load_run_takes_a_directory_or_its_summary():
    by_dir = history.load_run(FIXTURES / NEWEST)
    by_file = history.load_run(FIXTURES / NEWEST / "summary.json")
    assert by_dir == by_file
    assert by_dir.verdict == "fail" and by_dir.target == "ws://staging.example/ws"
    assert by_dir.scenarios["missing_events"]["metrics"]["complete_runs"] == 0
    assert by_dir.diagnosis[0]["root_cause"] == "missing_events"


@pytest.mark.parametrize("summary, named", [
    ({"run_id": "x"}, "'scenarios' must be an object"),
    ({"scenarios": {"race": []}}, "scenarios.race must be an object"),
    ({"scenarios": {"race": {"checks": [{"name": "c"}]}}}, "scenarios.race.checks[0] needs"),
    ({"scenarios": {"race": {"checks": [], "metrics": [1]}}}, "scenarios.race.metrics must be an object"),
    ({"scenarios": {"race": {"verdict": "great", "checks": []}}}, "scenarios.race.verdict must be"),
    ({"scenarios": {}, "verdict": "maybe"}, "verdict must be pass, fail or error"),
    ([1, 2], "must be a JSON object"),
])
def test_an_invalid_summary_is_a_run_error_naming_the_file_and_field(tmp_path, summary, named):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(history.RunError, match="summary.json") as raised:
        history.load_run(path)
    assert named in str(raised.value)


def test_missing_run_is_a_run_error(tmp_path):
    with pytest.raises(history.RunError, match="no such run directory"):
        history.load_run(tmp_path / "gone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(history.RunError, match="neither summary.json nor executed notebooks"):
        history.load_run(tmp_path / "empty")


def test_a_run_without_summary_is_read_from_its_notebooks_scraps(tmp_path):
    run = tmp_path / "20261120T080000Z"
    executed_notebook(run / "notebooks" / "04_missing_events.ipynb", {
        "scenario": "missing_events", "verdict": "fail", "mode": "live", "target": "ws://t/ws",
        "checks": [{"name": "all_five_events", "passed": False, "evidence": "0 of 2 runs"}],
        "metrics": {"runs": 2, "complete_runs": 0},
        "diagnosis": [{"root_cause": "missing_events", "confidence": 0.9, "evidence": ["e"]}]},
        "2026-11-20T08:00:05.000001Z")
    executed_notebook(run / "notebooks" / "01_websocket_race_conditions.ipynb", {
        "scenario": "race_conditions", "verdict": "pass", "mode": "live", "target": "ws://t/ws",
        "checks": [{"name": "no_1011_closes", "passed": True, "evidence": "0 of 5"}], "metrics": {"attempts": 5},
        "diagnosis": []}, "2026-11-20T08:00:01.000001Z")
    executed_notebook(run / "notebooks" / "scratch.ipynb", {"note": "no result glued"}, None)

    loaded = history.load_run(run)
    assert loaded.source == "scrapbook" and loaded.run_id == run.name
    assert loaded.started_at == "2026-11-20T08:00:01.000001Z"
    assert loaded.mode == "live" and loaded.target == "ws://t/ws" and loaded.verdict == "fail"
    assert set(loaded.scenarios) == {"missing_events", "race_conditions"}
    assert loaded.scenarios["missing_events"]["checks"][0]["passed"] is False
    assert [d["root_cause"] for d in loaded.diagnosis] == ["missing_events"]

    (run / "notebooks" / "broken.ipynb").write_text("{not json")
    with pytest.raises(history.RunError, match="broken.ipynb"):
        history.load_run(run)


# -- two runs -----------------------------------------------------------------------------------

def test_check_changes_name_each_kind_of_change():
    a = a_run("a", {"s": scenario([("kept", True), ("breaks", True), ("heals", False), ("goes", True)])})
    b = a_run("b", {"s": scenario([("kept", True), ("breaks", False), ("heals", True), ("arrives", False)])})
    changes = history.check_changes(a, b).set_index("check")
    assert changes["change"].to_dict() == {"kept": "", "breaks": "broke", "heals": "fixed", "goes": "gone",
                                           "arrives": "new"}
    assert changes.loc["goes", "b"] == "absent" and changes.loc["arrives", "a"] == "absent"
    assert changes.loc["breaks", "evidence b"] == "breaks broken"


def test_inconclusive_checks_are_read_compared_and_never_a_pass_or_failure():
    undecided = {"name": "ids", "passed": None, "status": "inconclusive", "evidence": "no connection id"}
    a = a_run("a", {"s": {"verdict": "pass", "checks": [undecided, {"name": "ok", "passed": True, "evidence": "x"}],
                          "metrics": {}}})
    b = a_run("b", {"s": scenario([("ids", False), ("ok", True)])})
    changes = history.check_changes(a, b).set_index("check")
    assert changes.loc["ids", "a"] == "INCONCLUSIVE" and changes.loc["ids", "change"] == "broke"
    assert history.regressions(a, b) == ["s: verdict pass -> fail",
                                         "s: ids (live) was inconclusive in a, fails in b: ids broken"]
    assert history.check_changes(b, a).set_index("check").loc["ids", "change"] == "undecided"
    assert history._scenario(Path("x"), "s", {"checks": [undecided]})["verdict"] == "error"  # nothing decided


def test_metric_changes_give_differences_for_numbers_and_words_for_the_rest():
    a = a_run("a", {"s": scenario([], {"p95": 10, "rate": 0.0, "left": 1, "name": "x", "same": 3})})
    b = a_run("b", {"s": scenario([], {"p95": 12.5, "rate": 0.25, "came": 2, "name": "y", "same": 3})})
    change = history.metric_changes(a, b).set_index("metric")["change"].to_dict()
    assert change == {"p95": "+2.5 (+25%)", "rate": "+0.25", "left": "gone", "name": "changed", "same": "0",
                      "came": "new"}


def test_regressions_are_broken_checks_and_worse_verdicts_only():
    good = a_run("good", {"s": scenario([("c", True)]), "t": scenario([("d", True)])})
    bad = a_run("bad", {"s": scenario([("c", False)]), "t": scenario([], verdict="error")})
    assert history.regressions(good, bad) == ["s: verdict pass -> fail", "t: verdict pass -> error",
                                              "s: c (live) passed in good, fails in bad: c broken"]
    assert history.regressions(bad, good) == []
    assert history.verdict_changes(bad, good)["change"].tolist() == ["better", "better"]
    new_failure = a_run("new", {"s": scenario([("c", True), ("extra", False)], verdict="pass")})
    assert history.regressions(good, new_failure) == []


def test_changed_checks_of_the_two_newest_fixture_runs():
    changed = history.changed_checks(runs())
    assert changed[["scenario", "check", "a", "b", "change"]].values.tolist() == [
        ["missing_events", "all_five_events", "PASS", "FAIL", "broke"]]
    assert history.changed_checks(runs()[:1]).empty


# -- trends ---------------------------------------------------------------------------------------

def test_trends_split_reference_arms_and_read_each_figure_by_its_names():
    table = history.trends(runs()).set_index(["run_id", "scenario", "arm", "trend"])
    assert table.loc[(OLDEST, "race_conditions", "faulty", "rate_1011"), "value"] == pytest.approx(18 / 40)
    assert table.loc[(OLDEST, "race_conditions", "faulty", "rate_1011"), "source"] == "closed_1011 / attempts"
    assert table.loc[(OLDEST, "race_conditions", "fixed", "rate_1011"), "value"] == 0
    assert table.loc[(OLDEST, "missing_events", "fixed", "event_completeness"), "value"] == 1.0
    assert table.loc[(NEWEST, "missing_events", "live", "event_completeness"), "value"] == 0.0
    assert table.loc[(NEWEST, "race_conditions", "live", "connect_p95_ms"), "value"] == 6.5
    missing = table.loc[(NEWEST, "race_conditions", "live", "ready_p95_ms")]
    assert pd.isna(missing["value"]) and missing["source"].startswith("missing: none of ready_p95_ms")


def test_trend_value_prefers_a_named_figure_over_a_ratio():
    trend = next(t for t in history.TRENDS if t.name == "event_completeness")
    assert history.trend_value({"completeness_rate": 0.5, "complete_runs": 1, "runs": 4}, trend) == (
        0.5, "completeness_rate")
    assert history.trend_value({"complete_runs": 1, "runs": 4}, trend) == (0.25, "complete_runs / runs")
    assert history.trend_value({"complete_runs": 1, "runs": 0}, trend)[0] is None


def test_trend_gaps_are_holes_in_lines_not_figures_a_scenario_never_reports():
    gaps = history.trend_gaps(history.trends(runs()))
    assert gaps[["run_id", "scenario", "arm", "trend"]].values.tolist() == [
        [NEWEST, "race_conditions", "live", "ready_p95_ms"]]


def test_verdicts_grid_marks_absent_scenarios():
    extra = a_run("z", {"factory_initialization": scenario([("c", False)])}, "2026-12-01T00:00:00Z", "fail")
    grid = history.verdicts([*runs(), extra])
    assert grid.loc["missing_events"].tolist() == ["pass", "pass", "fail", "absent"]
    assert grid.loc["factory_initialization"].tolist() == ["absent", "absent", "absent", "fail"]


# -- the review -----------------------------------------------------------------------------------

def test_review_headline_says_how_the_newest_run_got_worse():
    review = history.review(FIXTURES)
    text = review.headline()
    assert "**3 runs**" in text and "1 could not be read" in text and "**worse in 2 ways**" in text
    assert review.scraps([])["verdict"] == "fail"
    assert history.review(FIXTURES, max_runs=2).runs[0].run_id == MIDDLE


def test_review_of_one_or_no_run_says_what_is_missing(tmp_path):
    one = tmp_path / "one"
    shutil.copytree(FIXTURES / OLDEST, one / OLDEST)
    assert "A second run is needed" in history.review(one).headline()
    assert history.review(one).scraps([])["verdict"] == "pass"
    assert "Nothing to review" in history.review(tmp_path / "none").headline()


# -- figures --------------------------------------------------------------------------------------

def test_trends_figure_draws_four_panels_with_a_marked_gap():
    figure = plots_history.trends_figure(history.trends(runs()))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["1011 rate", "connect p95", "readiness p95", "event completeness"]
    readiness = figure.axes[2]
    gap_marks = [line for line in readiness.get_lines() if line.get_marker() == "x"]
    assert len(gap_marks) == 1 and list(gap_marks[0].get_xdata()) == [2]
    assert "not reported by: missing_events (faulty), missing_events (fixed)" in readiness.get_xlabel()
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "race_conditions (faulty)" in labels and "x on the axis: figure missing in that run" in labels


def test_trends_figure_of_runs_without_those_figures_says_so():
    bare = [a_run("a", {"s": scenario([("c", True)], {"other": 1})})]
    figure = plots_history.trends_figure(history.trends(bare))
    assert all("no run reports this figure" in [t.get_text() for t in ax.texts] for ax in figure.axes)


def test_verdicts_figure_writes_each_verdict_in_its_cell():
    figure = plots_history.verdicts_figure(history.verdicts(runs()))
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts.count("pass") == 5 and texts.count("fail") == 1
    empty = plots_history.verdicts_figure(history.verdicts([]))
    assert [t.get_text() for t in empty.axes[0].texts] == ["no runs"]
