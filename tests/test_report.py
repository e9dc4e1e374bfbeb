"""Rendering executed notebooks into reports, and the run's summary.json and junit.xml.

The executed notebook here is built by hand with every kind of output a real
one has (Markdown, images, HTML tables, scrapbook payloads, streams, errors),
so these tests need no kernel.
"""

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gp_lib.batch import REGISTRY
from gp_lib.notebook import SECTION_TITLES, SECTIONS
from gp_lib.redact import register_secret
from gp_lib.report import ReportContext, junit_xml, render, summary_json, write_report

# A 1x1 PNG, and another with different bytes.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
OTHER_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
SECRET = "report-test-secret-value-42"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


def _markdown(text):
    return new_output("display_data", data={"text/markdown": text, "text/plain": "<IPython.core.display.Markdown>"})


def _code(source, outputs, section=None):
    cell = new_code_cell(source, outputs=outputs, execution_count=1)
    if section:
        cell.metadata["tags"] = [f"section-{section}"]
    return cell


def _tagged_markdown(text, section):
    return new_markdown_cell(text, metadata={"tags": [f"section-{section}"]})


def executed_notebook():
    """Sections deliberately out of order, plus everything a report must leave out."""
    png = base64.b64encode(PNG).decode()
    other = base64.b64encode(OTHER_PNG).decode()
    return new_notebook(cells=[
        new_markdown_cell("# Untagged title\n\nUNTAGGED-NARRATIVE"),
        _code("target_url = None", [], None),
        _code("UNTAGGED_CODE = 1", [new_output("stream", name="stdout", text="UNTAGGED-STDOUT\n")]),
        _code("nb.show(results)", [_markdown("| check | result |\n| --- | --- |\n| a | PASS |")], "results"),
        _code("nb.show(verdict)", [_markdown("**Verdict: FAIL** VERDICT-TEXT"),
                                   new_output("stream", name="stderr", text="STDERR-NOISE 40%|####\n")], "verdict"),
        _tagged_markdown("# Impact heading\n\nIMPACT-TEXT\n\n```\n# not a heading\n```", "impact"),
        _code("nb.show_figure(...)", [new_output("display_data", data={"image/png": png, "text/plain": "<Image>"})],
              "plots"),
        _code("plt.show()", [new_output("display_data", data={"image/png": other, "text/plain": "<Figure>"})], "plots"),
        _code("table", [new_output("execute_result", execution_count=1,
                                   data={"text/html": "<table><tr><td>HTML-CELL</td></tr></table>",
                                         "text/plain": "   PLAIN-TABLE"})], "results"),
        _code("nb.show(env)", [_markdown(f"| parameter | value |\n| --- | --- |\n| secret | {SECRET} |\n"
                                         f"| token | {JWT} |")], "environment"),
        _code("boom()", [new_output("error", ename="RuntimeError", evalue="TRACEBACK-TEXT",
                                    traceback=["\x1b[31mRuntimeError\x1b[0m: TRACEBACK-TEXT"])], "remediation"),
        _code("nb.glue_result(...)", [new_output("display_data", metadata={"scrapbook": {"name": "summary", "data": True}},
                                                 data={"application/scrapbook.scrap.json+json":
                                                       {"name": "summary", "data": {"verdict": "fail"},
                                                        "encoder": "json", "version": 1}})]),
    ])


def context(**changes):
    values = dict(scenario="race_conditions", title="WebSocket race conditions", verdict="fail", error=None,
                  facts=[("run", "20261130T120000Z"), ("mode", "live")],
                  command="gp report --target ws://127.0.0.1:9/ws --scenario race_conditions",
                  parameters={"target_url": "ws://127.0.0.1:9/ws"})
    values.update(changes)
    return ReportContext(**values)


@pytest.fixture
def rendered(tmp_path):
    """(text, images) of the hand-built notebook, with the first PNG already saved by the notebook."""
    register_secret(SECRET)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "race_conditions-rate-by-delay.png").write_bytes(PNG)
    return render(executed_notebook(), context(), assets)


