"""Layered parameters for `gp report`, validated before any traffic.

Layers, each overriding the one before:

1. the notebook defaults (each scenario's `Params` defaults);
2. `parameters/<env>.yaml`, where `env` is `local` unless `-p env=...` or the
   `--params` file names another;
3. the `--params FILE`;
4. `-p KEY=VALUE` (values read as YAML: `5`, `true`, `[1, 5]`, `null`);
5. `--target URL`, which sets `target_url`.

Layout of a layer (YAML file or `-p` keys):

    target_url: wss://staging.example/ws   # top level: applies to every scenario that has the key
    max_concurrency: 20
    race_conditions:                       # a section named by a scenario: that scenario only
      sweep_repeats: 1

`-p race_conditions.sweep_repeats=1` addresses a section. `target_url` and
`env` belong to the whole run, so only the top level may set them; `out_dir`
is set by `gp report --out`. A layer wins over an earlier one; within one
layer a section wins over the top level.

Only the keys some layer set are kept (the notebook supplies the rest), so an
executed notebook shows what this run changed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import yaml

from gp_lib.scenarios.common import ENVS, ParameterError

RUN_KEYS = ("target_url", "env")
BATCH_KEYS = ("out_dir",)
#: A parameter file is a few hundred bytes of settings: anything far larger is a mistake or an attack.
MAX_FILE_BYTES = 1 << 20
#: Nesting of values: scenario sections hold lists and small mappings.
MAX_DEPTH = 8


class Layered(NamedTuple):
    """One scenario's parameters: what the layers set, and the validated `Params` built from it."""

    values: dict[str, Any]
    params: Any


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from `-p`, the value read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"-p {text!r}: expected KEY=VALUE")
    return key, load_yaml(raw, f"-p {key}", key)


def assignments_layer(assignments: Sequence[str]) -> dict[str, Any]:
    """The `-p` assignments as a layer; `scenario.key` lands in that scenario's section."""
    layer: dict[str, Any] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        section, dot, name = key.partition(".")
        if dot:
            layer.setdefault(section, {})[name] = value
        else:
            layer[key] = value
    return layer


def load_layer(path: str | Path) -> dict[str, Any]:
    """A YAML parameter file as a layer (an empty file is an empty layer)."""
    try:
        with Path(path).open("rb") as source:  # read, not stat: a pipe (`-f <(...)`, /dev/stdin) has no size
            data = source.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ParameterError(f"parameter file {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ParameterError(f"parameter file {path} is over the limit of {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError(f"parameter file {path} is not UTF-8 text (a binary file?)") from None
    data = load_yaml(text, f"parameter file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(f"parameter file {path} must hold a mapping of names to values")
    return data


def load_yaml(text: str, source: str, where: str = "") -> Any:
    """YAML text as plain values, refused (ParameterError, one line naming `source`) when it is not YAML,
    uses an alias (a few hundred bytes of aliases expand to gigabytes once written into a notebook), nests
    deeper than MAX_DEPTH, or holds a number that is not finite."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ParameterError(f"{source} uses the YAML alias *{event.anchor}: aliases are not allowed in "
                                     "parameters (they can expand to gigabytes); write the values out")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParameterError(f"{source} is not YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ParameterError(f"{source} is nested too deeply to read") from None
    _check_values(data, source, where, 0)
    return data


def _check_values(value: Any, source: str, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ParameterError(f"{where or 'a value'} in {source} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"{where or 'a value'} in {source} is {value}: numbers must be finite")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        name = f"{where}.{key}" if where and isinstance(key, str) else f"{where}[{key}]" if where else str(key)
        _check_values(inner, source, name, depth + 1)


def resolve(classes: Mapping[str, type], selected: Sequence[str], *, parameters_dir: str | Path,
            params_file: str | Path | None = None, assignments: Sequence[str] = (),
            target: str | None = None) -> dict[str, Layered]:
    """Per selected scenario, the parameters the layers set, validated with its `Params`.

    Args:
        classes: every known scenario's `Params` class, by scenario name.
        selected: the scenarios this run executes.

    Raises:
        ParameterError: naming the unknown scenario, the unknown or misplaced
            key, or the parameter whose value is wrong (prefixed by its scenario).
    """
    unknown = [name for name in selected if name not in classes]
    if unknown:
        raise ParameterError(f"unknown scenario {', '.join(unknown)} (known: {', '.join(classes)})")
    file_layer = load_layer(params_file) if params_file else {}
    cli_layer = assignments_layer(assignments)
    if target is not None:
        cli_layer["target_url"] = target
    env = cli_layer.get("env", file_layer.get("env", "local"))
    if env not in ENVS:
        raise ParameterError(f"env must be one of {', '.join(ENVS)}, not {env!r}")
    env_file = Path(parameters_dir) / f"{env}.yaml"
    layers = [(str(env_file), load_layer(env_file) if env_file.exists() else {}),
              (str(params_file), file_layer), ("-p", cli_layer)]
    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in classes.items()}
    for source, layer in layers:
        _check_layer(layer, fields, source)
    resolved: dict[str, Layered] = {}
    for name in selected:
        values: dict[str, Any] = {}
        for _, layer in layers:
            values.update({k: v for k, v in layer.items() if k in fields[name]})
            values.update(layer.get(name) or {})
        try:
            resolved[name] = Layered(values, classes[name].from_mapping(values))
        except ParameterError as exc:
            raise ParameterError(f"{name}: {exc}") from None
    return resolved


def _check_layer(layer: Mapping[str, Any], fields: Mapping[str, set[str]], source: str) -> None:
    """Every key of a layer is a known scenario's section or a parameter some scenario takes."""
    every = set().union(*fields.values())
    for key, value in layer.items():
        if key in BATCH_KEYS:
            raise ParameterError(f"{key} in {source}: gp report sets it from --out")
        if key in fields:  # a scenario's section
            if not isinstance(value, dict):
                raise ParameterError(f"{key} in {source} must be a section of {key}'s parameters")
            for name in value:
                if name in BATCH_KEYS:
                    raise ParameterError(f"{key}.{name} in {source}: gp report sets it from --out")
                if name in RUN_KEYS:
                    raise ParameterError(f"{key}.{name} in {source}: {name} belongs to the whole run; "
                                         "set it at the top level")
                if name not in fields[key]:
                    raise ParameterError(f"unknown parameter {key}.{name} in {source}")
        elif key in every:
            continue
        elif isinstance(value, dict):
            raise ParameterError(f"unknown scenario {key} in {source} (known: {', '.join(fields)})")
        else:
            raise ParameterError(f"unknown parameter {key} in {source}")
