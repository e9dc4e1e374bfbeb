"""The fault switches of the reference server, and the tunables that shape them.

Each of the four root causes of PROTOCOL.md section 9 is one switch, so a
scenario can run the server twice, once with the fault and once without, and
show both the issue and its fix. Switches are independent and combinable:

- `race`: a message that arrives before per-connection setup finished is
  handled at once and fails, closing 1011 (without it, the message is queued).
- `dependencies` (`silent` or `close`): how a request that needs a service in
  `services_down` fails: `agent_started` then nothing, or close 1011
  "Service not ready". Without it the server answers "temporarily
  unavailable, try again" and completes through a fallback.
- `factory` (`config`): the connection-manager factory gets an invalid
  configuration (`factory_config` merged onto the valid one), so every
  connection closes 1011 "Factory initialization failed" before readiness.
- `events` (`omit_tools`, `out_of_order`, `misroute` or `loop_crash`): agent
  runs skip the tool events, send them out of order, or send them to another
  user; or the message loop dies on every message, which is never answered,
  and the socket closes 1000 with the dialect's `crash_reason` (empty by
  default; "main cleanup", as the real backend says, in the netra preset).

`Faults` is plain data: it round-trips through JSON (the admin API and the
`--faults-json` option speak it), and every constructor validates, raising
ValueError that names the bad field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

from gp_lib.protocol import SERVICES

FAULT_NAMES = ("race", "dependencies", "factory", "events")
#: The modes of each fault; the first is the default of `--fault NAME`.
FAULT_MODES: dict[str, tuple[str, ...]] = {
    "race": ("on",),
    "dependencies": ("silent", "close"),
    "factory": ("config",),
    "events": ("omit_tools", "out_of_order", "misroute", "loop_crash"),
}
DEFAULT_FACTORY_FAULT_CONFIG: dict[str, Any] = {"max_connections": -1}
MAX_DELAY_MS = 60_000.0


@dataclass(frozen=True)
class Faults:
    """Which faults are on, and the delays and outages they act on.

    Attributes:
        race: handle messages that arrive before setup finished, and fail (1011).
        dependencies: None, "silent" or "close": how a missing service fails.
        factory: None or "config": the factory gets `factory_config`.
        events: None, "omit_tools", "out_of_order", "misroute" or "loop_crash".
        setup_ms: per-connection setup time.
        setup_ms_per_concurrent: added for each other connection in setup at that moment.
        agent_step_ms: delay between two agent events.
        services_down: services that are unavailable (subset of protocol.SERVICES).
        factory_config: merged onto the valid factory configuration under the factory fault.
    """

    race: bool = False
    dependencies: str | None = None
    factory: str | None = None
    events: str | None = None
    setup_ms: float = 15.0
    setup_ms_per_concurrent: float = 2.0
    agent_step_ms: float = 5.0
    services_down: tuple[str, ...] = ()
    factory_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FACTORY_FAULT_CONFIG))

    def __post_init__(self) -> None:
        if not isinstance(self.race, bool):
            raise ValueError(f"faults.race must be true or false, not {self.race!r}")
        for name in ("dependencies", "factory", "events"):
            object.__setattr__(self, name, _mode(name, getattr(self, name)))
        for name in ("setup_ms", "setup_ms_per_concurrent", "agent_step_ms"):
            object.__setattr__(self, name, _delay(name, getattr(self, name)))
        object.__setattr__(self, "services_down", _services(self.services_down))
        if not isinstance(self.factory_config, dict):
            raise ValueError(f"faults.factory_config must be a JSON object, not {self.factory_config!r}")
        object.__setattr__(self, "factory_config", dict(self.factory_config))

    # -- JSON ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The faults as a JSON-able dict (every field)."""
        data = dataclasses.asdict(self)
        data["services_down"] = list(self.services_down)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        """Faults from a full or partial dict; missing fields keep their defaults.

        Raises:
            ValueError: an unknown field or a bad value, naming the field.
        """
        if not isinstance(data, dict):
            raise ValueError(f"faults must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown faults field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def merged(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied, validated like `from_dict`."""
        if not isinstance(changes, dict):
            raise ValueError(f"faults must be a JSON object, not {type(changes).__name__}")
        return Faults.from_dict({**self.to_dict(), **changes})

    @property
    def active(self) -> list[str]:
        """Names of the faults that are on, as `NAME` or `NAME:MODE`."""
        names = ["race"] if self.race else []
        names += [f"{name}:{getattr(self, name)}" for name in FAULT_NAMES[1:] if getattr(self, name)]
        return names

    # -- the command line -------------------------------------------------------------

    @classmethod
    def from_specs(cls, specs: Iterable[str], **tunables: Any) -> Faults:
        """Faults from `NAME[:MODE]` strings, as given to `--fault`, plus tunables.

        Raises:
            ValueError: an unknown name or mode, naming it.
        """
        switches: dict[str, Any] = {}
        for spec in specs:
            name, mode = parse_fault_spec(spec)
            switches[name] = True if name == "race" else mode
        return cls.from_dict({**switches, **tunables})


def parse_fault_spec(spec: str) -> tuple[str, str]:
    """`(name, mode)` from `NAME` or `NAME:MODE`; a missing mode is the default one.

    Raises:
        ValueError: an unknown fault name or mode.
    """
    name, _, mode = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in FAULT_MODES:
        raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULT_NAMES)})")
    modes = FAULT_MODES[name]
    mode = mode.strip().lower() or modes[0]
    if mode not in modes:
        raise ValueError(f"unknown mode {mode!r} for fault {name} (known: {', '.join(modes)})")
    return name, mode


def _mode(name: str, value: Any) -> str | None:
    modes = FAULT_MODES[name]
    if value is None or value is False:
        return None
    if value is True:
        return modes[0]
    if isinstance(value, str) and value.lower() in modes:
        return value.lower()
    raise ValueError(f"faults.{name} must be one of {', '.join(modes)}, true or null, not {value!r}")


def _delay(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DELAY_MS:
        raise ValueError(f"faults.{name} must be a number of milliseconds from 0 to {MAX_DELAY_MS:g}, not {value!r}")
    return float(value)


def _services(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"faults.services_down must be a list of service names, not {value!r}")
    names = [str(v).strip() for v in value]
    for name in names:
        if name not in SERVICES:
            raise ValueError(f"faults.services_down: unknown service {name!r} (known: {', '.join(SERVICES)})")
    return tuple(s for s in SERVICES if s in names)
