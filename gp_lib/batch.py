"""`gp report`: run the scenario notebooks with papermill and write what a reviewer or a CI job needs.

Each notebook runs in its own process and kernel (papermill is not safe in
threads), up to `--jobs` at once. A kernel that dies before running any cell
is restarted (parallel kernel starts can collide on ports, papermill issue
511); every cell has an execution timeout; a notebook that raises gets
verdict `error` and does not stop the others.

OUT holds the reports, `summary.json`, `junit.xml`, `index.html`, the executed
notebooks (`notebooks/`, with each kernel's log), the traces and the figures.
Exit codes: 0 every check passed, 1 a check failed, 2 the run could not be
made, 130 interrupted (what finished is still written).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Mapping

from gp_lib.escape import Trusted, terminal
from gp_lib.redact import redact, register_secret

if TYPE_CHECKING:
    from gp_lib.params import Layered
    from gp_lib.report import ReportContext

# This module is the notebook workers' entry point and the fork server preloads it: what only the batch
# process needs (pandas, nbconvert, the scenarios) is imported where it is used.

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
PARAMETERS_DIR = ROOT / "parameters"
REPORTS_DIR = ROOT / "reports"
MAX_DEFAULT_JOBS = 4
DEFAULT_TIMEOUT_S = 600
KERNEL_START_ATTEMPTS = 3
EXIT_CODES = {"pass": 0, "fail": 1, "error": 2}
#: Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130
#: What a run leaves in OUT: one of these there means OUT holds an earlier run.
EARLIER_RUN = ("summary.json", "junit.xml", "notebooks", "traces")
INTERRUPTED = "interrupted before it finished (Ctrl-C or SIGTERM)"
#: What the fork server imports for the kernels: ipykernel and what the notebooks' first cells import (not
#: Matplotlib's inline backend: imported inside the kernel, it hooks itself into the kernel's shell).
KERNEL_PRELOAD = ["ipykernel.kernelapp", "tqdm", "pandas", "matplotlib.pyplot",
                  "gp_lib.diagnosis", "gp_lib.next_steps", "gp_lib.notebook", "gp_lib.plots.race",
                  "gp_lib.plots.dependencies", "gp_lib.plots.factory", "gp_lib.plots.events",
                  "gp_lib.scenarios.race_conditions", "gp_lib.scenarios.service_dependencies",
                  "gp_lib.scenarios.factory_initialization", "gp_lib.scenarios.missing_events"]
#: How long the notebooks still running get to stop after an interrupt before they are killed.
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Entry:
    """A notebook `gp report` can run: its scenario, its file under notebooks/, its report."""

    scenario: str
    notebook: str
    report: str
    title: str

    def params_class(self) -> type:
        """The scenario's `Params`, whose fields are exactly the notebook's parameters."""
        return importlib.import_module(f"gp_lib.scenarios.{self.scenario}").Params


#: Every notebook `gp report` knows, by scenario name; add an Entry to add one.
REGISTRY = {e.scenario: e for e in (
    Entry("race_conditions", "01_websocket_race_conditions.ipynb",
          "GOLDEN_PATH_WEBSOCKET_RACE_CONDITIONS_TEST_REPORT.md", "WebSocket race conditions"),
    Entry("service_dependencies", "02_service_dependencies.ipynb",
          "GOLDEN_PATH_SERVICE_DEPENDENCIES_TEST_REPORT.md", "Service dependencies"),
    Entry("factory_initialization", "03_factory_initialization.ipynb",
          "GOLDEN_PATH_FACTORY_INITIALIZATION_TEST_REPORT.md", "Factory initialization"),
    Entry("missing_events", "04_missing_events.ipynb",
          "GOLDEN_PATH_MISSING_EVENTS_TEST_REPORT.md", "Missing events"),
)}
#: What `gp report` runs when no --scenario is given.
DEFAULT_SCENARIOS = ("race_conditions", "service_dependencies", "factory_initialization", "missing_events")


# -- the command line ---------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", metavar="URL", help="ws:// or wss:// URL of a live server (live mode); "
                        "without it each scenario runs the reference server with its fault and fixed")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help=f"run only this scenario; repeatable (default: {', '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--params", metavar="FILE", help="a YAML parameter file, e.g. parameters/quick.yaml")
    parser.add_argument("-p", dest="assign", action="append", default=[], metavar="KEY=VALUE",
                        help="set a parameter (YAML value); SCENARIO.KEY=VALUE for one scenario; repeatable")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: reports/<run id>, and "
                        "reports/latest points at it)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), metavar="N",
                        help=f"notebooks run at once (default: two per core, at most {MAX_DEFAULT_JOBS}; here "
                             f"{default_jobs()})")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tls://HOST:8786 (tcp:// on "
                        "this machine only), whose workers take the storms too large for one process (parameter "
                        "scheduler; default: worker processes on this machine)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"execution timeout of each notebook cell (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--force", action="store_true",
                        help="write into an --out folder that holds an earlier run: the files this run writes "
                             "replace theirs, the others stay (delete the folder for a clean run)")


def default_jobs() -> int:
    """Two notebooks per core, at most four: a notebook spends about half its time waiting on the network
    and on injected delays, so two share a core; the client-load check says when timings suffered."""
    return max(1, min(2 * (os.cpu_count() or 1), MAX_DEFAULT_JOBS))


def run(args: argparse.Namespace) -> int:
    _workers_context()  # first: the fork server's imports run while this process imports and plans
    from gp_lib.scenarios.common import ParameterError

    try:
        plan = make_plan(args)
    except ParameterError as exc:
        print(f"gp report: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    try:
        seen = run_preflight(plan)
        if seen is not None and seen.stop:
            write_stopped(plan, seen)
            print(redact(f"gp report: error: {terminal(seen.stop)}\ngp report: the run was stopped before its "
                         f"traffic: {plan.out / 'summary.json'}"), file=sys.stderr)
            return 2
        summary = run_plan(plan, seen.to_dict() if seen is not None else None)
    except KeyboardInterrupt:
        written = (plan.out / "summary.json").is_file()
        print("gp report: interrupted: " + (f"what finished is in {plan.out / 'summary.json'} and junit.xml"
                                            if written else "before summary.json was written"),
              file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception:  # exit 1 would say "an issue was found": this run could not be made
        print(redact(f"gp report: error: the run could not be made:\n{traceback.format_exc()}"), file=sys.stderr)
        return 2
    print(f"gp report: {summary['verdict']}: {plan.out / 'summary.json'}")
    return EXIT_CODES[summary["verdict"]]


# -- the plan: everything decided before any traffic -------------------------------------------

@dataclass
class Plan:
    """One batch run, validated: which notebooks, with what, where."""

    run_id: str
    out: Path
    entries: list[Entry]
    parameters: dict[str, Layered]
    commands: dict[str, str]
    jobs: int
    timeout_s: float
    notebooks_dir: Path = NOTEBOOKS_DIR
    latest: Path | None = None     # the symlink to point at `out`, for the default OUT


def make_plan(args: argparse.Namespace, registry: Mapping[str, Entry] = REGISTRY,
              notebooks_dir: Path = NOTEBOOKS_DIR) -> Plan:
    """Validate the arguments and every scenario's parameters; choose OUT.

    Raises:
        ParameterError: naming the unknown scenario, key or bad value, a missing notebook, an --out
            that is a file, or (live mode) the unset environment variable meant to hold the secret.
    """
    from gp_lib.params import resolve
    from gp_lib.scenarios.common import ParameterError

    names = list(dict.fromkeys(args.scenario or DEFAULT_SCENARIOS))
    for option, value, least in (("--jobs", args.jobs, 1), ("--timeout", args.timeout, 1)):
        if not value >= least:  # NaN too
            raise ParameterError(f"{option} must be at least {least}, got {value}")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ParameterError(f"--out {args.out}: exists and is not a directory")
    earlier = [name for name in EARLIER_RUN if args.out and (Path(args.out) / name).exists()]
    if earlier and not getattr(args, "force", False):
        raise ParameterError(f"--out {args.out} holds an earlier run ({earlier[0]}): its files would mix with "
                             "this run's; choose another folder, or pass --force to replace them")
    missing = [f"{name}: {notebooks_dir / registry[name].notebook}" for name in names
               if name in registry and not (notebooks_dir / registry[name].notebook).is_file()]
    if missing:
        raise ParameterError(f"notebook not found for {', '.join(missing)}")
    classes = {name: entry.params_class() for name, entry in registry.items()}
    parameters = resolve(classes, names, parameters_dir=PARAMETERS_DIR, params_file=args.params,
                         assignments=[*args.assign, *_scheduler_assignment(args)], target=args.target)
    _check_secrets(parameters)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out, latest = (Path(args.out), None) if args.out else (_fresh(REPORTS_DIR / run_id), REPORTS_DIR / "latest")
    return Plan(run_id=out.name if latest else run_id, out=out.resolve(), entries=[registry[n] for n in names],
                parameters=parameters, commands={n: command_line(args, n) for n in names},
                jobs=min(args.jobs, len(names)), timeout_s=args.timeout, notebooks_dir=notebooks_dir, latest=latest)


def _scheduler_assignment(args: argparse.Namespace) -> list[str]:
    """`--scheduler` as the `-p scheduler=...` it stands for."""
    return [f"scheduler={args.scheduler}"] if getattr(args, "scheduler", None) else []


def _check_secrets(parameters: Mapping[str, Layered]) -> None:
    """In live mode the secret tokens come from must be in the environment: said once, before any
    notebook starts, rather than by every notebook raising."""
    from gp_lib.scenarios.common import ParameterError

    for name, layered in parameters.items():
        p = layered.params
        if p.mode != "live":
            continue
        variable, holds = ((p.jwt_secret_env, "the JWT signing secret (parameter jwt_secret_env names it)")
                           if p.env == "local" else
                           (p.bypass_key_env, "the staging E2E bypass key (parameter bypass_key_env names it)"))
        if not os.environ.get(variable):
            raise ParameterError(f"{name}: environment variable {variable} is not set; it must hold {holds}")


def _fresh(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... when a run started in the same second."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def command_line(args: argparse.Namespace, scenario: str) -> str:
    """The `gp report` command that repeats this run for one scenario (OUT and jobs aside)."""
    parts = ["gp", "report"]
    if args.target:
        parts += ["--target", args.target]
    parts += ["--scenario", scenario]
    if args.params:
        parts += ["--params", args.params]
    for assignment in args.assign:
        parts += ["-p", assignment]
    if getattr(args, "scheduler", None):
        parts += ["--scheduler", args.scheduler]
    return shlex.join(parts)


# -- execution ------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one notebook run left: its scraps, or why it has none."""

    entry: Entry
    executed: Path
    seconds: float
    scraps: dict[str, Any]
    error: str | None = None      # the notebook raised, timed out, or no kernel started
    notebook: Any = None          # the executed notebook as read (nbformat), for its reports

    @property
    def verdict(self) -> str:
        return "error" if self.error else self.scraps["summary"]["verdict"]

    @property
    def why(self) -> str | None:
        """Why the run could not be made: the notebook's failure, or the scenario's own error."""
        return self.error or self.scraps.get("summary", {}).get("error")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled or timed out) stops the batch as Ctrl-C does: no further notebook starts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_preflight(plan: Plan) -> Any:
    """In live mode, one connection and the health routes before any notebook (`gp_lib.preflight`)."""
    from gp_lib import preflight

    params = next(iter(plan.parameters.values())).params
    if params.mode != "live":
        return None
    _register_secrets(plan)
    seen = preflight.run(params)
    print(redact(f"gp: preflight: {terminal(seen.line())}"), file=sys.stderr, flush=True)  # the server's words
    return seen


