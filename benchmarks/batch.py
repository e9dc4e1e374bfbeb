"""How long the default batch takes against its slowest notebook, and where each notebook's time goes.

Run by hand, not in CI (on an idle machine: other work on the cores shows up as contention):

    .venv/bin/python benchmarks/batch.py [--params parameters/quick.yaml] [--jobs N]

Runs `gp report` (reference mode) three times into temporary folders: with `--jobs 1`,
where each notebook runs alone so its time is its solo time; with the
default jobs (or `--jobs N`); and with the slowest notebook only. Prints the
first two wall times, the CPU seconds each batch used (all its processes), and
the ratio of the default batch to its slowest notebook run alone (aim: <= 1.3)
with its two parts: the batch's time outside every notebook, and how much
longer the slowest notebook takes beside the others than alone. The third run
is the ratio's floor on this machine: a batch with nothing beside that notebook,
so only the batch's own start and finish.

Then, for each notebook in both batches, the time of each phase, all measured
from timestamps the run itself recorded:

- worker: the junit time less papermill's notebook duration (the worker's own share:
  papermill's setup and writing the executed notebook);
- kernel: papermill's notebook start to its first cell (kernel start);
- imports: the cell that imports `gp_lib`;
- servers: the rest of the traffic cell: reference servers starting and stopping, discovery, judging;
- traffic: the union of the arms' traffic windows, from the traces (first attempt
  started to last attempt closed);
- plots: cells tagged `section-plots`;
- cells: every other cell;
- render: the Markdown report rendered from the executed notebook (timed again here,
  with nbconvert, as the batch does it after the notebook);

with when each notebook ran (seconds since its batch began) and the CPU the batch used
meanwhile, and the batch's time and CPU outside every notebook (its own process alone,
before the first notebook and after the last).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gp_lib.batch import REGISTRY, default_jobs

PHASES = ("worker", "kernel", "imports", "servers", "traffic", "plots", "cells", "render")


@dataclass
class Batch:
    """One `gp report` as measured: wall seconds, when it began (epoch), each notebook's junit seconds, and
    the CPU seconds its process tree had used at each sample time (epoch)."""

    wall: float
    began: float
    seconds: dict[str, float]
    cpu: list[tuple[float, float]]

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the batch used between two epoch times (interpolated between samples)."""
        times, used = [t for t, _ in self.cpu], [c for _, c in self.cpu]
        return _interpolate(end, times, used) - _interpolate(start, times, used)


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    if not xs or x <= xs[0]:
        return ys[0] if ys else 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / ((x1 - x0) or 1)
    return ys[-1]


def batch(out: Path, jobs: int | None, params: str | None, scenario: str | None = None) -> Batch:
    """Run one `gp report` (of every default notebook, or of `scenario`'s only) into `out` and measure it."""
    command = [sys.executable, "-m", "gp_lib.cli", "report", "--out", str(out)]
    command += ["--jobs", str(jobs)] if jobs else []
    command += ["--scenario", scenario] if scenario else []
    command += ["--params", params] if params else []
    began = time.time()
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        cpu = tree_cpu(process)
        wall = time.perf_counter() - started
        if process.returncode not in (0, 1):
            stderr.seek(0)
            sys.exit(f"gp report --jobs {jobs} exited {process.returncode}:\n{stderr.read()}")
    suites = ET.parse(out / "junit.xml").getroot().iter("testsuite")
    return Batch(wall, began, {s.get("name"): float(s.get("time")) for s in suites}, cpu)


def tree_cpu(process: subprocess.Popen, every_s: float = 0.1) -> list[tuple[float, float]]:
    """CPU seconds of `process` and all its descendants until it exits, sampled from /proc: (epoch, CPU so far).

    Sampled rather than taken from getrusage, since the batch's notebook workers are children
    of a fork server that nobody waits for; a process that lives less than `every_s` may be missed.
    """
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, float] = {}
    samples = [(time.time(), 0.0)]
    while process.poll() is None:
        parents = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                pid = int(entry.name)
                parents[pid] = int(fields[1])
                if _descends(pid, process.pid, parents):
                    seen[pid] = (int(fields[11]) + int(fields[12])) / tick
        samples.append((time.time(), sum(seen.values())))
        time.sleep(every_s)
    return samples


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    while pid not in (root, 0, 1):
        if pid not in parents:
            try:
                parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                return False
        pid = parents[pid]
    return pid == root


def phases(out: Path, scenario: str, seconds: float) -> dict[str, float]:
    """Where one notebook's `seconds` went, from its executed notebook and its traces."""
    nb = json.loads((out / "notebooks" / REGISTRY[scenario].notebook).read_text())
    meta = nb["metadata"]["papermill"]
    started, duration = _time(meta["start_time"]), float(meta["duration"])
    times = {name: 0.0 for name in PHASES}
    times["worker"] = seconds - duration
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and c["metadata"].get("papermill", {}).get("start_time")]
    times["kernel"] = (_time(cells[0]["metadata"]["papermill"]["start_time"]) - started) if cells else duration
    for cell in cells:
        source, spent = "".join(cell["source"]), float(cell["metadata"]["papermill"]["duration"])
        if "from gp_lib" in source and "import" in source:
            times["imports"] += spent
        elif ".run(params" in source:
            traffic = traffic_seconds(out, scenario)
            times["traffic"] += traffic
            times["servers"] += spent - traffic
        elif "section-plots" in cell["metadata"].get("tags", []):
            times["plots"] += spent
        else:
            times["cells"] += spent
    times["render"] = render_seconds(out, scenario)
    return times


