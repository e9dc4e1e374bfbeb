"""`OUT/index.html`: one self-contained page per run, for people who open a report in a browser.

The page opens with the run's summary (verdict, what the preflight saw, the
diagnosis) and a table of the scenarios with links to their Markdown reports
and to their sections below; then each scenario's report, rendered by
nbconvert's HTML exporter from the same section-tagged cells as the Markdown
report: inputs hidden, images embedded as data URIs, no script and nothing
fetched from elsewhere.

Everything a target controls is escaped: the summary is built with
`gp_lib.escape.html` (each value bounded, control characters made visible),
and the Markdown of the reports is rendered with raw HTML escaped (nbconvert
passes it through by default) and harmful link protocols refused. Each
section, and the page around them, passes through `gp_lib.redact.redact` last.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import nbformat

from gp_lib import escape
from gp_lib.notebook import BADGES
from gp_lib.redact import redact

INDEX = "index.html"
#: nbconvert's lab page without its scripts (require.js, MathJax and mermaid come from a CDN): self-contained.
#: It holds the summary; the scenarios' sections go after it.
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
  .gp-summary { max-width: 1100px; margin: 1.5em auto 0 auto; padding: 0 1em; font-family: system-ui, sans-serif; }
  .gp-summary table { border-collapse: collapse; margin: 0.8em 0; }
  .gp-summary a { color: #1565c0; text-decoration: underline; }
  .gp-summary th, .gp-summary td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
  .gp-pass { color: #2e7d32; font-weight: bold; } .gp-fail { color: #c62828; font-weight: bold; }
  .gp-error, .gp-inconclusive { color: #ef6c00; font-weight: bold; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.gp_summary }}
{%- endblock body_header -%}
"""
#: One scenario's cells alone, in the page's body (whose class nbconvert's clean-up looks for), without its head.
SECTION = """{%- extends 'lab/index.html.j2' -%}
{%- block header -%}{%- endblock header -%}
{%- block footer -%}{%- endblock footer -%}
{%- block rawcell scoped -%}
{%- if cell.metadata.get("gp_html") -%}{{ cell.source }}{%- endif -%}
{%- endblock rawcell -%}
"""
MAIN, END_MAIN = "<main>", "</main>"


def section(title: str, executed: Any, context: Any) -> str:
    """One scenario's report as the page shows it (its heading, then its sections), redacted.

    Rendered when its notebook finishes, while the others still run; `write` assembles the page.

    Args:
        title: the scenario's title.
        executed: its executed notebook: a path, or the notebook already read.
        context: its `gp_lib.report.ReportContext`.
    """
    from gp_lib import report

    nb = executed if isinstance(executed, nbformat.NotebookNode) else report.read_executed(executed)
    page = nbformat.v4.new_notebook()
    page.cells.append(nbformat.v4.new_raw_cell(  # a raw HTML cell: the Markdown renderer escapes HTML
        f'<h1 id="{_escape(context.scenario)}">{_escape(_title(title, context))}</h1>',
        metadata={"gp_html": True}))  # built here, escaped; no other raw cell is rendered
    for cell in report.sectioned(nb, context).cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            cell.source = "#" + cell.source
        page.cells.append(cell)
    body, _ = _exporter(SECTION).from_notebook_node(page)
    return redact(body[body.index(MAIN) + len(MAIN):body.rindex(END_MAIN)].strip("\n"))


def write(out: str | Path, summary: Mapping[str, Any], sections: Sequence[str]) -> Path:
    """Write `out/index.html`: the run's summary, then the scenarios' `section`s in order."""
    page = nbformat.v4.new_notebook(metadata={"title": f"Golden Path run {summary.get('run_id', '')}"})
    html_page, _ = _exporter(TEMPLATE).from_notebook_node(page, resources={"gp_summary": summary_html(summary)})
    end = html_page.rindex("\n" + END_MAIN)  # the sections go between the summary and the end of <main>
    path = Path(out) / INDEX
    path.write_text(redact(html_page[:end]) + "".join(sections) + redact(html_page[end:]))
    return path


def warm() -> None:
    """Make both exporters and compile their templates and Markdown renderer now, ahead of the first section
    (see `gp_lib.batch`)."""
    page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("*warm*")])
    for template in (SECTION, TEMPLATE):
        _exporter(template).from_notebook_node(page, resources={"gp_summary": ""})


