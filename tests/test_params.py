"""Layered parameters: the order of the layers, the YAML layout, and every way to get them wrong."""

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gp_lib.batch import PARAMETERS_DIR, REGISTRY
from gp_lib import params
from gp_lib.params import assignments_layer, parse_assignment, resolve
from gp_lib.scenarios.common import CommonParams, ParameterError


@dataclass
class AlphaParams(CommonParams):
    attempts: int = 10
    delays_ms: list = field(default_factory=lambda: [0, 5])


@dataclass
class BetaParams(CommonParams):
    attempts: int = 3
    config: dict = field(default_factory=dict)


CLASSES = {"alpha": AlphaParams, "beta": BetaParams}


@pytest.fixture
def params_dir(tmp_path):
    """A parameters/ folder with local.yaml and staging.yaml."""
    folder = tmp_path / "parameters"
    folder.mkdir()
    (folder / "local.yaml").write_text("max_concurrency: 40\nalpha:\n  attempts: 7\n")
    (folder / "staging.yaml").write_text("env: staging\nmax_concurrency: 5\n")
    return folder


def _resolve(params_dir, selected=("alpha", "beta"), **kwargs):
    layered = resolve(CLASSES, list(selected), parameters_dir=params_dir, **kwargs)
    return {name: entry.values for name, entry in layered.items()}


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- layering --------------------------------------------------------------------------------

def test_env_file_is_the_first_layer_and_only_set_keys_are_kept(params_dir):
    values = _resolve(params_dir)
    assert values == {"alpha": {"max_concurrency": 40, "attempts": 7}, "beta": {"max_concurrency": 40}}


def test_params_file_then_assignments_then_target_override(params_dir, tmp_path):
    params_file = _write(tmp_path, "max_concurrency: 30\nattempts: 4\nbeta:\n  attempts: 2\n")
    values = _resolve(params_dir, params_file=params_file,
                      assignments=["attempts=9", "alpha.delays_ms=[1, 2]", "target_url=ws://a.example/ws"],
                      target="wss://b.example/ws")
    assert values["alpha"] == {"max_concurrency": 30, "attempts": 9, "delays_ms": [1, 2],
                               "target_url": "wss://b.example/ws"}
    assert values["beta"] == {"max_concurrency": 30, "attempts": 9, "target_url": "wss://b.example/ws"}


def test_a_section_wins_over_the_top_level_of_its_own_layer(params_dir, tmp_path):
    params_file = _write(tmp_path, "beta:\n  attempts: 2\nattempts: 4\n")
    assert _resolve(params_dir, params_file=params_file)["beta"]["attempts"] == 2
    assert _resolve(params_dir, params_file=params_file)["alpha"]["attempts"] == 4


def test_env_staging_from_the_command_line_or_the_params_file_picks_staging_yaml(params_dir, tmp_path):
    assert _resolve(params_dir, assignments=["env=staging"])["beta"] == {"env": "staging", "max_concurrency": 5}
    params_file = _write(tmp_path, "env: staging\n")
    assert _resolve(params_dir, params_file=params_file)["alpha"] == {"env": "staging", "max_concurrency": 5}


def test_values_are_yaml_scalars_and_lists():
    assert parse_assignment("a=5") == ("a", 5)
    assert parse_assignment("a=2.5") == ("a", 2.5)
    assert parse_assignment("a=true") == ("a", True)
    assert parse_assignment("a=null") == ("a", None)
    assert parse_assignment("a=[1, 5, 20]") == ("a", [1, 5, 20])
    assert parse_assignment("a=ws://h:1/ws?x=1") == ("a", "ws://h:1/ws?x=1")
    assert parse_assignment("a={max_connections: 0}") == ("a", {"max_connections": 0})
    assert assignments_layer(["a=1", "alpha.b=2"]) == {"a": 1, "alpha": {"b": 2}}


def test_a_dict_valued_parameter_is_not_mistaken_for_a_section(params_dir, tmp_path):
    params_file = _write(tmp_path, "config:\n  max_connections: 0\n")
    assert _resolve(params_dir, params_file=params_file)["beta"]["config"] == {"max_connections": 0}