def traffic_seconds(out: Path, scenario: str) -> float:
    """The union of the arms' traffic windows: first attempt started to last attempt closed, per arm."""
    windows = []
    for path in sorted((out / "traces").glob(f"{scenario}-*.jsonl")):
        spans = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("record") == "attempt" and row.get("started_at"):
                begin = _time(row["started_at"])
                spans.append((begin, begin + (row.get("t_close_ms") or 0.0) / 1000))
        if spans:
            windows.append((min(s for s, _ in spans), max(e for _, e in spans)))
    covered, end = 0.0, float("-inf")
    for begin, finish in sorted(windows):
        covered += max(0.0, finish - max(begin, end))
        end = max(end, finish)
    return covered


def render_seconds(out: Path, scenario: str) -> float:
    """Seconds to render the scenario's report from its executed notebook, as the batch does."""
    import nbformat

    from gp_lib import report

    nb = nbformat.read(str(out / "notebooks" / REGISTRY[scenario].notebook), as_version=4)
    context = report.ReportContext(scenario=scenario, title=REGISTRY[scenario].title, verdict="pass", error=None,
                                   facts=[], command="gp report", parameters={})
    started = time.perf_counter()
    report.render(nb, context, out / report.ASSETS)
    return time.perf_counter() - started


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def notebook_window(out: Path, scenario: str) -> tuple[float, float]:
    """When papermill started and ended the scenario's notebook (epoch seconds)."""
    meta = json.loads((out / "notebooks" / REGISTRY[scenario].notebook).read_text())["metadata"]["papermill"]
    return _time(meta["start_time"]), _time(meta["end_time"])


def show_phases(title: str, out: Path, run: Batch) -> float:
    """Each notebook's phases, when it ran within the batch, the CPU the batch used meanwhile, and the
    batch's time outside every notebook, which it returns."""
    print(f"\n{title}: seconds per phase; from/to: seconds since the batch began; cpu: the batch's CPU seconds "
          f"meanwhile")
    print(f"  {'notebook':<24} {'from':>5} {'to':>5} {'total':>6} {'cpu':>5} " + " ".join(f"{p:>8}" for p in PHASES))
    windows = {}
    for scenario, total in run.seconds.items():
        times = phases(out, scenario, total)
        start, end = windows[scenario] = notebook_window(out, scenario)
        print(f"  {scenario:<24} {start - run.began:5.1f} {end - run.began:5.1f} {total:6.1f} "
              f"{run.cpu_between(start, end):5.1f} " + " ".join(f"{times[p]:8.2f}" for p in PHASES))
    busy, covered_to = 0.0, run.began
    for start, end in sorted(windows.values()):
        busy += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    first = min(start for start, _ in windows.values())
    print(f"  outside every notebook: {run.wall - busy:.1f} s of {run.wall:.1f} s ({first - run.began:.1f} s and "
          f"{run.cpu_between(run.began, first):.1f} s CPU before the first started; "
          f"{run.began + run.wall - covered_to:.1f} s and {run.cpu_between(covered_to, run.began + run.wall):.1f} s "
          f"CPU after the last ended)")
    return run.wall - busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", help="a parameter file for both batches (default: the notebooks' defaults)")
    parser.add_argument("--jobs", type=int, help=f"jobs of the parallel batch (default: gp report's, here "
                                                 f"{default_jobs()})")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        serial_out, parallel_out = Path(folder) / "serial", Path(folder) / "parallel"
        serial = batch(serial_out, 1, args.params)
        parallel = batch(parallel_out, args.jobs, args.params)
        solo = serial.seconds
        slowest = max(solo, key=solo.get)
        floor = batch(Path(folder) / "floor", 1, args.params, slowest)
        print(f"cores: {os.cpu_count()}; load average before: {load:.2f}; "
              f"parameters: {args.params or 'notebook defaults'}")
        print(f"batch --jobs 1:  {serial.wall:6.1f} s wall, {serial.cpu[-1][1]:6.1f} s CPU")
        jobs = f"--jobs {args.jobs}" if args.jobs else f"default ({default_jobs()} jobs)"
        print(f"batch {jobs}:  {parallel.wall:6.1f} s wall, {parallel.cpu[-1][1]:6.1f} s CPU")
        show_phases("each notebook alone (--jobs 1)", serial_out, serial)
        outside = show_phases(f"in the batch ({jobs})", parallel_out, parallel)
    alone, beside = solo[slowest], parallel.seconds[slowest]
    print(f"\nbatch / slowest notebook alone ({slowest}, {alone:.1f} s): {parallel.wall / alone:.2f} (aim <= 1.3)")
    print(f"  of which: the batch outside every notebook {outside:.1f} s ({outside / alone:+.0%} of it alone); "
          f"{slowest} beside the others {beside:.1f} s ({(beside - alone) / alone:+.0%})")
    print(f"floor: a batch of {slowest} only, nothing beside it: {floor.wall:.1f} s, {floor.wall / alone:.2f} "
          f"({floor.wall - floor.seconds[slowest]:.1f} s outside the notebook)")


if __name__ == "__main__":
    main()
