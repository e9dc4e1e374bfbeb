"""Notebook display helpers: Markdown tables, verdict lines, reproduce commands, scraps scrapbook can read."""

import nbformat
import pandas as pd
import pytest
import scrapbook as sb

from gp_lib import notebook as nb
from gp_lib.checks import Check, inconclusive
from gp_lib.scenarios.common import ScenarioResult


def _result(mode="reference", checks=None, arm_checks=None, params=None, error=None):
    checks = checks if checks is not None else [Check("issue_reproduced", True, "faulty arm failed x", "faulty"),
                                                Check("no_1011_closes", True, "0 of 10 attempts closed 1011", "fixed")]
    arm_checks = arm_checks if arm_checks is not None else {
        "faulty": [Check("no_1011_closes", False, "7 of 10 attempts closed 1011")],
        "fixed": [Check("no_1011_closes", True, "0 of 10 attempts closed 1011")]}
    return ScenarioResult("race_conditions", mode, "ws://127.0.0.1:9/ws" if mode == "live" else None,
                          params or {"target_url": None, "sweep_repeats": 3, "dialect": "default"}, {}, arm_checks, {},
                          checks, {"faulty.closed_1011": 7, "fixed.closed_1011": 0, "closed_1011": 7},
                          "2026-11-30T12:00:00Z", "2026-11-30T12:00:41Z", error=error)


def test_markdown_table_escapes_and_formats():
    text = nb.markdown_table(pd.DataFrame([{"a": "x|y", "b": 0.123456, "c": None}, {"a": "two\nlines", "b": 3, "c": "z"}]))
    assert text.splitlines()[0] == "| a | b | c |"
    assert "x\\|y" in text and "two lines" in text and "0.1235" in text
    assert nb.markdown_table([{"ms": 30000.0}, {"ms": 12345.6}]).splitlines()[2:] == ["| 30000 |", "| 12346 |"]
    assert nb.markdown_table([]) == "_(none)_"


def test_a_link_the_toolkit_wrote_stays_a_link_in_a_table_and_server_text_does_not():
    from gp_lib.escape import Trusted

    text = nb.markdown_table([{"item": "notebook", "value": Trusted("[nb.ipynb](notebooks/nb.ipynb)")},
                              {"item": "reason", "value": "[click](http://evil.test)"}])
    assert "| notebook | [nb.ipynb](notebooks/nb.ipynb) |" in text
    assert "| reason | [click\\](http://evil.test) |" in text


def test_reference_verdict_names_both_arms_and_headline():
    text = nb.verdict_markdown(_result(), headline=("closed_1011",))
    assert "**Verdict: PASS**" in text
    assert "Issue reproduced in the faulty arm: **yes**" in text and "Remediation verified in the fixed arm: **yes**" in text
    assert "| faulty.closed_1011 | 7 |" in text and "| fixed.closed_1011 | 0 |" in text


def test_live_verdict_lists_failures():
    result = _result("live", checks=[Check("no_1011_closes", False, "7 of 10"), Check("success_rate", True, "ok")])
    text = nb.verdict_markdown(result, headline=("closed_1011",))
    assert "**Verdict: FAIL**" in text and "1 of 2 checks failed (no_1011_closes)" in text
    undecided = _result("live", checks=[Check("success_rate", True, "ok"), inconclusive("unique_connection_ids", "no id")])
    text = nb.verdict_markdown(undecided)
    assert "**Verdict: PASS**" in text and "all 1 decided checks passed; 1 inconclusive on this target " \
        "(unique_connection_ids)" in text


def test_error_verdict_says_why():
    assert "could not be made: target unreachable" in nb.verdict_markdown(_result(error="target unreachable"))


def test_remediation_side_by_side():
    text = nb.remediation_markdown(_result())
    assert "remediation verified" in text
    assert "| no_1011_closes | FAIL: 7 of 10 attempts closed 1011 | PASS: 0 of 10 attempts closed 1011 |" in text
    broken = _result(arm_checks={"faulty": [Check("no_1011_closes", True, "0")], "fixed": [Check("no_1011_closes", True, "0")]})
    assert "NOT verified" in nb.remediation_markdown(broken)
    assert "gp compare" in nb.remediation_markdown(_result("live"))


