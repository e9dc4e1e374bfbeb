"""Kernels forked from the batch's preloaded worker (`gp_lib.kernel_seed`): used, signalled, and replaced
by the usual start when there is no seed."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import pytest

from gp_lib import batch, kernel_seed

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("GP_TIME_SCALE", "1"))
#: A cell that says where its kernel came from: forked from the preloaded worker (pandas already imported,
#: the worker its parent), in a session of its own as jupyter_client starts kernels.
WHERE_FROM = """import json, os, sys, pathlib
pathlib.Path('kernel.json').write_text(json.dumps({
    "pandas_preloaded": "pandas" in sys.modules, "pid": os.getpid(), "ppid": os.getppid(),
    "own_session": os.getsid(0) == os.getpid(), "backend": __import__("matplotlib").get_backend(),
    "secret_seen": os.environ.get("GP_TEST_KERNEL_VARIABLE")}))"""


def _notebook(path: Path, *sources: str) -> None:
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, path)


def _execute(tmp_path: Path, timeout_s: float = 120) -> tuple[dict, int]:
    """Run tmp_path/in.ipynb as `gp report` runs a notebook: in a worker forked from the fork server."""
    job = {"scenario": "seed", "cwd": str(tmp_path), "input": "in.ipynb", "output": "out.ipynb",
           "log": str(tmp_path / "out.log"), "timeout_s": timeout_s, "parameters": {},
           "environ": {**os.environ, "GP_TEST_KERNEL_VARIABLE": "given with the job"}}
    with ProcessPoolExecutor(max_workers=1, mp_context=batch._workers_context()) as pool:
        worker_pid = pool.submit(os.getpid).result(timeout=300 * SCALE)
        return pool.submit(batch.execute, job).result(timeout=300 * SCALE), worker_pid


@pytest.mark.notebook
def test_a_batch_notebook_runs_in_a_kernel_forked_from_its_preloaded_worker(tmp_path):
    _notebook(tmp_path / "in.ipynb", WHERE_FROM, "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    result, worker_pid = _execute(tmp_path)
    assert result["error"] is None, (tmp_path / "out.log").read_text()
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    assert kernel["pandas_preloaded"], "the kernel was started from scratch, not forked from the seed"
    assert kernel["ppid"] == worker_pid and kernel["own_session"]
    assert kernel["backend"] == "module://matplotlib_inline.backend_inline"
    assert kernel["secret_seen"] == "given with the job"
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for o in executed.cells[1].outputs), "the figure was not shown"
    log = (tmp_path / "out.log").read_text()
    assert "Ctrl-C will not work" not in log  # it knows its parent, as a kernel jupyter_client started does
    with pytest.raises(ProcessLookupError):
        os.kill(kernel["pid"], 0)  # shut down and reaped with the notebook


@pytest.mark.notebook
def test_a_seeded_kernel_is_interrupted_at_the_execution_timeout_and_ends_with_the_notebook(tmp_path):
    _notebook(tmp_path / "in.ipynb", WHERE_FROM, "import time\ntime.sleep(120)")
    started = time.monotonic()
    result, _ = _execute(tmp_path, timeout_s=3)
    assert result["error"] and "timed out" in result["error"].lower(), result["error"]
    assert time.monotonic() - started < 90 * SCALE
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    assert kernel["pandas_preloaded"]
    with pytest.raises(ProcessLookupError):
        os.kill(kernel["pid"], 0)


@pytest.mark.notebook
@pytest.mark.timeout(300)
def test_a_seeded_kernel_starts_the_dask_workers_a_storm_spreads_over(tmp_path):
    """The seed is a fork of a pool worker, not a fresh interpreter: its own worker processes must still start."""
    _notebook(tmp_path / "in.ipynb", WHERE_FROM, """import asyncio, json, pathlib
from gp_lib import storm
pool = storm.Pool(spread_from=1, workers=2)
try:
    await asyncio.to_thread(pool.start)
    pathlib.Path('pool.json').write_text(json.dumps(len(pool.addresses)))
finally:
    await pool.aclose()""")
    result, _ = _execute(tmp_path)
    assert result["error"] is None, (tmp_path / "out.log").read_text()
    assert json.loads((tmp_path / "kernel.json").read_text())["pandas_preloaded"]
    assert json.loads((tmp_path / "pool.json").read_text()) == 2


@pytest.mark.notebook
def test_without_a_seed_the_kernel_starts_the_usual_way(tmp_path):
    """A retried start (the seed serves one launch) or a failed fork: papermill's own kernel start."""
    import papermill as pm

    _notebook(tmp_path / "in.ipynb", WHERE_FROM)
    assert kernel_seed._seed is None
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(tmp_path),
                        kernel_manager_class=kernel_seed.SeededKernelManager, progress_bar=False)
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    assert not kernel["pandas_preloaded"] and kernel["ppid"] == os.getpid()


def test_an_unused_seed_ends_when_discarded():
    seed = kernel_seed.Seed()
    os.kill(seed.pid, 0)  # waiting for a command
    seed.discard()
    assert seed.used
    with pytest.raises(ChildProcessError):
        os.waitpid(seed.pid, os.WNOHANG)  # ended and reaped


def test_a_seed_that_is_not_this_interpreters_ipykernel_is_not_used():
    assert kernel_seed._is_this_ipykernel([os.path.realpath(sys.executable), "-m", "ipykernel_launcher", "-f", "c"])
    assert not kernel_seed._is_this_ipykernel(["/usr/bin/python3.9", "-m", "ipykernel_launcher", "-f", "c"])
    assert not kernel_seed._is_this_ipykernel([sys.executable, "-m", "other_kernel", "-f", "c"])


def _imported_modules(source: str) -> set[str]:
    """The modules a cell imports (`from P import m` is module `P.m` when that is a module)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                modules.add(name if _is_module(name) else node.module)
    return modules


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("notebook", sorted(entry.notebook for entry in batch.REGISTRY.values()))
def test_the_fork_server_preloads_everything_a_scenario_notebook_imports(notebook):
    """A module a notebook imports that the fork server does not preload costs every batch kernel its
    import again: the list in `batch.KERNEL_PRELOAD` must follow the notebooks."""
    cells = nbformat.read(ROOT / "notebooks" / notebook, as_version=4).cells
    imported = set().union(*(_imported_modules(c.source) for c in cells if c.cell_type == "code"
                             and "import " in c.source))
    assert imported, "no import found"
    assert imported <= set(batch.KERNEL_PRELOAD), f"not preloaded: {sorted(imported - set(batch.KERNEL_PRELOAD))}"


def test_a_seeded_kernels_wait_keeps_to_its_timeout_as_popen_does():
    import signal
    import subprocess

    seed = kernel_seed.Seed()
    process = kernel_seed.KernelProcess(seed.pid)  # a seed still waiting for its command: a child that lives on
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)
        assert process.poll() is None
        process.kill()
        assert process.wait(timeout=30 * SCALE) == -signal.SIGKILL
    finally:
        seed.discard()