def test_a_missing_env_file_is_an_empty_layer(tmp_path):
    assert _resolve(tmp_path) == {"alpha": {}, "beta": {}}


# -- every way to get it wrong: ParameterError naming the culprit --------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"selected": ("alpha", "gamma")}, "gamma"),
    ({"assignments": ["gamma.attempts=1"]}, "gamma"),
    ({"assignments": ["colour=red"]}, "colour"),
    ({"assignments": ["alpha.config={}"]}, "alpha.config"),
    ({"assignments": ["attempts=-1"]}, "attempts"),
    ({"assignments": ["alpha.delays_ms=[5, -1]"]}, "delays_ms"),
    ({"assignments": ["max_concurrency=-3"]}, "max_concurrency"),
    ({"target": "http://example.com/ws"}, "target_url"),
    ({"assignments": ["target_url=localhost:8000"]}, "target_url"),
    ({"assignments": ["alpha.target_url=ws://a.example/ws"]}, "target_url"),
    ({"assignments": ["out_dir=/tmp/x"]}, "out_dir"),
    ({"assignments": ["env=production"]}, "env"),
    ({"assignments": ["attempts"]}, "attempts"),
    ({"assignments": ["attempts=[1"]}, "attempts"),
    ({"assignments": ["attempts=many"]}, "attempts"),
])
def test_bad_parameters_name_the_culprit(params_dir, kwargs, name):
    selected = kwargs.pop("selected", ("alpha", "beta"))
    with pytest.raises(ParameterError, match=name.replace(".", r"\.")):
        _resolve(params_dir, selected, **kwargs)


@pytest.mark.parametrize("text, name", [
    ("gamma:\n  attempts: 1\n", "gamma"),
    ("colour: red\n", "colour"),
    ("alpha:\n  colour: red\n", "alpha.colour"),
    ("alpha: 5\n", "alpha"),
    ("- attempts\n", "run.yaml"),
    ("attempts: [1\n", "run.yaml"),
])
def test_bad_params_files_name_the_culprit(params_dir, tmp_path, text, name):
    with pytest.raises(ParameterError, match=name.replace(".", r"\.")):
        _resolve(params_dir, params_file=_write(tmp_path, text))


def test_a_missing_params_file_is_named(params_dir, tmp_path):
    with pytest.raises(ParameterError, match="nowhere.yaml"):
        _resolve(params_dir, params_file=tmp_path / "nowhere.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_is_read_only_to_the_limit(tmp_path, monkeypatch):
    """A pipe (`-f <(...)`, /dev/stdin) has size 0 to stat(): the limit must bound what is read."""
    monkeypatch.setattr(params, "MAX_FILE_BYTES", 1000)
    fifo = tmp_path / "params.fifo"
    os.mkfifo(fifo)
    chunk, total, written = b"# comment\n" * 400, 1 << 20, []

    def write() -> None:
        with open(fifo, "wb", buffering=0) as pipe:
            try:
                while sum(written) < total:
                    written.append(pipe.write(chunk))
            except BrokenPipeError:  # the reader stopped at the limit and closed its end
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(ParameterError, match="params.fifo is over the limit of 1000 bytes"):
        params.load_layer(fifo)
    writer.join(10)
    assert not writer.is_alive() and sum(written) < total


def test_the_scenario_is_named_with_its_bad_value(params_dir):
    with pytest.raises(ParameterError, match=r"^alpha: attempts must not be negative"):
        _resolve(params_dir, ("alpha",), assignments=["alpha.attempts=-2"])


# -- the shipped parameter files ----------------------------------------------------------------

SHIPPED = sorted(Path(PARAMETERS_DIR).glob("*.yaml"))


def test_the_four_parameter_sets_ship():
    assert {p.name for p in SHIPPED} >= {"local.yaml", "staging.yaml", "quick.yaml", "thorough.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_parameter_files_validate_against_the_real_scenarios(path):
    classes = {name: entry.params_class() for name, entry in REGISTRY.items()}
    layered = resolve(classes, list(REGISTRY), parameters_dir=PARAMETERS_DIR, params_file=path)
    assert set(layered) == set(REGISTRY)
    assert all(entry.params.target_url is None for entry in layered.values()), "a shipped file must not pick a target"
