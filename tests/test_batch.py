"""`gp report`: validation before any traffic, execution, outputs and exit codes.

The end-to-end tests run `gp report` as a subprocess, once per situation, with
parameters/quick.yaml, and share each run between several assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from gp_lib import batch, cli
from gp_lib.notebook import SECTION_TITLES, SECTIONS
from gp_lib.redact import register_secret
from gp_lib.scenarios.common import CommonParams, ParameterError
from gp_lib.refserver import free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "notebooks"
QUICK = str(ROOT / "parameters" / "quick.yaml")
SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    batch.configure(parser)
    return parser.parse_args(list(argv))


# -- the registry and the command ---------------------------------------------------------------

def test_registry_holds_the_four_scenarios_and_their_notebooks():
    assert batch.DEFAULT_SCENARIOS == ("race_conditions", "service_dependencies", "factory_initialization",
                                       "missing_events")
    for name in batch.DEFAULT_SCENARIOS:
        entry = batch.REGISTRY[name]
        assert (batch.NOTEBOOKS_DIR / entry.notebook).is_file()
        assert re.fullmatch(r"GOLDEN_PATH_[A-Z_]+_TEST_REPORT\.md", entry.report)
        assert issubclass(entry.params_class(), CommonParams)


def test_command_line_repeats_one_scenario_without_out_or_jobs():
    args = parse("--target", "ws://h:1/ws", "--params", "parameters/quick.yaml", "-p", "sweep_repeats=1",
                 "-p", "concurrency_levels=[1, 5]", "--out", "x", "--jobs", "3")
    assert batch.command_line(args, "race_conditions") == (
        "gp report --target ws://h:1/ws --scenario race_conditions --params parameters/quick.yaml "
        "-p sweep_repeats=1 -p 'concurrency_levels=[1, 5]'")


def test_scheduler_option_sets_the_parameter_of_the_scenarios_that_spread_storms(monkeypatch, tmp_path):
    monkeypatch.setattr(batch, "REPORTS_DIR", tmp_path)
    args = parse("--scheduler", "tcp://127.0.0.1:8786")
    plan = batch.make_plan(args)
    taking = {name for name, layered in plan.parameters.items() if "scheduler" in layered.values}
    assert taking == {"race_conditions", "missing_events"}
    assert plan.parameters["race_conditions"].params.scheduler == "tcp://127.0.0.1:8786"
    assert batch.command_line(args, "missing_events").endswith("--scheduler tcp://127.0.0.1:8786")
    with pytest.raises(ParameterError, match="scheduler must be a Dask scheduler address"):
        batch.make_plan(parse("--scheduler", "127.0.0.1:8786"))


@pytest.mark.parametrize("cores, jobs", [(1, 2), (2, 4), (8, 4), (None, 2)])
def test_default_jobs_is_two_per_core_at_most_four(monkeypatch, cores, jobs):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)  # None: the count is unknown
    assert batch.default_jobs() == jobs
    assert parse().jobs == jobs


def test_plan_defaults_to_a_fresh_run_folder_under_reports(monkeypatch, tmp_path):
    monkeypatch.setattr(batch, "REPORTS_DIR", tmp_path)
    plan = batch.make_plan(parse("--scenario", "missing_events", "--jobs", "8"))
    assert re.fullmatch(r"\d{8}T\d{6}Z", plan.run_id) and plan.out == tmp_path / plan.run_id
    assert plan.latest == tmp_path / "latest" and plan.jobs == 1


def test_runs_in_the_same_second_get_their_own_folders(tmp_path):
    (tmp_path / "20261130T120000Z").mkdir()
    (tmp_path / "20261130T120000Z-2").mkdir()
    assert batch._fresh(tmp_path / "20261130T120000Z") == tmp_path / "20261130T120000Z-3"


def test_latest_is_a_relative_symlink_to_the_newest_run(tmp_path):
    for run_id in ("20261130T120000Z", "20261130T130000Z"):
        (tmp_path / run_id).mkdir()
        batch._point(tmp_path / "latest", tmp_path / run_id)
    assert os.readlink(tmp_path / "latest") == "20261130T130000Z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261130T120000Z", "20261130T130000Z", "latest"]


# -- bad parameters: exit 2, the culprit named, nothing sent --------------------------------------

@pytest.fixture(scope="module")
def idle_server():
    with running_server() as server:
        yield server


@pytest.mark.parametrize("extra, culprit", [
    (["--scenario", "race_condition"], "race_condition"),
    (["-p", "colour=red"], "colour"),
    (["-p", "race_conditions.sweep_repeats=-1"], "sweep_repeats"),
    (["-p", "missing_events.sequential_runs=-5"], "sequential_runs"),
    (["-p", "jwt_secret=abc"], "jwt_secret"),
    (["--jobs", "0"], "--jobs"),
    (["--timeout", "nan"], "--timeout"),
])
def test_bad_parameters_exit_2_before_any_traffic(idle_server, tmp_path, capsys, extra, culprit):
    out = tmp_path / "out"
    code = cli.main(["report", "--target", idle_server.url, "--out", str(out), *extra])
    assert code == 2
    assert culprit in capsys.readouterr().err
    assert idle_server.stats()["connections_total"] == 0
    assert not out.exists()


def test_a_url_that_is_not_websocket_exits_2(idle_server, tmp_path, capsys):
    http_url = idle_server.url.replace("ws://", "http://")
    assert cli.main(["report", "--target", http_url, "--out", str(tmp_path / "out")]) == 2
    assert "target_url" in capsys.readouterr().err
    assert idle_server.stats()["connections_total"] == 0


def test_a_live_run_without_its_secret_in_the_environment_exits_2_before_any_notebook(idle_server, tmp_path,
                                                                                      capsys, monkeypatch):
    monkeypatch.delenv("GP_BATCH_TEST_NO_SECRET", raising=False)
    out = tmp_path / "out"
    code = cli.main(["report", "--target", idle_server.url, "--out", str(out),
                     "-p", "jwt_secret_env=GP_BATCH_TEST_NO_SECRET"])
    assert code == 2
    assert "environment variable GP_BATCH_TEST_NO_SECRET is not set" in capsys.readouterr().err
    assert idle_server.stats()["connections_total"] == 0 and not out.exists()


def test_an_out_that_is_a_file_exits_2_naming_it(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert cli.main(["report", "--out", str(taken)]) == 2
    assert f"--out {taken}: exists and is not a directory" in capsys.readouterr().err


def test_a_run_that_cannot_write_out_exits_2_not_1(tmp_path, capsys):
    """1 would tell CI that an issue was found; an OUT under a file cannot even be created."""
    (tmp_path / "file").write_text("")
    assert cli.main(["report", "--scenario", "missing_events", "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert "gp report: error: the run could not be made" in err and "NotADirectoryError" in err


# -- pieces of execution ------------------------------------------------------------------------------

def _notebook(path: Path, started: bool) -> Path:
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["papermill"] = {"start_time": "2026-11-30T12:00:00" if started else None}
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


def test_a_kernel_that_never_ran_a_cell_is_started_again(tmp_path, capsys):
    output = _notebook(tmp_path / "out.ipynb", started=False)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")

    assert batch.with_kernel_retries(flaky, output, attempts=3, pause_s=0) is None
    assert len(calls) == 3
    assert "starting the kernel again" in capsys.readouterr().err


def test_retries_give_up_and_a_notebook_that_ran_is_not_rerun(tmp_path):
    def dead():
        raise RuntimeError("Kernel died before replying to kernel_info")

    message = batch.with_kernel_retries(dead, tmp_path / "never-written.ipynb", attempts=2, pause_s=0)
    assert message == "the notebook could not be executed: RuntimeError: Kernel died before replying to kernel_info"
    calls = []
    ran = _notebook(tmp_path / "ran.ipynb", started=True)
    batch.with_kernel_retries(lambda: calls.append(1) or dead(), ran, attempts=3, pause_s=0)
    assert len(calls) == 1


def test_failure_message_of_a_notebook_that_raised():
    from papermill.exceptions import PapermillExecutionError

    exc = PapermillExecutionError(4, 7, "boom()", "ValueError", "bad value\nmore", [])
    assert batch.failure_message(exc) == "the notebook raised ValueError: bad value (cell [7])"


def test_scrub_redacts_every_text_file_and_says_which(tmp_path, capsys):
    register_secret("scrub-test-secret-1234")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "a.log").write_text("key scrub-test-secret-1234\n")
    (tmp_path / "clean.md").write_text("nothing here\n")
    batch.scrub(tmp_path)
    assert (tmp_path / "notebooks" / "a.log").read_text() == "key <redacted>\n"
    err = capsys.readouterr().err
    assert "notebooks/a.log" in err and "clean.md" not in err


# -- a batch of fixture notebooks: one that raises does not stop the others ------------------------------

@dataclass
class StubParams(CommonParams):
    attempts: int = 3


class StubEntry(batch.Entry):
    def params_class(self) -> type:
        return StubParams


def test_a_missing_notebook_stops_the_run_at_once(tmp_path):
    registry = {"ghost": StubEntry("ghost", "ghost.ipynb", "GOLDEN_PATH_GHOST_TEST_REPORT.md", "Ghost")}
    with pytest.raises(ParameterError, match="ghost: .*ghost.ipynb"):
        batch.make_plan(parse("--scenario", "ghost", "--out", str(tmp_path)), registry, FIXTURES)


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory):
    registry = {name: StubEntry(name, f"{name}.ipynb", f"GOLDEN_PATH_{name.upper()}_TEST_REPORT.md", f"Stub {name}")
                for name in ("failing", "broken")}
    out = tmp_path_factory.mktemp("stub") / "out"
    args = parse("--scenario", "broken", "--scenario", "failing", "--out", str(out), "--jobs", "2", "-p", "attempts=4")
    plan = batch.make_plan(args, registry, FIXTURES)
    return plan, batch.run_plan(plan)


@pytest.mark.notebook
@pytest.mark.timeout(600)
def test_a_notebook_that_raised_is_an_error_and_the_others_still_run(stub_run):
    plan, summary = stub_run
    assert summary["verdict"] == "error"
    broken, failing = summary["scenarios"]["broken"], summary["scenarios"]["failing"]
    assert broken["verdict"] == "error" and broken["checks"] == []
    assert broken["error"] == "the notebook raised RuntimeError: stub failure on purpose (cell [6])"
    assert failing["verdict"] == "fail"
    assert [c["name"] for c in failing["checks"] if not c["passed"]] == ["stub_no_1011"]
    assert failing["metrics"] == {"attempts": 4}


@pytest.mark.notebook
@pytest.mark.timeout(600)
def test_fixture_batch_outputs(stub_run):
    plan, _ = stub_run
    report = (plan.out / "GOLDEN_PATH_BROKEN_TEST_REPORT.md").read_text()
    assert report.startswith("# Stub broken: ERROR\n\n**The run could not be made:** the notebook raised RuntimeError")
    assert (plan.out / "assets" / "failing-stub-line.png").is_file()
    assert "![failing-stub-line](assets/failing-stub-line.png)" in (plan.out / "GOLDEN_PATH_FAILING_TEST_REPORT.md").read_text()
    root = ET.parse(plan.out / "junit.xml").getroot()
    assert [c.get("name") for c in root.iter("testcase") if c.find("error") is not None] == ["run"]
    executed = nbformat.read(plan.out / "notebooks" / "failing.ipynb", as_version=4)
    assert not any(str(Path.cwd()) in json.dumps(cell) for cell in executed.cells), "no absolute path of this machine"
    assert (plan.out / "notebooks" / "failing.log").is_file()


INTERRUPTED_RUN = """
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from gp_lib import batch
from gp_lib.scenarios.common import CommonParams


