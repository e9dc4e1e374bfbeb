"""The command line of the reference server: `python -m gp_lib.refserver` and `gp serve`.

    python -m gp_lib.refserver [--host 127.0.0.1] [--port 0] [--admin-port 0]
        [--fault NAME[:MODE] ...] [--dialect SPEC] [--setup-ms F]
        [--jwt-secret-env JWT_SECRET_KEY] [--environment test]

It runs until SIGTERM or Ctrl-C. `gp serve` takes the same options (its
`--port` defaults to 8000, the local default of PROTOCOL.md) through
`configure(parser)` and `run(args)`, the contract of `gp_lib.cli`.

Once both ports listen it prints exactly one JSON line to stdout and flushes:

    {"event": "listening", "ws_port": P, "admin_port": A, "pid": N}

Nothing else goes to stdout; logs go to stderr, with secrets and tokens
redacted. Exit codes: 0 after a clean stop, 2 for a bad argument or an unset
secret variable, 1 when a port cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from gp_lib.auth import AuthError, secret_from_env
from gp_lib.redact import redact, register_secret
from gp_lib.refserver.admin import AdminServer
from gp_lib.dialects import PRESETS, Dialect
from gp_lib.refserver.faults import FAULT_MODES, Faults
from gp_lib.refserver.server import ReferenceServer

DESCRIPTION = "Run the Golden Path reference WebSocket server, with the 1011 root causes injectable."


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m gp_lib.refserver`."""
    parser = argparse.ArgumentParser(prog="python -m gp_lib.refserver", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options to the `gp serve` subparser."""
    add_arguments(parser)
    parser.set_defaults(port=8000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, on any parser."""
    faults = "; ".join(f"{name}: {', '.join(modes)}" for name, modes in FAULT_MODES.items())
    parser.add_argument("--host", default="127.0.0.1", help="WebSocket interface (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="WebSocket port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--admin-port", type=int, default=0,
                        help="admin API port, always on 127.0.0.1; 0 picks a free one (default %(default)s)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME[:MODE]",
                        help=f"inject a fault; repeatable. Modes, default first: {faults}")
    parser.add_argument("--dialect", default="default", metavar="SPEC",
                        help=f"a preset ({', '.join(PRESETS)}) and/or key=value,... (default %(default)s)")
    parser.add_argument("--setup-ms", type=float, help="per-connection setup time in ms (default 15)")
    parser.add_argument("--setup-ms-per-concurrent", type=float,
                        help="setup ms added per other connection in setup (default 2)")
    parser.add_argument("--agent-step-ms", type=float, help="ms between agent events (default 5)")
    parser.add_argument("--services-down", metavar="LIST", help="comma-separated unavailable services")
    parser.add_argument("--faults-json", metavar="JSON", help="a (partial) Faults object, applied last")
    parser.add_argument("--jwt-secret-env", default="JWT_SECRET_KEY",
                        help="environment variable holding the JWT secret (default %(default)s)")
    parser.add_argument("--bypass-key-env", default="E2E_OAUTH_SIMULATION_KEY",
                        help="environment variable holding the e2e bypass key (default %(default)s)")
    parser.add_argument("--environment", default="test", help="'production' refuses e2e test auth (default %(default)s)")
    parser.add_argument("--stop-on-stdin-eof", action="store_true",
                        help="stop when stdin closes (used by running_server so that no child outlives its parent)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults the parsed arguments ask for.

    Raises:
        ValueError: a bad fault, tunable or JSON, naming it.
    """
    tunables: dict[str, Any] = {}
    for name in ("setup_ms", "setup_ms_per_concurrent", "agent_step_ms", "services_down"):
        if getattr(args, name) is not None:
            tunables[name] = getattr(args, name)
    faults = Faults.from_specs(args.fault, **tunables)
    if args.faults_json:
        try:
            changes = json.loads(args.faults_json)
        except ValueError as exc:
            raise ValueError(f"--faults-json is not JSON: {exc}") from None
        faults = faults.merged(changes)
    return faults


def serve_main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the server until stopped, and return the exit code."""
    return run(build_parser().parse_args(argv))




def run(args: argparse.Namespace) -> int:
    """Run the server the parsed options describe until stopped; the exit code."""
    try:
        faults = faults_from_args(args)
        dialect = Dialect.parse(args.dialect)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        secret = secret_from_env(args.jwt_secret_env)
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bypass_key = os.environ.get(args.bypass_key_env) or None
    register_secret(bypass_key)
    _configure_logging(args.log_level)
    server = ReferenceServer(secret, faults=faults, dialect=dialect, host=args.host, port=args.port)
    admin = AdminServer(server, port=args.admin_port, environment=args.environment, bypass_key=bypass_key)
    return asyncio.run(_serve(server, admin, stop_on_stdin_eof=args.stop_on_stdin_eof))


async def _serve(server: ReferenceServer, admin: AdminServer, *, stop_on_stdin_eof: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or not a POSIX loop: stop by other means
    if stop_on_stdin_eof:
        threading.Thread(target=_wait_for_eof, args=(loop, stop), daemon=True).start()
    try:
        await server.start()
        await admin.start()
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        await admin.close()
        await server.close()
        return 1
    print(json.dumps({"event": "listening", "ws_port": server.port, "admin_port": admin.port, "pid": os.getpid()}),
          flush=True)
    print(f"reference server on {server.url} (admin {admin.url}); faults: {', '.join(server.faults.active) or 'none'}; "
          f"dialect: {server.dialect.to_spec()}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await admin.close()
        await server.close()
    return 0


def _wait_for_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    try:  # the raw descriptor, not sys.stdin: a daemon thread must not hold its lock at exit
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except (OSError, ValueError):
        pass
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:
        pass  # the loop is already closed


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)) or ""


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