def test_title_names_scenario_and_verdict(rendered):
    text, _ = rendered
    assert text.splitlines()[0] == "# WebSocket race conditions: FAIL"


def test_sections_in_design_order_under_their_titles(rendered):
    text, _ = rendered
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == [SECTION_TITLES[s] for s in SECTIONS]
    assert text.index("VERDICT-TEXT") < text.index("IMPACT-TEXT") < text.index("| a | PASS |")
    assert headings[:4] == ["What to do now", "Verdict", "Technical root-cause analysis", "Business impact"]


def test_untagged_cells_code_and_noise_are_left_out(rendered):
    text, _ = rendered
    for absent in ("UNTAGGED", "nb.show", "target_url = None", "STDERR-NOISE", "HTML-CELL", "<table",
                   "scrapbook", '"verdict": "fail"', "TRACEBACK-TEXT", "```python", "\x1b["):
        assert absent not in text, absent


def test_plain_text_stands_in_for_html(rendered):
    assert "PLAIN-TABLE" in rendered[0]


def test_notebook_headings_are_demoted_below_the_sections(rendered):
    text, _ = rendered
    assert "### Impact heading" in text
    assert "# not a heading" in text and "### not a heading" not in text


def test_images_keep_the_saved_name_or_get_a_readable_one_and_are_linked_relatively(rendered):
    text, images = rendered
    assert images == {"assets/race_conditions-rate-by-delay.png": PNG, "assets/race_conditions-plots-2.png": OTHER_PNG}
    assert "![race_conditions-rate-by-delay](assets/race_conditions-rate-by-delay.png)" in text
    assert "![race_conditions-plots-2](assets/race_conditions-plots-2.png)" in text
    assert "data:image" not in text


def test_secrets_and_tokens_are_redacted(rendered):
    text, _ = rendered
    assert SECRET not in text and JWT not in text and "eyJ" not in text
    assert "<redacted>" in text


def test_reproduce_section_ends_with_the_batch_command(rendered):
    text, _ = rendered
    tail = text[text.index("## Reproduce this run"):]
    assert "gp report --target ws://127.0.0.1:9/ws --scenario race_conditions" in tail
    assert "_This notebook shows nothing for this section._" in tail


def test_what_to_do_now_opens_the_report_and_the_title_says_whose_failures_these_are():
    nb = executed_notebook()
    nb.cells.append(_code("nb.show(next)", [_markdown("**Cause:** NEXT-TEXT")], "next"))
    text, _ = render(nb, context(headline="caused by factory_initialization, not by the handshake race"))
    lines = text.splitlines()
    assert lines[0] == "# WebSocket race conditions: FAIL (caused by factory_initialization, not by the handshake race)"
    assert lines[2] == "## What to do now" and lines[4] == "**Cause:** NEXT-TEXT"
    verdict = text[text.index("## Verdict"):text.index("## Technical root-cause analysis")]
    assert verdict.index("| run | 20261130T120000Z |") < verdict.index("VERDICT-TEXT")  # what the run was, then how it went


def test_a_run_that_could_not_be_made_says_what_to_do_first():
    text, _ = render(new_notebook(), context(verdict="error", error="target unreachable: none of 3 attempts connected"))
    section = text[text.index("## What to do now"):text.index("## Verdict")]
    assert "Fix that first, then run it again" in section
    assert "gp report --target ws://127.0.0.1:9/ws --scenario race_conditions" in section


def test_a_report_of_a_failed_notebook_says_so_plainly_and_still_has_environment():
    nb = new_notebook(cells=[_code("nb.show(verdict)", [_markdown("VERDICT-TEXT")], "verdict")])
    text, _ = render(nb, context(verdict="error", error="the notebook raised RuntimeError: boom (cell [4])"))
    assert text.startswith("# WebSocket race conditions: ERROR\n\n**The run could not be made:** the notebook raised "
                           "RuntimeError: boom (cell [4]).")
    assert "_Not shown: the notebook stopped before this section._" in text
    environment = text[text.index("## Environment"):text.index("## Remediation")]
    assert "| nbconvert |" in environment and "| target_url | ws://127.0.0.1:9/ws |" in environment


