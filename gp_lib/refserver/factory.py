"""The connection-manager factory, the component behind "Factory initialization failed".

In the backend under investigation every connection gets its own manager,
built by a factory from a configuration dict and the user's context. When the
configuration or the context is invalid, the factory raises
`FactoryInitializationError` and the connection closes 1011 before readiness,
however the client times its messages: that is root cause 3 of PROTOCOL.md.
The factory here validates the same things, so the fault is a real invalid
configuration, not a flag that fakes a close. There is no singleton: every
`create_manager` call returns a new `ConnectionManager` with its own id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

CONFIG_KEYS = ("websocket_host", "websocket_port", "max_connections", "auth_required")


class FactoryInitializationError(ValueError):
    """The factory cannot build a connection manager; the message says why."""


def validate_config(config: Any) -> list[str]:
    """Every problem with a factory configuration, each naming the key; empty when valid.

    A valid configuration has a non-empty string `websocket_host`, an integer
    `websocket_port` from 0 to 65535, a non-negative integer `max_connections`
    and a boolean `auth_required`.
    """
    if not isinstance(config, dict):
        return [f"invalid factory configuration: expected a JSON object, not {type(config).__name__}"]
    errors = [f"invalid factory configuration: missing key {key}" for key in CONFIG_KEYS if key not in config]
    host = config.get("websocket_host")
    if "websocket_host" in config and (not isinstance(host, str) or not host.strip()):
        errors.append(f"invalid factory configuration: websocket_host must be a non-empty host name, not {host!r}")
    port = config.get("websocket_port")
    if "websocket_port" in config:
        if not _is_int(port):
            errors.append(f"invalid factory configuration: websocket_port must be an integer, not {port!r}")
        elif not 0 <= port <= 65535:
            errors.append(f"invalid factory configuration: websocket_port must be from 0 to 65535, not {port}")
    limit = config.get("max_connections")
    if "max_connections" in config:
        if not _is_int(limit):
            errors.append(f"invalid factory configuration: max_connections must be an integer, not {limit!r}")
        elif limit < 0:
            errors.append(f"invalid factory configuration: max_connections must not be negative, not {limit}")
    flag = config.get("auth_required")
    if "auth_required" in config and not isinstance(flag, bool):
        errors.append(f"invalid factory configuration: auth_required must be true or false, not {flag!r}")
    return errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ConnectionManager:
    """The per-connection manager: one instance per connection, never shared."""

    user_id: str
    connection_id: str
    config: dict[str, Any]


class ConnectionManagerFactory:
    """Builds one `ConnectionManager` per connection from a validated configuration.

    Args:
        config: `websocket_host`, `websocket_port`, `max_connections`, `auth_required`.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = dict(config) if isinstance(config, dict) else config
        self.errors = validate_config(config)

    def is_valid(self) -> bool:
        return not self.errors

    def validate_config(self) -> None:
        """Raises FactoryInitializationError naming every problem of the configuration."""
        if self.errors:
            raise FactoryInitializationError("; ".join(self.errors))

    def create_manager(self, user_id: str, connection_id: str | None = None) -> ConnectionManager:
        """A new manager for one connection of `user_id`.

        Raises:
            FactoryInitializationError: the configuration or the user context is invalid.
        """
        self.validate_config()
        connection_id = uuid.uuid4().hex if connection_id is None else connection_id
        if not isinstance(user_id, str) or not user_id.strip():
            raise FactoryInitializationError(f"invalid user context: user_id must be a non-empty string, not {user_id!r}")
        if not isinstance(connection_id, str) or not connection_id.strip():
            raise FactoryInitializationError(
                f"invalid user context: connection_id must be a non-empty string, not {connection_id!r}")
        return ConnectionManager(user_id=user_id, connection_id=connection_id, config=dict(self.config))
