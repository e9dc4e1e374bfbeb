"""Execute notebooks/05_incident_review.ipynb over a reports directory and read its scraps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = "05_incident_review.ipynb"
RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs_history"
SCALE = float(os.environ.get("GP_TIME_SCALE") or 1.0)


@pytest.mark.notebook
def test_the_review_renders_trends_and_flags_the_checks_that_changed(run_notebook, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(RUNS, reports)
    (reports / "latest").symlink_to("20261115T090000Z")
    scraps = run_notebook(NOTEBOOK, {"reports_dir": str(reports)}, timeout_s=int(120 * SCALE))

    assert scraps["verdict"] == "fail"
    assert [r["run_id"] for r in scraps["runs"]] == ["20261101T090000Z", "20261108T090000Z", "20261115T090000Z"]
    assert [(c["check"], c["change"]) for c in scraps["changed_checks"]] == [("all_five_events", "broke")]
    assert scraps["regressions"][0] == "missing_events: verdict pass -> fail" and len(scraps["regressions"]) == 2
    assert [(g["scenario"], g["trend"]) for g in scraps["trend_gaps"]] == [("race_conditions", "ready_p95_ms")]
    assert len(scraps["problems"]) == 1 and "broken/summary.json" in scraps["problems"][0]
    assert [Path(p).name for p in scraps["figures"]] == ["incident_review-trends.png", "incident_review-verdicts.png"]
    assert all(Path(p).stat().st_size > 10_000 for p in scraps["figures"])

    executed = nbformat.read(str(scraps["_executed"]), as_version=4)
    shown = {tag: "" for tag in ("section-verdict", "section-results", "section-plots")}
    for cell in executed.cells:
        for tag in set(cell.metadata.get("tags", [])) & set(shown):
            shown[tag] += "".join(str(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", []))
            shown[tag] += "".join("<png>" for o in cell.get("outputs", []) if "image/png" in o.get("data", {}))
    assert "**worse in 2 ways**" in shown["section-verdict"]
    assert "| missing_events | all_five_events | live | PASS | FAIL | broke |" in shown["section-results"]
    assert shown["section-plots"].count("<png>") == 2 and "Gaps in the trend lines" in shown["section-plots"]