@dataclass
class HoldingParams(CommonParams):
    attempts: int = 3
    release_file: str = ""
    started_file: str = ""


class HoldingEntry(batch.Entry):
    def params_class(self):
        return HoldingParams


if __name__ == "__main__":  # the pool's workers import this file again
    fixtures, out, release, started = sys.argv[1:5]
    registry = {name: HoldingEntry(name, f"{name}.ipynb", f"GOLDEN_PATH_{name.upper()}_TEST_REPORT.md", name)
                for name in ("holding", "passing")}
    parser = argparse.ArgumentParser()
    batch.configure(parser)
    args = parser.parse_args(["--scenario", "holding", "--scenario", "passing", "--jobs", "1", "--out", out,
                              "-p", f"release_file={release}", "-p", f"started_file={started}"])
    batch.run_plan(batch.make_plan(args, registry, Path(fixtures)))
"""


@pytest.mark.notebook
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_batch_starts_no_further_notebook(tmp_path, signum):
    """One worker: `holding` runs until released, `passing` waits for the worker. gp alone gets SIGINT (as from
    `kill -INT`) or SIGTERM (a cancelled CI job), then `holding` is released: `passing` must never start."""
    script, release, started = tmp_path / "interrupted_run.py", tmp_path / "release", tmp_path / "started"
    script.write_text(INTERRUPTED_RUN)
    child = subprocess.Popen([sys.executable, str(script), str(FIXTURES), str(tmp_path / "out"), str(release),
                              str(started)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120 * SCALE
        while not started.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the holding notebook never ran"
            time.sleep(0.05)
        child.send_signal(signum)
        release.touch()
        _, err = child.communicate(timeout=300 * SCALE)
    finally:
        release.touch()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    assert "gp: holding: started" in err and "gp: passing: started" not in err


# -- end to end: `gp report` as a subprocess ---------------------------------------------------------------

KNOWN_SECRET = "e2e-known-jwt-secret-7f3a9c"
KNOWN_BYPASS_KEY = "e2e-known-bypass-key-51d2e8"


def gp_report(out: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `gp report --params parameters/quick.yaml --out OUT ...`; its exit code, stdout and stderr."""
    command = [sys.executable, "-m", "gp_lib.cli", "report", "--params", QUICK, "--out", str(out), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600 * SCALE,
                          env={**os.environ, **(env or {})})


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, gp_report(out)


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_reference_mode_reproduces_every_fault_and_verifies_every_fix(reference_run):
    out, done = reference_run
    assert done.returncode == 0, done.stderr
    summary = summary_of(out)
    assert summary["mode"] == "reference" and summary["target"] is None and summary["verdict"] == "pass"
    assert re.fullmatch(r"\d{8}T\d{6}Z", summary["run_id"])
    assert list(summary["scenarios"]) == list(batch.DEFAULT_SCENARIOS)
    for name, entry in summary["scenarios"].items():
        assert entry["verdict"] == "pass" and entry["report"] == batch.REGISTRY[name].report
        assert entry["checks"] and entry["metrics"]
    for name in batch.DEFAULT_SCENARIOS:
        assert (out / "notebooks" / batch.REGISTRY[name].notebook).is_file()
        assert list((out / "traces").glob(f"{name}-*.jsonl"))


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_reference_reports_have_the_sections_in_order_and_their_images(reference_run):
    out, _ = reference_run
    for name in batch.DEFAULT_SCENARIOS:
        text = (out / batch.REGISTRY[name].report).read_text()
        assert text.startswith(f"# {batch.REGISTRY[name].title}: PASS")
        assert re.findall(r"^## (.+)$", text, flags=re.M) == [SECTION_TITLES[s] for s in SECTIONS]
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert images and all(i.startswith("assets/") and (out / i).is_file() for i in images)
        assert "```python" not in text and "application/scrapbook" not in text and "<div" not in text


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_reference_run_writes_junit_and_progress_lines(reference_run):
    out, done = reference_run
    root = ET.parse(out / "junit.xml").getroot()
    assert {s.get("name") for s in root.iter("testsuite")} == set(batch.DEFAULT_SCENARIOS)
    assert root.get("failures") == "0" and root.get("errors") == "0" and int(root.get("tests")) >= 8
    for name in batch.DEFAULT_SCENARIOS:
        assert re.search(rf"^gp: {name}: started ", done.stderr, flags=re.M)
        assert re.search(rf"^gp: {name}: finished: pass in \d+\.\d s$", done.stderr, flags=re.M)
    assert done.stdout.strip() == f"gp report: pass: {out / 'summary.json'}"


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_live_mode_against_a_healthy_server_exits_0(tmp_path):
    with running_server(secret=KNOWN_SECRET) as server:
        done = gp_report(tmp_path / "out", "--target", server.url, env={"JWT_SECRET_KEY": KNOWN_SECRET})
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path / "out")
    assert summary["mode"] == "live" and summary["target"] == server.url and summary["diagnosis"] == []


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_a_healthy_server_whose_marker_has_no_connection_id_passes_with_the_undecidable_checks_listed(tmp_path):
    with running_server(dialect="system_message", secret=KNOWN_SECRET) as server:
        done = gp_report(tmp_path / "out", "--target", server.url, "--scenario", "factory_initialization",
                         env={"JWT_SECRET_KEY": KNOWN_SECRET})
    assert done.returncode == 0, done.stderr
    entry = summary_of(tmp_path / "out")["scenarios"]["factory_initialization"]
    statuses = {c["name"]: c["status"] for c in entry["checks"]}
    assert entry["verdict"] == "pass" and statuses["unique_connection_ids"] == "inconclusive"
    assert "fail" not in statuses.values() and entry["dialect"]["live"]["dialect"] == "detected"
    report = (tmp_path / "out" / batch.REGISTRY["factory_initialization"].report).read_text()
    assert report.startswith("# Factory initialization: PASS")
    assert "1 inconclusive on this target (unique_connection_ids)" in report
    assert re.search(r"^\| unique_connection_ids \| live \| INCONCLUSIVE \| .*no readiness marker carried a "
                     r"connection id", report, flags=re.M)
    assert "without a connection id" in report  # the environment says which dialect was detected


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_a_server_that_does_not_check_tokens_fails_the_run_with_the_security_finding_first(tmp_path):
    with running_server(dialect="netra_demo", secret=KNOWN_SECRET) as server:
        done = gp_report(tmp_path / "out", "--target", server.url, "--scenario", "race_conditions",
                         env={"JWT_SECRET_KEY": KNOWN_SECRET})
    summary = summary_of(tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert summary["scenarios"]["race_conditions"]["verdict"] == "pass" and summary["verdict"] == "fail"
    assert summary["diagnosis"][0]["root_cause"] == "authentication_not_enforced"
    report = (tmp_path / "out" / batch.REGISTRY["race_conditions"].report).read_text()
    assert "authentication_not_enforced" in report and "netra" in report


@pytest.fixture(scope="module")
def missing_events_run(tmp_path_factory):
    """A live run against a server whose agent runs skip the tool events, with known secrets in the environment."""
    out = tmp_path_factory.mktemp("omit_tools") / "out"
    with running_server({"events": "omit_tools"}, secret=KNOWN_SECRET, bypass_key=KNOWN_BYPASS_KEY) as server:
        done = gp_report(out, "--target", server.url,
                         env={"JWT_SECRET_KEY": KNOWN_SECRET, "E2E_OAUTH_SIMULATION_KEY": KNOWN_BYPASS_KEY})
    return out, done


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_missing_events_fail_with_exit_1_and_say_which_checks_and_why(missing_events_run):
    out, done = missing_events_run
    assert done.returncode == 1, done.stderr
    summary = summary_of(out)
    assert summary["verdict"] == "fail" and summary["scenarios"]["missing_events"]["verdict"] == "fail"
    failed = [c for c in summary["scenarios"]["missing_events"]["checks"] if c["status"] == "fail"]
    assert failed and all(c["evidence"] for c in failed)
    assert summary["diagnosis"][0]["root_cause"] == "missing_events"
    report = (out / batch.REGISTRY["missing_events"].report).read_text()
    assert report.startswith("# Missing events: FAIL")
    for check in failed:
        assert check["name"] in report and check["evidence"].split(";")[0] in report
    junit_failures = [c.get("name") for c in ET.parse(out / "junit.xml").getroot().iter("testcase")
                      if c.get("classname") == "missing_events" and c.find("failure") is not None]
    assert junit_failures == [c["name"] for c in failed]


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_no_secret_and_no_token_in_any_file_under_out(missing_events_run):
    out, done = missing_events_run
    assert "warning: redacted" not in done.stderr, "a secret reached OUT before the final scrub caught it"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert KNOWN_SECRET.encode() not in data, path
        assert KNOWN_BYPASS_KEY.encode() not in data, path
        assert not JWT_SHAPE.search(data), path


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_an_unreachable_target_exits_2_with_verdict_error_and_says_so(tmp_path):
    url = f"ws://127.0.0.1:{free_port()}/ws"
    done = gp_report(tmp_path / "out", "--target", url, env={"JWT_SECRET_KEY": KNOWN_SECRET})
    assert done.returncode == 2, done.stderr
    summary = summary_of(tmp_path / "out")
    assert summary["verdict"] == "error"
    assert [d["root_cause"] for d in summary["diagnosis"]] == ["unreachable"]
    for name, entry in summary["scenarios"].items():
        assert entry["verdict"] == "error" and "unreachable" in entry["error"]
        report = (tmp_path / "out" / entry["report"]).read_text()
        assert report.startswith(f"# {batch.REGISTRY[name].title}: ERROR\n\n**The run could not be made:** not run: the "
                                 "preflight stopped the run: target unreachable")


# -- scheduling examples ------------------------------------------------------------------------------

def test_the_airflow_dag_is_valid_python_running_gp_report():
    source = (ROOT / "examples" / "airflow_dag.py").read_text()
    compile(source, "airflow_dag.py", "exec")
    assert "gp report --target" in source and "--out" in source


def test_the_ci_job_runs_gp_report_and_archives_out_whatever_the_outcome():
    import yaml

    workflow = yaml.safe_load((ROOT / "examples" / "ci-job.yml").read_text())
    for job in workflow["jobs"].values():
        runs = " ".join(step.get("run", "") for step in job["steps"])
        out = re.search(r"gp report .*--out \"?([\w/]+)", runs).group(1)
        upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
        assert upload["if"] == "always()" and upload["with"]["path"] == out


@pytest.mark.notebook
def test_a_notebook_sees_the_environment_of_its_batch_not_of_the_fork_servers_start(tmp_path, monkeypatch):
    """Workers fork from a server started once per process: a variable set since (a secret exported by a
    wrapper, a test's monkeypatch) must still reach the kernel."""
    from concurrent.futures import ProcessPoolExecutor

    context = batch._workers_context()  # the fork server runs from here on
    monkeypatch.setenv("GP_TEST_LATE_VARIABLE", "set after the fork server started")
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})
    notebook.cells = [nbformat.v4.new_code_cell(
        "import os, pathlib\npathlib.Path('seen.txt').write_text(os.environ.get('GP_TEST_LATE_VARIABLE', 'unset'))")]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    job = {"scenario": "environment", "cwd": str(tmp_path), "input": "in.ipynb", "output": "out.ipynb",
           "log": str(tmp_path / "out.log"), "timeout_s": 120, "parameters": {}, "environ": dict(os.environ)}
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        result = pool.submit(batch.execute, job).result(timeout=300 * SCALE)
    assert result["error"] is None, (tmp_path / "out.log").read_text()
    assert (tmp_path / "seen.txt").read_text() == "set after the fork server started"