def _register_secrets(plan: Plan) -> None:
    """The secrets the run's tokens come from, redacted from everything it prints and writes."""
    for layered in plan.parameters.values():
        register_secret(os.environ.get(layered.params.jwt_secret_env))
        register_secret(os.environ.get(layered.params.bypass_key_env))


def write_stopped(plan: Plan, seen: Any) -> None:
    """What a run the preflight stopped leaves: summary.json (verdict error, the cause as its diagnosis),
    junit.xml, and a report per scenario that says why it was not run."""
    from gp_lib import report

    now = _now()
    (plan.out / "notebooks").mkdir(parents=True, exist_ok=True)
    why = f"not run: the preflight stopped the run: {seen.stop}"
    outcomes = [Outcome(entry, plan.out / "notebooks" / entry.notebook, 0.0, {}, why) for entry in plan.entries]
    sections = [write_scenario_reports(plan, outcome) for outcome in outcomes]
    summary = {"run_id": plan.run_id, "mode": "live", "target": seen.target, "started_at": now, "finished_at": now,
               "verdict": "error",
               "scenarios": {e.scenario: {"verdict": "error", "report": e.report, "checks": [], "metrics": {},
                                          "error": why} for e in plan.entries},
               "diagnosis": [{"root_cause": seen.root_cause, "confidence": 0.99, "evidence": [seen.stop]}],
               "preflight": seen.to_dict()}
    (plan.out / "summary.json").write_text(report.summary_json(summary))
    (plan.out / "junit.xml").write_text(report.junit_xml(summary, {}))
    write_index(plan, summary, sections)
    if plan.latest is not None:
        _point(plan.latest, plan.out)


