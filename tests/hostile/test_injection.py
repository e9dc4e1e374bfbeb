"""Class 4, injection: text a server controls never becomes Markdown structure, HTML or terminal control."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hostile_servers import INJECTION, serving

from gp_lib.checks import Check
from gp_lib.diagnosis import Finding
from gp_lib.notebook import checks_markdown, diagnosis_markdown, markdown_table, verdict_markdown

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x9b]")
RAW_HTML = re.compile(r"<\s*(script|img|b|iframe)", re.I)


def assert_inert_markdown(text: str, allowed_headings: int = 0) -> None:
    assert not RAW_HTML.search(text), text
    assert not CONTROL.search(text.replace("\n", "")), repr(text)
    headings = [line for line in text.split("\n") if line.lstrip().startswith("#")]
    assert len(headings) <= allowed_headings, headings


def test_a_table_cell_cannot_open_a_heading_markup_or_a_terminal_escape():
    assert_inert_markdown(markdown_table([{"user_id": INJECTION, "close_reason": "\r\n# pwned\r\n"}]))


def test_check_evidence_and_diagnosis_evidence_stay_text():
    assert_inert_markdown(checks_markdown([Check("no_1011_closes", False, f"reason {INJECTION}")]))
    assert_inert_markdown(diagnosis_markdown([Finding("unknown", 0.5, [f"closed with {INJECTION}"])]))


@pytest.mark.parametrize("mode", ["live", "reference"])
def test_the_verdict_line_escapes_an_error_and_the_target(mode):
    result = SimpleNamespace(scenario="race_conditions", verdict="error", error=f"first error: {INJECTION}",
                             mode=mode, target=f"ws://h/{INJECTION}", checks=[], metrics={})
    assert_inert_markdown(verdict_markdown(result))
    result.error = None
    result.checks = [Check(f"x{INJECTION}", False, INJECTION, arm="fixed")]
    assert_inert_markdown(verdict_markdown(result))


def test_probe_prints_no_control_bytes_from_the_server(run_gp):
    with serving("injection") as server:
        result = run_gp("probe", server.url, "--wait", "0.5", "--ready-timeout", "2")
    assert "Traceback" not in result.err
    assert not CONTROL.search(result.out.replace("\n", "")), repr(result.out)
    assert "outcome:      closed_1011" in result.out
    assert all(not line.startswith("#") for line in result.out.splitlines())


def test_a_report_header_escapes_the_error_a_target_caused():
    import nbformat

    from gp_lib import report

    context = report.ReportContext(scenario="race_conditions", title="Race", verdict="error",
                                   error=f"first error: HTTP 500 instead of the upgrade: {INJECTION}",
                                   facts=[("target", f"ws://h/{INJECTION}")], command="gp report", parameters={})
    text, _ = report.render(nbformat.v4.new_notebook(), context)
    header = text.split("## ")[0]
    assert_inert_markdown(header.split("\n", 1)[1])  # the title line is the report's own heading


def test_the_index_page_summary_shows_server_text_bounded_and_without_control_characters():
    from gp_lib import escape
    from gp_lib.index_html import summary_html

    error = f"first error: {INJECTION}" + "x" * 100_000
    page = summary_html({"run_id": "r1", "verdict": "error", "target": f"ws://h/{INJECTION}",
                         "scenarios": {"race_conditions": {"verdict": "error", "error": error}},
                         "diagnosis": [{"root_cause": "unknown", "confidence": 0.5, "evidence": [INJECTION]}]})
    assert not re.search(r"<\s*(script|img)", page) and not CONTROL.search(page.replace("\n", "")), page[:300]
    assert "\\x1b[31mRED" in page  # shown, not obeyed
    assert len(page) < 4 * escape.DEFAULT_LIMIT + 2_000  # the 100 kB error is cut
