"""How long the four-notebook batch takes, one notebook at a time and in parallel. Run by hand, not in CI:

    .venv/bin/python benchmarks/batch.py [--params parameters/quick.yaml] [--jobs N]

Runs `gp report` (reference mode) twice into temporary folders: with
`--jobs 1`, where each notebook runs alone so its time is its solo time, and
with the default jobs (or `--jobs N`). Prints both wall times and the ratio of
the parallel batch to its slowest notebook run alone (aim: <= 1.3, which needs
as many cores as notebooks).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from gp_lib.batch import default_jobs


def batch(out: Path, jobs: int, params: str | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `gp report`, and each notebook's seconds from its junit.xml."""
    command = [sys.executable, "-m", "gp_lib.cli", "report", "--out", str(out), "--jobs", str(jobs)]
    command += ["--params", params] if params else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"gp report --jobs {jobs} exited {done.returncode}:\n{done.stderr}")
    suites = ET.parse(out / "junit.xml").getroot().iter("testsuite")
    return wall, {s.get("name"): float(s.get("time")) for s in suites}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", help="a parameter file for both batches (default: the notebooks' defaults)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help=f"parallel jobs (default {default_jobs()})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        serial, solo = batch(Path(folder) / "serial", 1, args.params)
        parallel, _ = batch(Path(folder) / "parallel", args.jobs, args.params)
    slowest = max(solo, key=solo.get)
    print(f"cores: {os.cpu_count()}; parameters: {args.params or 'notebook defaults'}")
    for name, seconds in solo.items():
        print(f"  {name:<24} {seconds:6.1f} s alone")
    print(f"batch --jobs 1:  {serial:6.1f} s")
    print(f"batch --jobs {args.jobs}:  {parallel:6.1f} s")
    print(f"parallel batch / slowest notebook alone ({slowest}): {parallel / solo[slowest]:.2f} (aim <= 1.3)")


if __name__ == "__main__":
    main()
