"""Server-controlled text made inert for where it is shown: Markdown, HTML, a terminal.

A target chooses its close reasons, user ids and error texts, so they may hold
`\\r\\n# heading`, `<script>` or ANSI escape sequences. Every such text passes
through one of these functions before it reaches a report or the screen:
control characters become visible `\\xNN`/`\\uNNNN` escapes, line breaks a
space in Markdown and a visible `\\n` on a terminal (where a forged line could pass for the toolkit's
own), and markup characters their escaped forms. Text longer than
`limit` is cut, saying how long it was.
"""

from __future__ import annotations

import html as _html
import re

from gp_lib.protocol import cut_text

#: Characters kept of one value shown in a table cell or a terminal line.
DEFAULT_LIMIT = 500
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: What makes inline Markdown markup (GitHub-flavoured): escapes, code spans, table cells, and the `](` or
#: `][` that closes a link's or image's text. Block structure (headings, lists, quotes, reference
#: definitions) needs a line start, and no line break survives.
_MARKDOWN = re.compile(r"([\\`|]|\](?=[(\[]))")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Trusted(str):
    """Markdown the toolkit wrote itself (a link to a file of the run): shown as it is."""


def visible_controls(text: str) -> str:
    """Control and direction-override characters as visible escapes (`\\n`, `\\x1b`, `\\u202e`)."""
    def show(match: re.Match[str]) -> str:
        char = match.group(0)
        return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return _CONTROL.sub(show, text)


def terminal(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """One line safe to print: no escape sequence, bell or carriage return reaches the terminal."""
    return visible_controls(cut_text(str(text), limit))


def markdown(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """Inline Markdown (a table cell, a list item) that shows `text` literally and stays on one line."""
    if isinstance(text, Trusted):
        return text.replace("|", "\\|").replace("\n", " ")
    shown = visible_controls(_LINE_BREAKS.sub(" ", cut_text(str(text), limit)))
    shown = _MARKDOWN.sub(r"\\\1", shown)
    return shown.replace("<", "&lt;")  # raw HTML is allowed in Markdown: no tag may open


def html(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """Text for an HTML element or attribute value."""
    return _html.escape(visible_controls(cut_text(str(text), limit)), quote=True)
