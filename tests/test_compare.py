"""`gp compare`: fixture runs, and a real pair of `gp report --target` runs against the reference server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gp_lib import cli, history
from gp_lib.refserver import Faults, running_server

FIXTURES = Path(__file__).parent / "fixtures" / "runs_history"
GOOD, BAD = FIXTURES / "20261108T090000Z", FIXTURES / "20261115T090000Z"
SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
QUICK = Path(__file__).resolve().parents[1] / "parameters" / "quick.yaml"


def compare(capsys, *runs) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, runs)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- fixture runs ---------------------------------------------------------------------------------

def test_a_check_that_breaks_makes_exit_1_and_shows_side_by_side(capsys):
    code, out, _ = compare(capsys, GOOD, BAD / "summary.json")
    assert code == 1
    assert "**B is worse than A** in 2 ways" in out
    assert "| missing_events | pass | fail | worse |" in out
    assert "| missing_events | all_five_events | live | PASS | FAIL | broke | 6 of 6 runs complete |" in out
    assert "| race_conditions | ws_connecting_p95_ms | 5 | 6.5 | +1.5 (+30%) |" in out
    assert "| race_conditions | ready_p95_ms | 35 |  | gone |" in out
    assert "| missing_events |  | 0.9 |" in out   # the diagnosis: absent in A, 0.9 in B


def test_the_fix_direction_and_an_unchanged_run_exit_0(capsys):
    code, out, _ = compare(capsys, BAD, GOOD)
    assert code == 0 and "**B is no worse than A**" in out and "| fixed |" in out
    assert compare(capsys, GOOD, GOOD)[0] == 0


def _moved(tmp_path, run, **changes) -> Path:
    """A copy of a fixture run with summary.json fields changed."""
    import json

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, **changes}))
    return copy


def test_runs_of_another_target_or_mode_are_compared_with_a_warning(capsys, tmp_path):
    code, out, err = compare(capsys, GOOD, GOOD)
    assert code == 0 and "warning" not in err.lower() and "**Warning:**" not in out

    elsewhere = _moved(tmp_path, GOOD, target="wss://prod.example/ws")
    code, out, err = compare(capsys, GOOD, elsewhere)
    assert "gp compare: warning: the runs differ in target: A probed ws://staging.example/ws, B wss://prod.example/ws" in err
    assert "**Warning:** the runs differ in target" in out

    reference = _moved(tmp_path / "r", GOOD, mode="reference", target=None)
    code, out, err = compare(capsys, reference, GOOD)
    assert "the runs differ in mode: A is reference, B is live" in err and "differ in target" not in err


def test_text_from_the_summaries_is_inert_in_markdown_and_on_the_terminal(capsys, tmp_path):
    hostile = _moved(tmp_path, GOOD, target="ws://x/ws\x1b[31m<img src=x onerror=alert(1)>\n# Owned")
    code, out, err = compare(capsys, GOOD, hostile)
    assert "differ in target" in err and "\x1b" not in err
    assert "<img" not in out and "\n# Owned" not in out


@pytest.mark.parametrize("broken, named", [
    ("missing", "missing: no such run directory or summary.json"),
    ("broken/summary.json", "broken/summary.json: not a readable JSON file"),
])
def test_bad_input_exits_2_naming_the_file(capsys, broken, named):
    code, out, err = compare(capsys, GOOD, FIXTURES / broken)
    assert code == 2 and out == ""
    assert named in err


# -- a real pair: the fixed server, then the same server with a fault ------------------------------

@pytest.fixture(scope="module")
def real_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two `gp report --target URL --scenario missing_events --params parameters/quick.yaml` runs: against
    the reference server fixed, and against it with `--fault events`. Both run at once, each against its
    own server, to keep the test short."""
    reports = tmp_path_factory.mktemp("reports")
    with running_server(Faults()) as fixed, running_server(Faults.from_specs(["events"])) as faulty:
        children = {}
        for name, server in (("fixed", fixed), ("faulty", faulty)):
            command = [sys.executable, "-m", "gp_lib.cli", "report", "--target", server.url, "--scenario",
                       "missing_events", "--params", str(QUICK), "--jobs", "1", "--out", str(reports / name)]
            children[name] = subprocess.Popen(command, env={**os.environ, "JWT_SECRET_KEY": server.secret},
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = {name: child.communicate(timeout=150 * SCALE)[0] for name, child in children.items()}
        codes = {name: child.returncode for name, child in children.items()}
    assert codes == {"fixed": 0, "faulty": 1}, output
    return reports / "fixed", reports / "faulty"


def test_a_fault_appearing_between_two_real_runs_exits_1(capsys, real_pair):
    fixed, faulty = real_pair
    code, out, _ = compare(capsys, fixed, faulty)
    assert code == 1
    assert "| missing_events | pass | fail | worse |" in out
    broke = [line for line in out.splitlines() if "| broke |" in line]
    assert len(broke) == 1 and broke[0].startswith("| missing_events | all_five_events | live | PASS | FAIL | broke |")
    assert "lacked tool_executing, tool_completed" in broke[0]
    assert "| missing_events | completeness_rate | 1 | 0 | -1 (-100%) |" in out

    code, out, _ = compare(capsys, faulty, fixed)
    assert code == 0 and "| missing_events | fail | pass | better |" in out


def test_a_real_run_reads_the_same_from_its_notebooks_as_from_its_summary(real_pair, tmp_path):
    faulty = real_pair[1]
    from_summary = history.load_run(faulty)
    copy = tmp_path / faulty.name
    shutil.copytree(faulty / "notebooks", copy / "notebooks")
    from_notebooks = history.load_run(copy)
    assert from_summary.source == "summary.json" and from_notebooks.source == "scrapbook"
    assert from_notebooks.verdict == from_summary.verdict == "fail"
    ours, theirs = from_notebooks.scenarios["missing_events"], from_summary.scenarios["missing_events"]
    assert ours["checks"] == theirs["checks"] and ours["metrics"] == theirs["metrics"]
    trends = history.trends([from_summary]).set_index("trend")["value"]
    assert trends["event_completeness"] == 0 and trends["rate_1011"] == 0 and trends["connect_p95_ms"] > 0
