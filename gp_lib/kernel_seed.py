"""Notebook kernels forked from a batch worker that has imported the lab, instead of started from scratch.

A kernel started the usual way is a new Python process that imports ipykernel,
then the notebook's first cell imports pandas, Matplotlib and `gp_lib`: about
1.4 s of CPU per notebook, paid by every notebook of a batch at once. The batch's
fork server imports all of that once (`batch.KERNEL_PRELOAD`); each worker forks a *seed*
before papermill starts anything (single-threaded, no event loop, no ZMQ
context yet), and when papermill launches the kernel, `SeededKernelManager`
hands the seed the kernel's command line, environment and directory, and the
seed becomes that kernel (`ipykernel_launcher`, as `python -m` would run it).

The kernel is still a child of the worker, in a session of its own, so
papermill signals, waits for and kills it as it would a `subprocess.Popen`.
A seed serves one launch: a retried start (`batch.with_kernel_retries`), a
kernel command that is not this interpreter's ipykernel, or a seed that died
all start the kernel the usual way.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
from typing import Any

from jupyter_client.manager import AsyncKernelManager

#: The backend ipykernel gives Matplotlib when the environment names none.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

_seed: Seed | None = None


class Seed:
    """A forked child waiting to become one kernel; `launch` sends it the kernel's command."""

    def __init__(self) -> None:
        read, self._write = os.pipe()
        try:
            self.pid = os.fork()
        except OSError:
            os.close(read)
            os.close(self._write)
            raise
        if self.pid == 0:
            os.close(self._write)
            _grow(read)  # never returns
        os.close(read)

    def launch(self, argv: list[str], env: dict[str, str], cwd: str) -> KernelProcess:
        """Make the seed the kernel `python -m ipykernel_launcher ARGS...`; the seed is used up."""
        # as jupyter_client's launcher does, the kernel is told our pid, to end with us; ipykernel read
        # JPY_PARENT_PID when the fork server imported it, so the setting goes on the command line too
        env = {**env, "JPY_PARENT_PID": str(os.getpid())}
        argv = [*argv, f"--IPKernelApp.parent_handle={os.getpid()}"]
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        try:
            with os.fdopen(self._write, "wb") as pipe:
                pipe.write(request)
        finally:
            self._write = -1
        return KernelProcess(self.pid)

    @property
    def used(self) -> bool:
        return self._write < 0

    def discard(self) -> None:
        """End an unused seed (it exits on end of file) and reap it."""
        if not self.used:
            os.close(self._write)
            self._write = -1
            _reap(self.pid)


def plant() -> None:
    """Fork this worker's seed (call before papermill: the fork copies a single-threaded process). When
    the fork fails (no process or memory to spare), the kernel starts the usual way."""
    global _seed
    try:
        _seed = Seed()
    except OSError as exc:
        print(f"gp: no kernel seed ({exc}); the kernel starts the usual way", file=sys.stderr)
        _seed = None


def uproot() -> None:
    """End this worker's seed if no kernel took it."""
    global _seed
    if _seed is not None:
        _seed.discard()
        _seed = None


class KernelProcess:
    """A seeded kernel, with the part of `subprocess.Popen` that jupyter_client's provisioner uses."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the kernel ended; `subprocess.TimeoutExpired` after `timeout` seconds, as Popen."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while self.poll() is None:
                if time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
                time.sleep(0.01)
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class SeededKernelManager(AsyncKernelManager):
    """papermill's kernel manager, launching the kernel from this worker's seed when it can."""

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        global _seed
        seed, _seed = _seed, None
        if seed is not None and _is_this_ipykernel(kernel_cmd):
            cwd = str(kw.get("cwd") or os.getcwd())
            try:
                process = seed.launch(kernel_cmd[3:], dict(kw.get("env") or os.environ), cwd)
            except OSError:  # the seed is gone: start the usual way
                _reap(seed.pid)
            else:
                provisioner = self.provisioner
                provisioner.process, provisioner.pid, provisioner.pgid = process, process.pid, process.pid
                provisioner.cwd = cwd
                self._reconcile_connection_info(provisioner.connection_info)
                return
        if seed is not None:
            seed.discard()
        return await super()._async_launch_kernel(kernel_cmd, **kw)


def _is_this_ipykernel(cmd: list[str]) -> bool:
    return len(cmd) >= 3 and cmd[1:3] == ["-m", "ipykernel_launcher"] and \
        os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)


def _grow(read: int) -> None:
    """In the seed: wait for the kernel's command (end of file: not needed), then run the kernel and exit."""
    code = 0
    try:
        os.setsid()  # as jupyter_client starts kernels: a session of its own, signalled as a group
        chunks = []
        while chunk := os.read(read, 65536):  # from the worker that forked us, until it closes its end
            chunks.append(chunk)
        os.close(read)
        if not chunks:
            os._exit(0)
        request = json.loads(b"".join(chunks))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        logging.root.handlers.clear()  # a fresh interpreter's logging, not the worker's
        logging.root.setLevel(logging.WARNING)
        if "matplotlib" in sys.modules:  # imported before this environment existed: read it as the import would
            sys.modules["matplotlib"].rcParams["backend"] = os.environ.get("MPLBACKEND") or INLINE_BACKEND
        sys.argv = ["ipykernel_launcher", *request["argv"]]
        runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the kernel's own failure, as `python -m` would print it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # the preloaded modules' exit handlers, as a kernel that imported them has
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
