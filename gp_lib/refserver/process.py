"""Run the reference server as a subprocess and control it: `running_server`.

Scenarios and tests talk to the server over real sockets, as they would to a
deployed backend, so the server runs in its own process with its own event
loop: client timing is never distorted by server work in the same loop. The
secret reaches the child only through its environment, never its arguments.
The child stops when the `with` block ends, on error too; and since its stdin
is a pipe from this process, it also stops by itself if this process dies.

    with running_server({"race": True, "setup_ms": 50}) as server:
        token = mint_token(server.secret, "alice")
        ... connect to server.url ...
        server.set_faults(race=False)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from gp_lib.redact import redact, register_secret
from gp_lib.dialects import Dialect
from gp_lib.refserver.faults import Faults

ADMIN_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_children: set[subprocess.Popen] = set()
_FAULT_OPTIONS = {"--fault", "--faults-json", "--setup-ms", "--setup-ms-per-concurrent", "--agent-step-ms",
                  "--services-down"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for restarts on a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class ServerHandle:
    """A running reference server subprocess: where it listens, and its admin API.

    `auth_url` is the base URL of the stand-in auth service (the admin port).
    """

    url: str
    http_url: str
    admin_url: str
    auth_url: str
    pid: int
    ws_port: int
    admin_port: int
    secret: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    dialect: Dialect = field(default_factory=Dialect)

    # -- admin API ------------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        """The server's current faults."""
        return self._admin("GET", "/faults")

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into the server's faults; the new faults.

        Raises:
            ValueError: the server rejected a field (its message names it).
        """
        return self._admin("PUT", "/faults", changes)

    def reset_faults(self) -> dict[str, Any]:
        """Back to the faults the server started with."""
        return self._admin("POST", "/faults/reset")

    def stats(self) -> dict[str, Any]:
        """`{"connections_total", "open", "closes": {"1011": n, ...}, "ready_total"}`."""
        return self._admin("GET", "/stats")

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except ValueError:
                message = ""
            if exc.code == 400:
                raise ValueError(message or "bad request") from None
            raise RuntimeError(f"admin {method} {path} answered {exc.code}: {message}") from None

    # -- lifecycle ----------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Terminate the server, kill it after `timeout_s`; its exit code."""
        return _stop(self.process, timeout_s)


@contextlib.contextmanager
def running_server(
    faults: Faults | Mapping[str, Any] | None = None,
    dialect: Dialect | str | None = None,
    *,
    secret: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_port: int = 0,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 15.0,
    bypass_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[ServerHandle]:
    """Start `python -m gp_lib.refserver` in a subprocess; yield its handle; stop it on exit.

    Args:
        faults: a `Faults`, or a (partial) dict of its fields.
        dialect: a `Dialect` or a `--dialect` spec.
        secret: the JWT secret; None generates one. Passed only in the child's environment.
        host, port, admin_port: where to listen; 0 picks free ports.
        env: extra environment variables for the child.
        startup_timeout_s: how long to wait for the listening line.
        bypass_key: the child's E2E_OAUTH_SIMULATION_KEY; None leaves it unset (503).
        extra_args: more command-line arguments, e.g. `("--environment", "production")`;
            not fault options: faults go through `faults`, which the child applies last.

    Raises:
        ValueError: bad faults or dialect, or fault options in `extra_args`, before anything starts.
        RuntimeError: the child died or did not listen in time, with its stderr tail.
    """
    faults = faults if isinstance(faults, Faults) else Faults.from_dict(dict(faults or {}))
    fault_options = sorted({a.split("=")[0] for a in extra_args} & _FAULT_OPTIONS)
    if fault_options:
        raise ValueError(f"pass faults through the faults argument, not extra_args ({', '.join(fault_options)})")
    dialect = dialect if isinstance(dialect, Dialect) else Dialect.parse(dialect)
    if secret is None:
        secret = secrets.token_urlsafe(32)
    register_secret(secret)
    register_secret(bypass_key)
    child_env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "E2E_OAUTH_SIMULATION_KEY")}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, child_env.get("PYTHONPATH")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    child_env["JWT_SECRET_KEY"] = secret
    if bypass_key is not None:
        child_env["E2E_OAUTH_SIMULATION_KEY"] = bypass_key
    command = [sys.executable, "-m", "gp_lib.refserver", "--host", host, "--port", str(port),
               "--admin-port", str(admin_port), "--dialect", dialect.to_spec(),
               "--faults-json", json.dumps(faults.to_dict()), "--stop-on-stdin-eof", *extra_args]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                   env=child_env)
        _children.add(process)
        try:
            line = _listening_line(process, startup_timeout_s, stderr)
            address = _client_address(host)
            handle = ServerHandle(
                url=f"ws://{address}:{line['ws_port']}/ws", http_url=f"http://{address}:{line['ws_port']}",
                admin_url=f"http://127.0.0.1:{line['admin_port']}", auth_url=f"http://127.0.0.1:{line['admin_port']}",
                pid=int(line["pid"]), ws_port=int(line["ws_port"]), admin_port=int(line["admin_port"]),
                secret=secret, process=process, dialect=dialect)
            yield handle
        finally:
            _stop(process, STOP_TIMEOUT_S)


def _listening_line(process: subprocess.Popen, timeout_s: float, stderr: Any) -> dict[str, Any]:
    """The child's listening line, read with a deadline; stdout is drained after it."""
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        with contextlib.suppress(OSError, ValueError), process.stdout:
            for raw in process.stdout:
                lines.put(raw)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"reference server did not listen within {timeout_s:g} s{_tail(stderr)}")
        try:
            raw = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if not raw:
            code = process.wait(timeout=STOP_TIMEOUT_S)
            raise RuntimeError(f"reference server exited with code {code} before listening{_tail(stderr)}")
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == "listening":
            return line


def _client_address(host: str) -> str:
    """Where a client reaches a server bound to `host` (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _tail(stderr: Any, limit: int = 2000) -> str:
    stderr.flush()
    stderr.seek(0)
    text = stderr.read().decode(errors="replace")[-limit:].strip()
    return f"; its stderr ends:\n{redact(text)}" if text else " (no stderr)"


def _stop(process: subprocess.Popen, timeout_s: float) -> int | None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    _children.discard(process)
    return process.returncode


@atexit.register
def _stop_children() -> None:
    for process in list(_children):
        _stop(process, 1.0)
