"""Figures of the service-dependencies scenario: what each request ended in, and how long answers took.

Both read the attempts table's request columns (see
`gp_lib.scenarios.service_dependencies`); the table of messages users saw is
shown as Markdown by the notebook, not drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from gp_lib.plots import OUTCOME_COLOURS, arm_axes, arms_of, empty_note
from gp_lib.scenarios.service_dependencies import NOT_SENT, REQUEST_OUTCOMES, requests_of

#: Request outcomes in the shared palette: complete like ok, crashed like a 1011, silent like a timeout.
REQUEST_OUTCOME_COLOURS = {
    "complete": OUTCOME_COLOURS["ok"],
    "graceful": "#1565c0",
    "silent": OUTCOME_COLOURS["ready_timeout"],
    "crashed": OUTCOME_COLOURS["closed_1011"],
    "unfriendly_error": OUTCOME_COLOURS["closed_other"],
    NOT_SENT: OUTCOME_COLOURS["refused"],
}
_NO_MESSAGE_COLOUR = "#616161"
#: Times are drawn on a log axis; nothing is drawn left of this.
_FLOOR_MS = 0.01
#: Height of the two-row legend under the timing figure, inches.
_LEGEND_IN = 0.6


def _conditions(result: Any) -> list[str]:
    """Every condition of the result, in the order the traffic ran them."""
    seen: dict[str, None] = {}
    for observation in result.observations.values():
        if len(observation.attempts) and "condition" in observation.attempts:
            seen.update(dict.fromkeys(observation.attempts["condition"]))
    return list(seen)


def outcome_matrix(result: Any) -> Any:
    """Condition by request outcome, one panel per arm: the count in each cell, shaded by its share of the row."""
    arms = arms_of(result)
    conditions = _conditions(result)
    outcomes = list(REQUEST_OUTCOMES)
    if any("request_outcome" in o.attempts and (o.attempts["request_outcome"] == NOT_SENT).any()
           for o in result.observations.values()):
        outcomes.append(NOT_SENT)
    fig, axes = arm_axes(arms, "Request outcome by condition (number of requests)",
                         width=6.5, height=1.6 + 0.45 * max(len(conditions), 3))
    for arm, ax in axes.items():
        ax.grid(False)
        attempts = result.observations[arm].attempts
        if not len(attempts) or "request_outcome" not in attempts:
            _empty(ax, "no requests")
            continue
        counts = pd.crosstab(attempts["condition"], attempts["request_outcome"]).reindex(
            index=conditions, columns=outcomes, fill_value=0)
        for i, condition in enumerate(conditions):
            total = counts.loc[condition].sum()
            for j, outcome in enumerate(outcomes):
                count = int(counts.loc[condition, outcome])
                share = count / total if total else 0.0
                if count:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=REQUEST_OUTCOME_COLOURS[outcome],
                                           alpha=0.25 + 0.75 * share, edgecolor="white"))
                ax.text(j, i, str(count), ha="center", va="center", fontsize=10,
                        color="white" if share > 0.5 else ("#222222" if count else "#bbbbbb"))
        ax.set_xlim(-0.5, len(outcomes) - 0.5)
        ax.set_ylim(len(conditions) - 0.5, -0.5)
        ax.set_xticks(range(len(outcomes)), [o.replace("_", "\n") for o in outcomes])
        ax.set_yticks(range(len(conditions)), conditions)
        ax.set_xlabel("request outcome")
        ax.set_ylabel("condition")
    fig.tight_layout()
    return fig


def message_timings(result: Any) -> Any:
    """Time from sending each request to its first and last message, per condition, coloured by outcome.

    A cross marks where the server closed the connection; a dotted line, a silent wait up to the
    deadline (the dashed line).
    """
    arms = arms_of(result)
    conditions = _conditions(result)
    deadline_ms = float(result.params.get("receive_timeout_s") or 0) * 1000.0
    height = 2.2 + 0.45 * max(len(conditions), 3)
    fig, axes = arm_axes(arms, "Time from request to first and last message, per condition",
                         width=6.5, height=height)
    for arm, ax in axes.items():
        rows = requests_of(result.observations[arm].attempts)
        if not len(rows):
            _empty(ax, "no requests sent")
            continue
        ax.set_xscale("log")
        for i, condition in enumerate(conditions):
            group = rows[rows["condition"] == condition]
            offsets = np.linspace(-0.25, 0.25, len(group)) if len(group) > 1 else [0.0]
            for offset, (_, row) in zip(offsets, group.iterrows()):
                _draw_request(ax, i + offset, row, deadline_ms)
        if deadline_ms:
            ax.axvline(deadline_ms, color="#444444", linestyle="--", linewidth=1)
        ax.set_ylim(len(conditions) - 0.5, -0.5)
        ax.set_yticks(range(len(conditions)), conditions)
        ax.set_xlabel("ms after the request was sent (log scale)")
        ax.set_ylabel("condition")
    handles = [Line2D([], [], marker="o", color="#555555", linestyle="none", label="first message"),
               Line2D([], [], marker=">", color="#555555", linestyle="none", label="last message"),
               Line2D([], [], marker="X", color="#555555", linestyle="none", label="server closed"),
               Line2D([], [], color="#555555", linestyle=":", label="waited, nothing came"),
               Line2D([], [], color="#444444", linestyle="--",
                      label=f"silence deadline ({deadline_ms / 1000:g} s)")]
    handles += [Patch(color=REQUEST_OUTCOME_COLOURS[o], label=o.replace("_", " ")) for o in REQUEST_OUTCOMES]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, _LEGEND_IN / height, 1, 1))
    return fig


def _empty(ax: Any, text: str) -> None:
    empty_note(ax, text)
    ax.tick_params(bottom=False, labelbottom=False, left=False, labelleft=False)


def _draw_request(ax: Any, y: float, row: pd.Series, deadline_ms: float) -> None:
    """One request: a segment from its first to its last message, how it ended, and silence up to the deadline."""
    colour = REQUEST_OUTCOME_COLOURS.get(row["request_outcome"], _NO_MESSAGE_COLOUR)
    first, last, closed = (row.get(name) for name in ("first_message_ms", "last_message_ms", "closed_ms"))
    if not pd.isna(first):
        first, last = max(float(first), _FLOOR_MS), max(float(last), _FLOOR_MS)
        ax.plot([first, last], [y, y], color=colour, linewidth=1.2, alpha=0.7)
        ax.plot(first, y, marker="o", color=colour, markersize=5, linestyle="none")
        ax.plot(last, y, marker=">", color=colour, markersize=6, linestyle="none")
    if closed is not None and not pd.isna(closed):
        ax.plot(max(float(closed), _FLOOR_MS), y, marker="X", color=colour, markersize=8, linestyle="none")
    elif row["request_outcome"] == "silent" and deadline_ms:
        start = _FLOOR_MS if pd.isna(last) else last
        ax.plot([start, deadline_ms], [y, y], color=colour, linewidth=1.2, linestyle=":")