def run_plan(plan: Plan, preflight: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Execute every notebook of the plan, render the reports; the summary written to OUT.

    Each notebook's reports are rendered and its files scrubbed as soon as it
    finishes, while the others still run; the end assembles the summary.
    """
    started_at = _now()
    _register_secrets(plan)
    (plan.out / "notebooks").mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    sections: dict[str, str] = {}   # each scenario's part of index.html
    scrubbed: set[Path] = set()
    interrupted = False
    handlers = _interrupt_handlers()
    context = _workers_context()
    with _sigterm_as_interrupt(), ProcessPoolExecutor(max_workers=plan.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        waiting, running = list(plan.entries), {}
        warm = min(plan.jobs, len(plan.entries)) < (os.cpu_count() or 1)  # a core left idle by the notebooks
        try:
            while waiting or running:  # submitted only as workers free up: after Ctrl-C no notebook starts
                while waiting and len(running) < plan.jobs:
                    entry = waiting.pop(0)
                    running[pool.submit(execute, _job(plan, entry))] = entry
                if warm:
                    _warm_renderers()
                    warm = False
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    entry = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker process itself died
                        result = {"error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
                    outcome = outcomes[entry.scenario] = collect(plan, entry, result)
                    sections[entry.scenario] = write_scenario_reports(plan, outcome)
                    scrubbed |= scrub(plan.out, _notebook_files(plan, entry))
                    print(f"gp: {entry.scenario}: finished: {outcome.verdict} in {outcome.seconds:.1f} s"
                          + (f" ({terminal(_first_line(outcome.why))})" if outcome.why else ""), file=sys.stderr,
                          flush=True)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the notebooks, then write what finished
            interrupted = True
            _ignore_interrupts()  # a second Ctrl-C must not lose the summary
            _stop_workers(pool)
    _ignore_interrupts()  # from here to the end, summary.json, junit.xml and index.html are written whatever comes
    try:
        summary = _write_run(plan, outcomes, sections, scrubbed, interrupted, started_at, preflight)
    finally:
        _restore(handlers)
    if interrupted:
        raise KeyboardInterrupt("interrupted; summary.json and junit.xml written")
    return summary


def _warm_renderers() -> None:
    """Import nbconvert and compile the report templates on a core the first notebooks leave idle: about
    1 s of CPU that the first report would pay, after the last notebook when the batch runs one. (Where
    the notebooks keep every core busy, warming early slowed a batch: the first report pays it then.)"""
    from gp_lib import index_html, report

    report.warm()
    index_html.warm()


def _write_run(plan: Plan, outcomes: dict[str, Outcome], sections: dict[str, str], scrubbed: set[Path],
               interrupted: bool, started_at: str, preflight: Mapping[str, Any] | None) -> dict[str, Any]:
    """summary.json, junit.xml and index.html from what finished, then the last scrub; the summary."""
    from gp_lib import diagnosis, report
    from gp_lib.checks import overall_verdict

    if interrupted:
        for entry in plan.entries:
            if entry.scenario not in outcomes:
                outcomes[entry.scenario] = Outcome(entry, plan.out / "notebooks" / entry.notebook, 0.0, {}, INTERRUPTED)
            if entry.scenario not in sections:
                sections[entry.scenario] = write_scenario_reports(plan, outcomes[entry.scenario])
    ordered = [outcomes[e.scenario] for e in plan.entries]
    first = next(iter(plan.parameters.values())).params
    findings = diagnosis.combine({o.entry.scenario: o.scraps for o in ordered}, base_dir=plan.notebooks_dir)
    summary = {
        "run_id": plan.run_id,
        "mode": first.mode,
        "target": first.target_url,
        "started_at": started_at,
        "finished_at": _now(),
        "verdict": diagnosis.with_security(overall_verdict(o.verdict for o in ordered), findings, first.mode),
        "interrupted": interrupted,
        "scenarios": {o.entry.scenario: scenario_summary(o) for o in ordered},
        "diagnosis": findings,
        **({"preflight": dict(preflight)} if preflight else {}),
    }
    (plan.out / "summary.json").write_text(report.summary_json(summary))
    (plan.out / "junit.xml").write_text(report.junit_xml(summary, {o.entry.scenario: o.seconds for o in ordered}))
    index = write_index(plan, summary, [sections[o.entry.scenario] for o in ordered])
    scrub(plan.out, skip=scrubbed | {index})  # index.html was redacted as it was written
    if plan.latest is not None:
        _point(plan.latest, plan.out)
    return summary


def _workers_context() -> Any:
    """The multiprocessing context of the notebook workers, its fork server started (once per process).

    Workers fork from a server process that imported this module, papermill and,
    for the kernels they fork (`gp_lib.kernel_seed`), ipykernel and the lab, once:
    seconds of CPU that each worker and kernel would pay again. It is
    single-threaded, so forking it is safe. Started first, its imports overlap the
    batch's own.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gp_lib.batch", "papermill", "gp_lib.kernel_seed", *KERNEL_PRELOAD])
    forkserver.ensure_running()
    return context


def _interrupt_handlers() -> dict[int, Any]:
    """SIGINT's and SIGTERM's handlers now (to put back after the run), when this is the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: Mapping[int, Any]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, cannot be put back from here
            signal.signal(signum, handler)


def _ignore_interrupts() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the notebooks still running: SIGINT first (papermill then shuts its kernel down), then kill.
    Nothing new is submitted after an interrupt, so the pool's own shutdown then finds nothing to wait for."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # the executor has no public handle on them
    for worker in workers:
        with contextlib.suppress(OSError):
            os.kill(worker.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()


def _job(plan: Plan, entry: Entry) -> dict[str, Any]:
    """What a worker needs, with paths relative to notebooks/ so none of this machine's reach the notebook."""
    executed = plan.out / "notebooks" / entry.notebook
    return {"scenario": entry.scenario, "cwd": str(plan.notebooks_dir), "input": entry.notebook,
            "output": os.path.relpath(executed, plan.notebooks_dir),
            "log": str(executed.with_suffix(".log")), "timeout_s": plan.timeout_s, "environ": dict(os.environ),
            "parameters": {**plan.parameters[entry.scenario].values,
                           "out_dir": os.path.relpath(plan.out, plan.notebooks_dir)}}


def execute(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one notebook with papermill, in a worker process of its own; `{"error", "seconds"}`.

    The kernel's output and papermill's log go to the job's log file, so the
    terminal shows only the progress lines.
    """
    import logging

    import papermill as pm

    from gp_lib import kernel_seed

    signal.signal(signal.SIGINT, signal.default_int_handler)  # `_stop_workers` stops us with it, even when the
    # shell that started the batch ignored it (a background job, nohup) and the workers inherited that
    sys.stderr.write(f"gp: {job['scenario']}: started {job['input']}\n")  # one write: workers start at once
    sys.stderr.flush()
    started = time.monotonic()
    os.environ.clear()  # the fork server's copy dates from its start: the kernel gets the batch's environment now
    os.environ.update(job["environ"])
    os.chdir(job["cwd"])
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    kernel_seed.plant()  # before anything starts a thread, an event loop or a ZMQ context in this process
    try:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
        error = with_kernel_retries(lambda: pm.execute_notebook(
            job["input"], job["output"], parameters=dict(job["parameters"]), cwd=".", engine_name=_saving_at_end(),
            kernel_manager_class=kernel_seed.SeededKernelManager, execution_timeout=job["timeout_s"],
            progress_bar=False), job["output"])
    finally:
        kernel_seed.uproot()
    return {"error": error, "seconds": time.monotonic() - started}


@functools.cache
def _saving_at_end() -> str:
    """Register (once per worker) papermill's own engine, changed to write the executed notebook when it ends
    rather than at every cell's start and end; the name to pass as `engine_name`.

    papermill writes, and nbformat validates, the whole notebook twice per cell so that someone can watch
    it fill up; nobody watches a batch's notebooks, and those writes cost 0.35 s of CPU per notebook.
    papermill still writes it at the start and, in a `finally`, at the end: after an error, a timeout or
    an interrupt too, so the cells that ran (and whether any did, for `cells_started`) are kept.
    """
    from papermill.engines import NBClientEngine, papermill_engines

    class SavingAtEnd(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            nb_man.save = lambda **_: None  # shadows the method for the cells only
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            finally:
                del nb_man.save

    papermill_engines.register("gp-saving-at-end", SavingAtEnd)
    return "gp-saving-at-end"


def with_kernel_retries(run_once: Callable[[], Any], output: str | Path, attempts: int = KERNEL_START_ATTEMPTS,
                        pause_s: float = 1.0) -> str | None:
    """Call `run_once`, again when it failed before any cell ran (a kernel that lost a port race);
    the failure as one sentence, or None."""
    attempt = 1
    while True:
        try:
            run_once()
            return None
        except Exception as exc:
            if attempt >= attempts or cells_started(output):
                return failure_message(exc)
            print(f"gp: no cell ran ({_first_line(str(exc))}); starting the kernel again", file=sys.stderr)
            time.sleep(pause_s * attempt)
            attempt += 1


def cells_started(path: str | Path) -> bool:
    """Whether any cell of a (partly) executed notebook began to run: if none did, a retry is safe."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except (OSError, ValueError):
        return False
    return any(c.get("metadata", {}).get("papermill", {}).get("start_time") for c in nb.cells)


def failure_message(exc: BaseException) -> str:
    """One plain sentence for a notebook that raised, timed out, or never started."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"the notebook raised {exc.ename}: {_first_line(exc.evalue)} (cell [{exc.exec_count}])"
    return f"the notebook could not be executed: {type(exc).__name__}: {_first_line(str(exc))}"


def collect(plan: Plan, entry: Entry, result: Mapping[str, Any]) -> Outcome:
    """The outcome of one worker: the executed notebook (read once, for its scraps and its reports), or the error."""
    import nbformat

    from gp_lib.notebook import read_scraps

    executed = plan.out / "notebooks" / entry.notebook
    scraps: dict[str, Any] = {}
    notebook = None
    error = result.get("error")
    if executed.exists():
        try:
            notebook = nbformat.read(str(executed), as_version=4)
            scraps = read_scraps(notebook)
        except Exception as exc:  # a notebook papermill wrote but nbformat cannot read
            error = error or f"the executed notebook cannot be read: {exc}"
    if not error and "summary" not in scraps:
        error = "the notebook finished without gluing its `summary` scrap"
    return Outcome(entry, executed, float(result.get("seconds", 0.0)), scraps, redact(error), notebook)


def scenario_summary(outcome: Outcome) -> dict[str, Any]:
    """The scenario's entry in summary.json."""
    entry = {"verdict": outcome.verdict, "report": outcome.entry.report,
             "checks": outcome.scraps.get("summary", {}).get("checks", []) if not outcome.error else [],
             "metrics": outcome.scraps.get("summary", {}).get("metrics", {}) if not outcome.error else {},
             "dialect": outcome.scraps.get("summary", {}).get("dialect", {}) if not outcome.error else {}}
    if outcome.why:
        entry["error"] = outcome.why
    elif outcome.scraps.get("failures_belong_to"):
        entry["failures_belong_to"] = outcome.scraps["failures_belong_to"]
    return entry


def write_scenario_reports(plan: Plan, outcome: Outcome) -> str:
    """Render the scenario's GOLDEN_PATH_*_TEST_REPORT.md from its executed notebook; its part of index.html."""
    from gp_lib import index_html, report

    executed = outcome.notebook if outcome.notebook is not None else outcome.executed
    context = scenario_context(plan, outcome)
    report.write_report(executed, plan.out, outcome.entry.report, context)
    return index_html.section(outcome.entry.title, executed, context)


def scenario_context(plan: Plan, outcome: Outcome) -> ReportContext:
    """What the batch knows about one scenario run, for its Markdown report and its part of index.html."""
    from gp_lib import report

    params = plan.parameters[outcome.entry.scenario].params
    facts = [("scenario", outcome.entry.scenario), ("mode", params.mode),
             ("target", params.target_url or "reference server, started per arm on 127.0.0.1"),
             ("run", plan.run_id), ("notebook", f"notebooks/{outcome.entry.notebook}"),
             ("executed notebook", Trusted(f"[notebooks/{outcome.entry.notebook}]"
                                           f"(notebooks/{outcome.entry.notebook})")),
             ("duration", f"{outcome.seconds:.1f} s")]
    return report.ReportContext(scenario=outcome.entry.scenario, title=outcome.entry.title, verdict=outcome.verdict,
                                error=outcome.why, facts=facts, command=plan.commands[outcome.entry.scenario],
                                parameters=plan.parameters[outcome.entry.scenario].values,
                                headline=None if outcome.error else outcome.scraps.get("headline"))


def write_index(plan: Plan, summary: Mapping[str, Any], sections: list[str]) -> Path:
    """OUT/index.html: the run's summary and every scenario's report (`write_scenario_reports`) on one
    self-contained page."""
    from gp_lib import index_html

    return index_html.write(plan.out, summary, sections)


# -- after the run ----------------------------------------------------------------------------

SCRUBBED = (".md", ".json", ".xml", ".ipynb", ".jsonl", ".log", ".txt", ".csv", ".html")


def scrub(out: Path, paths: Iterable[Path] | None = None, skip: Collection[Path] = ()) -> set[Path]:
    """Redact every text file under OUT (or only `paths`) but those in `skip`, and say which needed it:
    nothing secret may leave a run. The files read."""
    done = set()
    for path in sorted(out.rglob("*") if paths is None else paths):
        if path.suffix not in SCRUBBED or path in skip or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        clean = redact(text)
        if clean != text:
            temporary = path.with_name(f".{path.name}.scrubbed")  # replaced whole: never a file cut short
            temporary.write_text(clean)
            os.replace(temporary, path)
            print(f"gp: warning: redacted a secret or token from {path.relative_to(out)}", file=sys.stderr)
        done.add(path)
    return done


def _notebook_files(plan: Plan, entry: Entry) -> list[Path]:
    """What a finished notebook wrote and nothing writes any more: the executed notebook and its traces (its
    log is scrubbed at the end: the worker may still write to it)."""
    return [plan.out / "notebooks" / entry.notebook, *sorted((plan.out / "traces").glob(f"{entry.scenario}-*"))]


def _point(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to `target`, replacing the old one atomically."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(os.path.relpath(target, link.parent))
    os.replace(temporary, link)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _first_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""
