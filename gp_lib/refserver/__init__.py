"""The reference server: a real WebSocket backend that reproduces each root cause of 1011 on demand.

A scenario needs a target that fails in a known way, and the same target
fixed, to show that it detects the issue and that the remediation removes
it. This package is that target, public so that users can run it from their
own tests:

    from gp_lib.refserver import running_server

    with running_server({"race": True, "setup_ms": 50}, "handshake") as server:
        ...  # connect to server.url with a token minted from server.secret

Modules, one concern each: `faults` (the switches), `factory` (the
connection-manager factory), `agent` (the agent run), `server` (the WebSocket
server), `admin` (fault and auth HTTP API), `process` (the server as a
subprocess), `cli` and `__main__` (the command line). Message wording is the
dialect's, from `gp_lib.dialects`, which the client shares.
"""

from gp_lib.dialects import PRESETS as DIALECT_PRESETS, Dialect
from gp_lib.refserver.factory import (ConnectionManager, ConnectionManagerFactory, FactoryInitializationError,
                                   validate_config)
from gp_lib.refserver.faults import FAULT_MODES, FAULT_NAMES, Faults, parse_fault_spec
from gp_lib.refserver.process import ServerHandle, free_port, running_server
from gp_lib.refserver.server import ReferenceServer

__all__ = [
    "DIALECT_PRESETS",
    "FAULT_MODES",
    "FAULT_NAMES",
    "ConnectionManager",
    "ConnectionManagerFactory",
    "Dialect",
    "FactoryInitializationError",
    "Faults",
    "ReferenceServer",
    "ServerHandle",
    "free_port",
    "parse_fault_spec",
    "running_server",
    "validate_config",
]
