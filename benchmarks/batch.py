"""How long the default batch takes against its slowest notebook, and where each notebook's time goes.

Run by hand, not in CI (on an idle machine: other work on the cores shows up as contention):

    .venv/bin/python benchmarks/batch.py [--params parameters/quick.yaml] [--jobs N]

Runs `gp report` (reference mode) twice into temporary folders: with `--jobs 1`,
where each notebook runs alone so its time is its solo time, and with the
default jobs (or `--jobs N`). Prints both wall times, the CPU seconds each
batch used (all its processes), and the ratio of the default batch to its
slowest notebook run alone (aim: <= 1.3).

Then, for each notebook in both batches, the time of each phase, all measured
from timestamps the run itself recorded:

- worker: the junit time less papermill's notebook duration (the worker's own share:
  papermill's setup and writing the executed notebook);
- kernel: papermill's notebook start to its first cell (kernel start);
- imports: the cell that imports `gp_lib`;
- servers: the rest of the traffic cell: reference servers starting and stopping, judging;
- traffic: the union of the arms' traffic windows, from the traces (first attempt
  started to last attempt closed);
- plots: cells tagged `section-plots`;
- cells: every other cell;
- render: the Markdown report rendered from the executed notebook (timed again here,
  with nbconvert, as the batch does it after the notebook).
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
from datetime import datetime
from pathlib import Path

from gp_lib.batch import REGISTRY, default_jobs

PHASES = ("worker", "kernel", "imports", "servers", "traffic", "plots", "cells", "render")


def batch(out: Path, jobs: int | None, params: str | None) -> tuple[float, float, dict[str, float], float]:
    """Wall and CPU seconds of one `gp report`, each notebook's seconds from its junit.xml, and when it began
    (epoch seconds)."""
    command = [sys.executable, "-m", "gp_lib.cli", "report", "--out", str(out)]
    command += ["--jobs", str(jobs)] if jobs else []
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
    return wall, cpu, {s.get("name"): float(s.get("time")) for s in suites}, began


def tree_cpu(process: subprocess.Popen, every_s: float = 0.1) -> float:
    """CPU seconds of `process` and all its descendants until it exits, sampled from /proc.

    Sampled rather than taken from getrusage, since the batch's notebook workers are children
    of a fork server that nobody waits for; a process that lives less than `every_s` may be missed.
    """
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, float] = {}
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
        time.sleep(every_s)
    return sum(seen.values())


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
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and c["metadata"].get("papermill", {}).get("start_time")]
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


def show_phases(title: str, out: Path, seconds: dict[str, float], began: float, wall: float) -> None:
    """Each notebook's phases, when it ran within the batch, and the batch's time outside every notebook."""
    print(f"\n{title}: seconds per phase; from/to: seconds since the batch began")
    print(f"  {'notebook':<24} {'from':>5} {'to':>5} {'total':>6} " + " ".join(f"{p:>8}" for p in PHASES))
    windows = {}
    for scenario, total in seconds.items():
        times = phases(out, scenario, total)
        windows[scenario] = [t - began for t in notebook_window(out, scenario)]
        start, end = windows[scenario]
        print(f"  {scenario:<24} {start:5.1f} {end:5.1f} {total:6.1f} " + " ".join(f"{times[p]:8.2f}" for p in PHASES))
    busy, covered_to = 0.0, 0.0
    for start, end in sorted(windows.values()):
        busy += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    first = min(start for start, _ in windows.values())
    print(f"  outside every notebook: {wall - busy:.1f} s of {wall:.1f} s ({first:.1f} s before the first started, "
          f"{wall - covered_to:.1f} s after the last ended)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", help="a parameter file for both batches (default: the notebooks' defaults)")
    parser.add_argument("--jobs", type=int, help=f"jobs of the parallel batch (default: gp report's, here "
                                                 f"{default_jobs()})")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        serial_out, parallel_out = Path(folder) / "serial", Path(folder) / "parallel"
        serial, serial_cpu, solo, serial_began = batch(serial_out, 1, args.params)
        parallel, parallel_cpu, together, parallel_began = batch(parallel_out, args.jobs, args.params)
        slowest = max(solo, key=solo.get)
        print(f"cores: {os.cpu_count()}; load average before: {load:.2f}; "
              f"parameters: {args.params or 'notebook defaults'}")
        print(f"batch --jobs 1:  {serial:6.1f} s wall, {serial_cpu:6.1f} s CPU")
        jobs = f"--jobs {args.jobs}" if args.jobs else f"default ({default_jobs()} jobs)"
        print(f"batch {jobs}:  {parallel:6.1f} s wall, {parallel_cpu:6.1f} s CPU")
        show_phases("each notebook alone (--jobs 1)", serial_out, solo, serial_began, serial)
        show_phases(f"in the batch ({jobs})", parallel_out, together, parallel_began, parallel)
    print(f"\nbatch / slowest notebook alone ({slowest}, {solo[slowest]:.1f} s): "
          f"{parallel / solo[slowest]:.2f} (aim <= 1.3)")


if __name__ == "__main__":
    main()