def test_reproduce_command_holds_every_changed_parameter():
    result = _result("live", params={"target_url": "ws://127.0.0.1:9/ws", "sweep_repeats": 5, "send_delays_ms": [0, 5],
                                     "out_dir": "/tmp/x", "dialect": "default"})
    command = nb.reproduce_command(result, {"sweep_repeats": 3, "send_delays_ms": [0, 1], "dialect": "default"})
    assert command == "gp report --scenario race_conditions --target ws://127.0.0.1:9/ws " \
                      "-p 'send_delays_ms=[0, 5]' -p sweep_repeats=5"


def test_environment_lists_versions_and_parameters():
    text = nb.environment_markdown(_result())
    assert "| websockets |" in text and "| sweep_repeats | 3 |" in text and "reference server" in text


def test_scraps_are_read_by_scrapbook(tmp_path):
    values = {"verdict": "pass", "metrics": {"closed_1011": 7, "rate": 0.5}, "checks": [{"name": "x", "passed": True}]}
    outputs = []
    for name, value in values.items():
        data, metadata = nb.scrap_output(name, value)
        outputs.append(nbformat.v4.new_output("display_data", data=data, metadata=metadata))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("glue", outputs=outputs)])
    path = tmp_path / "glued.ipynb"
    nbformat.write(notebook, path)
    scraps = sb.read_notebook(str(path)).scraps
    assert {name: scrap.data for name, scrap in scraps.items()} == values


def test_read_scraps_reads_what_scrapbook_reads(tmp_path):
    """The batch reads scraps without scrapbook: the same values, a later scrap of a name replacing an earlier."""
    first, second = nb.scrap_output("verdict", "fail"), nb.scrap_output("verdict", "pass")
    metrics = nb.scrap_output("metrics", {"closed_1011": 7})
    cells = [nbformat.v4.new_code_cell("glue", outputs=[
                 nbformat.v4.new_output("display_data", data=first[0], metadata=first[1]),
                 nbformat.v4.new_output("stream", text="noise\n")]),
             nbformat.v4.new_code_cell("glue again", outputs=[
                 nbformat.v4.new_output("display_data", data={"text/plain": "not a scrap"}),
                 nbformat.v4.new_output("display_data", data=metrics[0], metadata=metrics[1]),
                 nbformat.v4.new_output("display_data", data=second[0], metadata=second[1])])]
    path = tmp_path / "glued.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    expected = {name: scrap.data for name, scrap in sb.read_notebook(str(path)).scraps.items()}
    assert nb.read_scraps(nbformat.read(path, as_version=4)) == expected == {"verdict": "pass",
                                                                              "metrics": {"closed_1011": 7}}


def test_parameter_names_come_from_cells_of_literal_assignments_only():
    running = 'from gp_lib import notebook as nb\nparams = nb.params_from(globals(), P)'
    papermill = ['', 'target_url = None  # a comment\nsweep_repeats = 3\nsend_delays_ms = [0, -1]',
                 '# Parameters\nsweep_repeat = 1\n', running]     # the injected cell, with a typo
    assert sorted(nb.parameter_names(papermill)) == ["send_delays_ms", "sweep_repeat", "sweep_repeats", "target_url"]
    assert sorted(nb.parameter_names(papermill[:-1])) == sorted(nb.parameter_names(papermill))  # `In` not yet updated
    # in JupyterLab: the typo run, then fixed and run again: only the latest parameters count
    lab = ['', 'sweep_repeat = 1', running, 'result = run(params)\nfigures = []', 'sweep_repeats = 1', running]
    assert nb.parameter_names(lab) == ["sweep_repeats"]
    assert nb.parameter_names(['', 'x = 1 +', running]) == []


def test_an_unknown_parameter_stops_the_notebook_naming_it():
    from gp_lib.scenarios import race_conditions
    from gp_lib.scenarios.common import ParameterError

    namespace = {"In": ["", "sweep_repeats = 3\nrapid_cycles = 2", "# Parameters\nsweep_repeat = 1\n"],
                 "sweep_repeats": 3, "rapid_cycles": 2, "sweep_repeat": 1}
    with pytest.raises(ParameterError, match=r"unknown parameter sweep_repeat \(did you mean sweep_repeats\?\)"):
        nb.params_from(namespace, race_conditions.Params)
    namespace["In"] = namespace["In"][:2]
    assert nb.params_from(namespace, race_conditions.Params).sweep_repeats == 3
