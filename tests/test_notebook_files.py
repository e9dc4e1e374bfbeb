"""The committed notebooks: no outputs, one parameters cell, thin, only known section tags."""

import ast
import json
from pathlib import Path

import pytest

from gp_lib.batch import REGISTRY
from gp_lib.notebook import SECTIONS
from gp_lib.triage import TriageParams

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KNOWN_TAGS = {"parameters"} | {f"section-{name}" for name in SECTIONS}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path)) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_with_commented_assignments(path):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    source = "".join(cells[0]["source"])
    tree = ast.parse(source)
    assert all(isinstance(node, ast.Assign) for node in tree.body), "the parameters cell only assigns values"
    for line in source.splitlines():
        if line and not line.startswith((" ", "#", "]", ")")) and "=" in line:
            assert "#" in line, f"{path.name}: parameter line without a comment: {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_known_tags(path):
    for cell in _cells(path):
        unknown = set(cell.get("metadata", {}).get("tags", [])) - KNOWN_TAGS
        assert not unknown, f"{path.name}: unknown tags {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_stay_thin(path):
    """Logic lives in gp_lib: no function or class definitions in a notebook, and short code cells."""
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert "def " not in source and "class " not in source, f"{path.name}: define logic in gp_lib, not here"
        assert len(source.splitlines()) <= 30, f"{path.name}: a code cell of {len(source.splitlines())} lines"


#: Notebooks whose parameters are a Params class: what `gp report` validates before any traffic.
PARAMS = {entry.notebook: entry.params_class() for entry in REGISTRY.values()} | {"00_triage.ipynb": TriageParams}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_parameters_cell_holds_exactly_the_params_fields(name):
    cells = _cells(NOTEBOOKS[0].parent / name)
    source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    names = [node.targets[0].id for node in ast.parse(source).body]
    assert len(names) == len(set(names)), f"{name}: a parameter is set twice"
    assert sorted(names) == sorted(PARAMS[name].names()), f"{name}: parameters cell and Params differ"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_papermill_parses_every_parameter_without_a_warning(name, caplog):
    """papermill inspects the parameters cell to warn about unknown parameters; a line it cannot parse
    (one with a second `=`, e.g. `>=` in a comment) logs "Unable to parse line" and drops the parameter."""
    from papermill.translators import PythonTranslator

    cells = _cells(NOTEBOOKS[0].parent / name)
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    with caplog.at_level("WARNING", logger="papermill"):
        parsed = PythonTranslator.inspect({"source": "".join(cell["source"])})
    assert not [r.getMessage() for r in caplog.records], f"{name}: papermill warned"
    assert sorted(p.name for p in parsed) == sorted(PARAMS[name].names())