@functools.lru_cache(maxsize=None)
def _exporter(template: str) -> Any:
    """nbconvert's HTML exporter with `template`, made once per process (its templates compile slowly)."""
    from nbconvert import HTMLExporter

    from gp_lib.report import exporter_config

    exporter = HTMLExporter(config=exporter_config(), template_name="lab", template_file="gp.html.j2",
                            extra_loaders=[jinja2.DictLoader({"gp.html.j2": template})])
    exporter.register_filter("markdown2html", escaped_markdown)
    return exporter


def escaped_markdown(source: str) -> str:
    """Markdown as HTML with any raw HTML in it escaped and harmful link protocols refused."""
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    return MarkdownWithMath(renderer=IPythonRenderer(escape=True, allow_harmful_protocols=False)).render(source)


def summary_html(summary: Mapping[str, Any]) -> str:
    """The run at a glance: verdict, preflight, diagnosis, and one row per scenario with its links."""
    e = _escape
    verdict = str(summary.get("verdict", "error"))
    parts = ['<div class="gp-summary">',
             f"<h1>Golden Path run {e(summary.get('run_id'))}: "
             f'<span class="gp-{e(verdict)}">{e(BADGES.get(verdict, verdict.upper()))}</span></h1>',
             f"<p>Mode <b>{e(summary.get('mode'))}</b>, target <code>{e(summary.get('target') or 'reference server')}"
             f"</code>, from {e(summary.get('started_at'))} to {e(summary.get('finished_at'))}.</p>"]
    preflight = summary.get("preflight")
    if preflight:
        parts.append(f"<p>Preflight: {e(preflight.get('outcome'))}"
                     + (f", stopped the run: {e(preflight.get('stop'))}" if preflight.get("stop") else "") + "</p>")
    rows = []
    for name, entry in (summary.get("scenarios") or {}).items():
        checks = entry.get("checks") or []
        failed = [c["name"] for c in checks if c.get("status", "pass" if c.get("passed") else "fail") == "fail"]
        undecided = [c["name"] for c in checks if c.get("status") == "inconclusive"]
        state = str(entry.get("verdict", "error"))
        note = (f"failures belong to {entry['failures_belong_to']}" if entry.get("failures_belong_to") else
                entry.get("error") or (f"failed: {', '.join(failed)}" if failed else ""))
        if undecided:
            note = f"{note}; inconclusive: {', '.join(undecided)}" if note else f"inconclusive: {', '.join(undecided)}"
        link = (f'<a href="{e(entry["report"])}">{e(entry["report"])}</a>' if entry.get("report") else "not written")
        rows.append(f'<tr><td><a href="#{e(name)}">{e(name)}</a></td>'
                    f'<td class="gp-{e(state)}">{e(BADGES.get(state, state.upper()))}</td>'
                    f"<td>{e(note)}</td><td>{link}</td></tr>")
    parts += ["<table><tr><th>scenario</th><th>verdict</th><th>why</th><th>Markdown report</th></tr>",
              *rows, "</table>"]
    diagnosis = summary.get("diagnosis") or []
    if diagnosis:
        parts.append("<p><b>Diagnosis</b> (strongest first)</p><ol>")
        for finding in diagnosis:
            evidence = "".join(f"<li>{e(sentence)}</li>" for sentence in finding.get("evidence") or [])
            parts.append(f"<li><b>{e(finding.get('root_cause'))}</b> (confidence {e(finding.get('confidence'))})"
                         f"<ul>{evidence}</ul></li>")
        parts.append("</ol>")
    else:
        parts.append("<p><b>Diagnosis:</b> nothing wrong was seen.</p>")
    parts.append('<p>Also in this folder: <a href="summary.json">summary.json</a>, <a href="junit.xml">junit.xml</a>, '
                 "the executed notebooks under notebooks/ and the traces under traces/.</p></div>")
    return "\n".join(parts)


def _title(title: str, context: Any) -> str:
    badge = BADGES.get(context.verdict, context.verdict.upper())
    return f"{title}: {badge}" + (f" ({context.headline})" if context.headline else "")


def _escape(value: Any) -> str:
    return escape.html("" if value is None else value)
