"""Fixtures for the hostile tests: the `gp` command run as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_servers import SECRET

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def run_gp():
    """Run `gp ARGS...` with the hostile secret in JWT_SECRET_KEY; its exit code and output."""
    def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        environment = {**os.environ, "JWT_SECRET_KEY": SECRET, **(env or {})}
        done = subprocess.run([sys.executable, "-m", "gp_lib.cli", *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout, errors="replace")
        return Result(done.returncode, done.stdout, done.stderr)
    return run
