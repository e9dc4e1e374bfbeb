"""What a batch run writes for readers: the Markdown reports, summary.json and junit.xml.

A report is rendered from its executed notebook with nbconvert: only cells
tagged `section-<name>` reach it, regrouped under the headings of
`gp_lib.notebook.SECTIONS` in that order, code inputs removed, and of the
outputs only Markdown, images and plain text kept (no HTML, no scrapbook
payloads, no streams, no tracebacks). Images go to `OUT/assets/` under the
names the notebook saved them as. Every text this module writes passes
through `gp_lib.redact.redact` last.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nbformat
from nbconvert import MarkdownExporter
from traitlets.config import Config

from gp_lib import escape
from gp_lib.checks import FAIL, INCONCLUSIVE, status_of
from gp_lib.notebook import BADGES, SECTION_TITLES, SECTIONS, VERSIONED, markdown_table, package_version
from gp_lib.redact import redact, redact_value

ASSETS = "assets"
#: What a report keeps of an output, best first; anything else (HTML, scrap payloads) is dropped.
MIMETYPES = ("text/markdown", "image/png", "image/jpeg", "image/svg+xml", "text/plain")
IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg"}
#: Characters XML 1.0 cannot hold, even escaped: a junit.xml with one is rejected by every parser.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class ReportContext:
    """What the batch knows about one scenario run, beyond its notebook."""

    scenario: str
    title: str                   # e.g. "WebSocket race conditions"
    verdict: str                 # pass, fail or error
    error: str | None            # why the run could not be made
    facts: Sequence[tuple[str, str]]  # (item, value) rows under the title: run id, mode, target, ...
    command: str                 # the `gp report` command that repeats this run
    parameters: Mapping[str, Any]     # what the parameter layers set (shown if the notebook did not)
    headline: str | None = None  # words after the title's badge, e.g. whose failures these are


# -- the Markdown report --------------------------------------------------------------------

def write_report(executed: str | Path | nbformat.NotebookNode, out_dir: str | Path, name: str,
                 context: ReportContext) -> Path:
    """Render `executed` (a path, or the notebook already read) into `out_dir/name`, its images into
    `out_dir/assets/`; the report's path."""
    out_dir = Path(out_dir)
    nb = executed if isinstance(executed, nbformat.NotebookNode) else read_executed(executed)
    text, images = render(nb, context, out_dir / ASSETS)
    for relative, data in images.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    path = out_dir / name
    path.write_text(text)
    return path


def read_executed(path: str | Path) -> nbformat.NotebookNode:
    """An executed notebook, or an empty one when it was never written or was cut short when its kernel
    died (the report's header and section gaps say why)."""
    try:
        return nbformat.read(str(path), as_version=4)
    except (OSError, ValueError):
        return nbformat.v4.new_notebook()


def render(nb: nbformat.NotebookNode, context: ReportContext, assets: Path | None = None) -> tuple[str, dict[str, bytes]]:
    """The report text and its images (`{"assets/<name>": bytes}`).

    `assets` is where the notebook saved its figures; an image whose bytes
    match one of them keeps that file's name.
    """
    grouped = sectioned(nb, context)
    _name_images(grouped, context.scenario, _saved_figures(assets))
    body, resources = _exporter().from_notebook_node(grouped, resources={"unique_key": context.scenario,
                                                                      "output_files_dir": ASSETS})
    body = re.sub(r"!\[(?:png|jpeg|svg)\]\(([^)]*/)?([^)/]+)\.(\w+)\)", r"![\2](\1\2.\3)", body)
    text = _header(context) + "\n\n" + body
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return redact(text), dict(resources.get("outputs", {}))


@functools.lru_cache(maxsize=None)
def _exporter() -> MarkdownExporter:
    """nbconvert's Markdown exporter as reports use it, made once per process (its templates compile slowly)."""
    return MarkdownExporter(config=exporter_config())


def warm() -> None:
    """Make the exporter and compile its templates now, ahead of the first report (see `gp_lib.batch`)."""
    _exporter().from_notebook_node(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("warm")]))


def exporter_config() -> Config:
    """What a report shows of a notebook, in Markdown here and in HTML (`gp_lib.index_html`): outputs
    only, no prompts, the kinds of output in `MIMETYPES` order."""
    return Config({
        "TemplateExporter": {"exclude_input": True, "exclude_input_prompt": True, "exclude_output_prompt": True},
        "NbConvertBase": {"display_data_priority": list(MIMETYPES)},
    })


def sectioned(nb: nbformat.NotebookNode, context: ReportContext) -> nbformat.NotebookNode:
    """A copy of `nb` with only section-tagged cells, under one heading per section, in `SECTIONS` order.

    A section left empty says why; the environment falls back to what the
    batch knows, and the reproduce section always ends with the batch command.
    """
    grouped = nbformat.v4.new_notebook(metadata=copy.deepcopy(nb.metadata))
    for section in SECTIONS:
        cells = []
        for cell in nb.cells:
            if f"section-{section}" not in cell.get("metadata", {}).get("tags", []):
                continue
            cell = copy.deepcopy(cell)
            if cell.cell_type == "markdown":
                cell.source = _demote_headings(cell.source)
            elif cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if _kept(o)]
                for output in cell.outputs:
                    output["data"] = {k: v for k, v in output["data"].items() if k in MIMETYPES}
            if (cell.cell_type == "markdown" and cell.source.strip()) or (cell.cell_type == "code" and cell.outputs):
                cells.append(cell)
        if not cells:
            cells.append(nbformat.v4.new_markdown_cell(_gap(section, context)))
        if section == "verdict":  # what the run was, at the top of the findings
            cells.insert(0, nbformat.v4.new_markdown_cell(
                markdown_table([{"item": k, "value": v} for k, v in context.facts])))
        if section == "reproduce":
            cells.append(nbformat.v4.new_markdown_cell(
                f"The command that made this report:\n\n```sh\n{context.command}\n```"))
        grouped.cells.append(nbformat.v4.new_markdown_cell(f"## {SECTION_TITLES[section]}"))
        for cell in cells:
            cell.metadata["section"] = section
            grouped.cells.append(cell)
    return grouped