def test_markdown_reads_well_in_a_pager(rendered):
    text, _ = rendered
    assert "<" not in re.sub(r"<redacted>|<IPython[^>]*>", "", text), "no raw HTML"
    assert "\n\n\n" not in text and text.endswith("\n") and not re.search(r"[ \t]+$", text, flags=re.M)


def test_write_report_writes_text_and_assets(tmp_path):
    executed = tmp_path / "executed.ipynb"
    nbformat.write(executed_notebook(), executed)
    path = write_report(executed, tmp_path / "out", "REPORT.md", context())
    assert path.read_text().startswith("# WebSocket race conditions")
    linked = re.findall(r"\]\((assets/[^)]+)\)", path.read_text())
    assert linked and all((tmp_path / "out" / link).is_file() for link in linked)


def test_write_report_without_an_executed_notebook(tmp_path):
    path = write_report(tmp_path / "missing.ipynb", tmp_path, "REPORT.md",
                        context(verdict="error", error="the notebook could not be executed: RuntimeError: no kernel"))
    assert "**The run could not be made:** the notebook could not be executed" in path.read_text()


# -- summary.json and junit.xml ---------------------------------------------------------------

SUMMARY = {
    "run_id": "20261130T120000Z", "mode": "live", "target": "ws://127.0.0.1:9/ws",
    "started_at": "2026-11-30T12:00:00Z", "finished_at": "2026-11-30T12:00:41Z", "verdict": "error",
    "scenarios": {
        "race_conditions": {"verdict": "fail", "report": "R.md", "metrics": {"attempts": 3},
                            "checks": [{"name": "no_1011_closes", "passed": False, "evidence": "2 of 3 closed 1011"},
                                       {"name": "success_rate", "passed": True, "evidence": "ok", "arm": "fixed"}]},
        "missing_events": {"verdict": "error", "report": "M.md", "checks": [], "metrics": {},
                           "error": f"the notebook raised ValueError: token {JWT}"},
    },
    "diagnosis": [],
}


def test_junit_has_a_testcase_per_check_with_failures_and_errors():
    root = ET.fromstring(junit_xml(SUMMARY, {"race_conditions": 1.5}))
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {("race_conditions", "no_1011_closes"), ("race_conditions", "success_rate [fixed]"),
                          ("missing_events", "run")}
    assert cases[("race_conditions", "no_1011_closes")].find("failure").get("message") == "2 of 3 closed 1011"
    assert cases[("race_conditions", "success_rate [fixed]")].find("failure") is None
    error = cases[("missing_events", "run")].find("error")
    assert "ValueError" in error.get("message") and "eyJ" not in error.get("message") + error.text
    assert root.find("testsuite").get("time") == "1.500"


def test_junit_skips_an_inconclusive_check_with_its_reason():
    summary = {"scenarios": {"factory_initialization": {"verdict": "pass", "report": "F.md", "checks": [
        {"name": "unique_connection_ids", "passed": None, "status": "inconclusive",
         "evidence": "the readiness marker carries no connection id"},
        {"name": "no_factory_closes", "passed": True, "status": "pass", "evidence": "0 of 8"}]}}}
    root = ET.fromstring(junit_xml(summary, {}))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("2", "0", "1")
    skipped = root.find(".//testcase[@name='unique_connection_ids']/skipped")
    assert skipped.get("message") == "inconclusive: the readiness marker carries no connection id"