def _gap(section: str, context: ReportContext) -> str:
    """What an empty section says instead."""
    if section == "environment":
        versions = [{"package": name, "version": package_version(name)} for name in VERSIONED]
        parameters = [{"parameter": k, "value": v} for k, v in sorted(context.parameters.items())]
        return ("_The notebook showed no environment; what the batch knows:_\n\n" + markdown_table(versions)
                + "\n\n**Parameters set for this run**\n\n" + markdown_table(parameters))
    if section == "next" and context.error:
        return ("Nothing could be tested (see above). Fix that first, then run it again:\n\n"
                f"```sh\n{context.command}\n```")
    if context.error:
        return "_Not shown: the notebook stopped before this section._"
    return "_This notebook shows nothing for this section._"


def _kept(output: Mapping[str, Any]) -> bool:
    """Display outputs with something a reader can use; never a scrap payload, a stream or a traceback."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return False
    if output.get("metadata", {}).get("scrapbook", {}).get("data"):
        return False
    return any(k in MIMETYPES for k in output.get("data", {}))


def _demote_headings(source: str) -> str:
    """Notebook headings two levels down, so that the report's sections stay the outline."""
    lines, fenced = [], False
    for line in source.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else re.match(r"(#{1,6})(\s.*)", line)
        lines.append("#" * min(len(match.group(1)) + 2, 6) + match.group(2) if match else line)
    return "\n".join(lines)


def _saved_figures(assets: Path | None) -> dict[str, str]:
    """`{sha256 of the bytes: file name}` of the figures already in `assets`."""
    if assets is None or not assets.is_dir():
        return {}
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in sorted(assets.iterdir()) if p.is_file()}


def _name_images(nb: nbformat.NotebookNode, scenario: str, saved: Mapping[str, str]) -> None:
    """Give every image output a readable file name: the saved figure's, else scenario-section-n."""
    counts: dict[str, int] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            mimetype = next((m for m in IMAGE_TYPES if m in output.get("data", {})), None)
            if mimetype is None:
                continue
            data = output["data"][mimetype]
            raw = data.encode() if mimetype == "image/svg+xml" else base64.b64decode(data)
            section = cell.metadata["section"]
            counts[section] = counts.get(section, 0) + 1
            stem = saved.get(hashlib.sha256(raw).hexdigest(), f"{scenario}-{section}-{counts[section]}")
            output.setdefault("metadata", {})["filename"] = stem + IMAGE_TYPES[mimetype]


def _header(context: ReportContext) -> str:
    """The title (badge and headline) and, when the run could not be made, why; the facts open the verdict."""
    badge = BADGES.get(context.verdict, context.verdict.upper())
    lines = [f"# {context.title}: {badge}" + (f" ({context.headline})" if context.headline else "")]
    if context.error:
        lines += ["", f"**The run could not be made:** {escape.markdown(context.error.rstrip('.'))}.", "",
                  "The sections below hold what the notebook showed; the executed notebook has the details."]
    return "\n".join(lines)


# -- summary.json and junit.xml -------------------------------------------------------------

def summary_json(summary: Mapping[str, Any]) -> str:
    """summary.json's text, secrets redacted."""
    return json.dumps(redact_value(summary), indent=2) + "\n"


def junit_xml(summary: Mapping[str, Any], seconds: Mapping[str, float]) -> str:
    """One testsuite per scenario, one testcase per check (an inconclusive one skipped, with its reason);
    a scenario that could not run adds an error."""
    suites = ET.Element("testsuites", name="golden-path", tests="0", failures="0", errors="0", skipped="0")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for scenario, entry in summary["scenarios"].items():
        suite = ET.SubElement(suites, "testsuite", name=_xml(scenario), time=f"{seconds.get(scenario, 0.0):.3f}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for check in entry["checks"]:
            name = check["name"] + (f" [{check['arm']}]" if check.get("arm") else "")
            case = ET.SubElement(suite, "testcase", classname=_xml(scenario), name=_xml(name))
            counts["tests"] += 1
            status = status_of(check)
            if status == FAIL:
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", message=_xml(check["evidence"]), type="check")
                failure.text = _xml(check["evidence"])
            elif status == INCONCLUSIVE:  # could not be decided on this target: neither pass nor failure
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=_xml("inconclusive: " + check["evidence"]))
        if entry.get("error"):
            case = ET.SubElement(suite, "testcase", classname=_xml(scenario), name="run")
            counts["tests"] += 1
            counts["errors"] += 1
            error = ET.SubElement(case, "error", message=_xml(entry["error"]), type="run")
            error.text = f"{_xml(entry['error'])}\nSee {entry['report'] or 'summary.json'}."
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _xml(text: str | None) -> str:
    """Text for junit.xml: redacted, and what a target sent that XML cannot hold replaced (U+FFFD)."""
    return NOT_XML.sub("\ufffd", redact(text) or "")