def test_junit_holds_what_a_target_sent_that_xml_cannot():
    """Evidence quotes the target (tool names, close reasons, errors): control characters must not break the file."""
    garbage = {"scenarios": {"missing_events": {
        "verdict": "error", "report": "M.md", "error": "first error: bad\x00byte",
        "checks": [{"name": "tool_calls_closed", "passed": False, "evidence": "tool_executing of ev\x01il\x1b[31m"}]}}}
    root = ET.fromstring(junit_xml(garbage, {}))
    assert root.find(".//failure").get("message") == "tool_executing of ev\ufffdil\ufffd[31m"
    assert root.find(".//error").text.startswith("first error: bad\ufffdbyte")


def test_write_report_of_a_notebook_cut_short(tmp_path):
    """A worker killed while papermill wrote the notebook leaves broken JSON: the report still says why."""
    executed = tmp_path / "executed.ipynb"
    nbformat.write(executed_notebook(), executed)
    executed.write_text(executed.read_text()[:200])
    path = write_report(executed, tmp_path, "REPORT.md",
                        context(verdict="error", error="the executed notebook cannot be read: Notebook does not appear "
                                                       "to be JSON"))
    assert path.read_text().startswith("# WebSocket race conditions: ERROR\n\n**The run could not be made:**")


def test_summary_json_is_redacted_json():
    data = json.loads(summary_json(SUMMARY))
    assert "eyJ" not in json.dumps(data)
    assert data["scenarios"]["race_conditions"] == SUMMARY["scenarios"]["race_conditions"]


# -- the committed example run ------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "reports" / "example"


@pytest.mark.parametrize("entry", REGISTRY.values(), ids=lambda e: e.scenario)
def test_the_committed_example_notebooks_still_render_with_their_images(entry):
    nb = nbformat.read(EXAMPLE / "notebooks" / entry.notebook, as_version=4)
    text, images = render(nb, context(scenario=entry.scenario, title=entry.title, verdict="pass"), EXAMPLE / "assets")
    assert re.findall(r"^## (.+)$", text, flags=re.M) == [SECTION_TITLES[s] for s in SECTIONS]
    assert images, "the example's plots section shows figures"
    for name, data in images.items():
        assert (EXAMPLE / name).read_bytes() == data, f"{name} differs from the committed asset"


@pytest.mark.parametrize("entry", REGISTRY.values(), ids=lambda e: e.scenario)
def test_the_committed_example_reports_link_only_committed_images(entry):
    text = (EXAMPLE / entry.report).read_text()
    assert text.startswith(f"# {entry.title}: PASS")
    assert re.findall(r"^## (.+)$", text, flags=re.M) == [SECTION_TITLES[s] for s in SECTIONS]
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((EXAMPLE / link).is_file() for link in links)


def test_the_committed_example_is_a_passing_reference_run_without_this_machines_paths():
    summary = json.loads((EXAMPLE / "summary.json").read_text())
    assert (summary["mode"], summary["verdict"], list(summary["scenarios"])) == ("reference", "pass", list(REGISTRY))
    root = str(Path(__file__).resolve().parents[1])
    for path in EXAMPLE.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert root not in path.read_text(), f"{path.name} holds an absolute path of this machine"


def test_warming_the_renderers_builds_them_and_changes_nothing_they_render():
    """`gp report` warms the exporters while its notebooks run (gp_lib.batch); what they render after must be
    what a cold process renders."""
    from gp_lib import index_html, report

    def both():  # the page's cell ids are new in every notebook built
        section = index_html.section("T", executed_notebook(), context())
        return render(executed_notebook(), context())[0], re.sub(r'id="cell-id=[^"]*"', "", section)

    register_secret(SECRET)
    report._exporter.cache_clear()
    index_html._exporter.cache_clear()
    cold = both()
    report._exporter.cache_clear()
    index_html._exporter.cache_clear()
    report.warm()
    index_html.warm()
    assert report._exporter.cache_info().currsize == 1 and index_html._exporter.cache_info().currsize == 2
    assert both() == cold
    assert "IMPACT-TEXT" in cold[0] and "IMPACT-TEXT" in cold[1]
