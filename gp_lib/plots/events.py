"""Figures of the missing-events scenario: what each run showed, in what order, and on whose socket.

- `event_timeline`: swimlanes, a row per run, a marker per event at its receive time;
- `completeness_heatmap`: requested run by event type, missing cells in red;
- `event_latency`: time between consecutive events, per transition;
- `delivery_matrix`: whose socket received whose events; off-diagonal cells are leaks.

Each takes a ScenarioResult and returns a Figure, one panel per arm.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gp_lib import events
from gp_lib.plots import ARM_TITLES, arms_of, empty_note
from gp_lib.protocol import AGENT_ERROR, EVENT_NAMES

#: One colour and marker per event type, shared by every figure here.
EVENT_STYLES = {
    "agent_started": ("#1565c0", "o"),
    "agent_thinking": ("#757575", "s"),
    "tool_executing": ("#ef6c00", "^"),
    "tool_completed": ("#2e7d32", "v"),
    "agent_completed": ("#4a148c", "D"),
    AGENT_ERROR: ("#c62828", "X"),
}
LEAK_COLOUR = "#c62828"
MAX_ROWS = 40


def _panels(arms: list[str], title: str, width: float, height: float, *, sharex: bool = False,
            sharey: bool = False) -> tuple[Any, dict[str, Any]]:
    """One axes per arm, side by side; by default each with its own axes scales (the runs differ by arm)."""
    fig, axes = plt.subplots(1, len(arms), figsize=(width * len(arms), height), squeeze=False, sharex=sharex,
                             sharey=sharey)
    by_arm = {}
    for ax, arm in zip(axes[0], arms):
        ax.set_title(ARM_TITLES.get(arm, arm))
        by_arm[arm] = ax
    fig.suptitle(title)
    return fig, by_arm


def _run_label(row: Any, index: int) -> str:
    user = row.socket_user or "?"
    if row.foreign:
        return f"{user} <- {row.owner}'s run"
    return f"{user} #{index}"


# -- swimlanes --------------------------------------------------------------------------------

def event_timeline(result: Any) -> Any:
    """A row per run (own and other users' runs, per socket), a marker per event at ms since the run's first."""
    arms = arms_of(result)
    lanes = {arm: _lanes(result.observations[arm]) for arm in arms}
    rows = max([min(len(runs), MAX_ROWS) for runs, _ in lanes.values()] + [4])
    fig, axes = _panels(arms, "Agent events per run, by receive time", 7.0, 1.6 + 0.3 * rows, sharex=True)
    for arm, ax in axes.items():
        runs, received = lanes[arm]
        if runs.empty:
            empty_note(ax, "no agent run was requested")
            continue
        shown = runs.head(MAX_ROWS)
        rows_events = []  # each run's events with its row, drawn in one call per event type: fast with many runs
        for y, row in enumerate(shown.itertuples()):
            own = received[(received["attempt_id"] == row.attempt_id) & (received["run_key"] == row.run_key)]
            if not len(own):
                ax.text(0, y, "  no event arrived", va="center", fontsize=8, color=LEAK_COLOUR)
                continue
            rows_events.append(own.assign(x=own["t_ms"] - own["t_ms"].min(), y=y))
        points = pd.concat(rows_events, ignore_index=True) if rows_events else pd.DataFrame(columns=["x", "y", "type"])
        spans = points.groupby("y")["x"].agg(["min", "max"])
        ax.hlines(spans.index, spans["min"], spans["max"], color="#bdbdbd", lw=0.8, zorder=1)
        for kind, (colour, marker) in EVENT_STYLES.items():
            sel = points[points["type"] == kind]
            ax.scatter(sel["x"], sel["y"], color=colour, marker=marker, s=36, zorder=2)
        labels = [_run_label(row, n) for n, row in _numbered(shown)]
        ax.set_yticks(range(len(shown)), labels, fontsize=7)
        for tick, foreign in zip(ax.get_yticklabels(), shown["foreign"]):
            if foreign:
                tick.set_color(LEAK_COLOUR)
        ax.set_ylim(len(shown) - 0.5, -0.5)
        ax.set_xlabel("ms since the run's first event arrived")
        ax.grid(axis="x", alpha=0.3)
        if len(runs) > MAX_ROWS:
            ax.text(1, 1.01, f"first {MAX_ROWS} of {len(runs)} runs", transform=ax.transAxes, ha="right", fontsize=8)
    handles = [Line2D([], [], color=c, marker=m, ls="", label=k) for k, (c, m) in EVENT_STYLES.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def _lanes(observation: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the swimlanes: the requested runs (with those that showed nothing), then other users' runs."""
    received = events.run_events(observation.frames, observation.attempts)
    table = events.run_table(observation.frames, observation.attempts)
    requested = observation.tables.get("runs", pd.DataFrame(columns=events.RUN_COLUMNS))
    foreign = table[table["foreign"].astype(bool)]
    runs = pd.concat([t for t in (requested, foreign) if len(t)], ignore_index=True) if len(requested) + len(foreign) \
        else pd.DataFrame(columns=events.RUN_COLUMNS)
    return runs.reset_index(drop=True), received


def _numbered(runs: pd.DataFrame) -> list[tuple[int, Any]]:
    """Each run with its number among its socket user's runs (1, 2, ...)."""
    seen: dict[str, int] = {}
    numbered = []
    for row in runs.itertuples():
        seen[row.socket_user] = seen.get(row.socket_user, 0) + 1
        numbered.append((seen[row.socket_user], row))
    return numbered


# -- completeness -----------------------------------------------------------------------------

def completeness_heatmap(result: Any) -> Any:
    """Requested run by event type: how many of each arrived; a missing event is a red cell."""
    arms = arms_of(result)
    tables = {arm: result.observations[arm].tables.get("runs", pd.DataFrame()) for arm in arms}
    rows = max([min(len(t), MAX_ROWS) for t in tables.values()] + [4])
    fig, axes = _panels(arms, "Which of the five events each requested run showed", 6.0, 2.2 + 0.28 * rows)
    cmap = ListedColormap(["#ef9a9a", "#a5d6a7", "#43a047"])
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 99], cmap.N)
    for arm, ax in axes.items():
        runs = tables[arm].head(MAX_ROWS)
        if runs.empty:
            empty_note(ax, "no agent run was requested")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        counts = runs[list(EVENT_NAMES)].astype(int).to_numpy()
        ax.imshow(counts, cmap=cmap, norm=norm, aspect="auto")
        for (y, x), n in np.ndenumerate(counts):
            ax.text(x, y, "missing" if n == 0 else str(n), ha="center", va="center", fontsize=7,
                    color="#7f0000" if n == 0 else "black", fontweight="bold" if n == 0 else "normal")
        ax.set_xticks(range(len(EVENT_NAMES)), [n.replace("_", "\n") for n in EVENT_NAMES], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(runs)), [f"{row.condition}: {_run_label(row, n)}" for n, row in _numbered(runs)],
                      fontsize=7)
        ax.set_xlabel("event type (cell: how many arrived)")
        complete = int(runs["complete"].astype(bool).sum())
        ax.set_title(f"{ARM_TITLES.get(arm, arm)}: {complete} of {len(tables[arm])} runs complete", fontsize=10)
    handles = [Patch(color="#ef9a9a", label="missing"), Patch(color="#a5d6a7", label="1"),
               Patch(color="#43a047", label="2 or more")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return fig


# -- latency ---------------------------------------------------------------------------------

def event_latency(result: Any) -> Any:
    """Time between consecutive events of the requesting user's runs, per transition (box and points)."""
    arms = arms_of(result)
    fig, axes = _panels(arms, "Time between consecutive events of a run", 6.5, 4.5, sharey=True)
    for arm, ax in axes.items():
        observation = result.observations[arm]
        gaps = events.transitions(observation.frames, observation.attempts)
        gaps = gaps[~gaps["foreign"].astype(bool)].dropna(subset=["gap_ms"])
        if gaps.empty:
            empty_note(ax, "no run showed two consecutive events on its own socket")
            ax.set_xticks([])
            continue
        order = _transition_order(gaps)
        data = [gaps.loc[gaps["transition"] == t, "gap_ms"].to_numpy() for t in order]
        ax.boxplot(data, positions=range(len(order)), widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0)
        for x, values in enumerate(data):
            ax.scatter(x + jitter.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6,
                       color=EVENT_STYLES.get(order[x].split(" > ")[1], ("#333333", "o"))[0], zorder=3)
        ax.set_xticks(range(len(order)), [t.replace(" > ", "\n> ") for t in order], fontsize=7)
        ax.set_ylabel("ms between the two events (receive time)")
        ax.set_xlabel("transition (from > to)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _transition_order(gaps: pd.DataFrame) -> list[str]:
    """Transitions in protocol order of their first event, then of their second."""
    rank = {name: n for n, name in enumerate((*EVENT_NAMES, AGENT_ERROR))}
    pairs = gaps[["transition", "from_type", "to_type"]].drop_duplicates("transition")
    key = pairs.apply(lambda r: (rank.get(r["from_type"], 9), rank.get(r["to_type"], 9)), axis=1)
    return list(pairs.assign(key=key).sort_values("key")["transition"])


# -- delivery -----------------------------------------------------------------------------

def delivery_matrix(result: Any) -> Any:
    """Whose socket received whose events: rows are receiving sockets' users, columns the events' user_id."""
    arms = arms_of(result)
    matrices = {arm: events.delivery_matrix(result.observations[arm].frames, result.observations[arm].attempts)
                for arm in arms}
    size = max([max(m.shape) for m in matrices.values()] + [3])
    fig, axes = _panels(arms, "Agent events delivered: receiving socket by event owner", 2.0 + 0.9 * size,
                        2.6 + 0.75 * size)
    for arm, ax in axes.items():
        matrix = matrices[arm]
        if matrix.empty or not matrix.to_numpy().sum():
            empty_note(ax, "no agent event arrived")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        counts = matrix.to_numpy()
        leak = np.array([[r != c and events.NO_USER not in (r, c) for c in matrix.columns] for r in matrix.index]) \
            & (counts > 0)
        colours = np.ones(counts.shape + (3,))
        colours[(counts > 0) & ~leak] = (0.78, 0.90, 0.79)
        colours[leak] = (0.94, 0.60, 0.60)
        ax.imshow(colours, aspect="auto")
        for (y, x), n in np.ndenumerate(counts):
            ax.text(x, y, str(n), ha="center", va="center", fontsize=9,
                    color="#7f0000" if leak[y, x] else ("black" if n else "#9e9e9e"),
                    fontweight="bold" if leak[y, x] else "normal")
        ax.set_xticks(range(counts.shape[1]), list(matrix.columns), rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(counts.shape[0]), list(matrix.index), fontsize=8)
        ax.set_xticks(np.arange(counts.shape[1] + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(counts.shape[0] + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=2)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("event's user_id (whose run it was)")
        ax.set_ylabel("receiving socket's user")
        leaked = int(counts[leak].sum())
        ax.set_title(f"{ARM_TITLES.get(arm, arm)}: {leaked} of {int(counts.sum())} events on another user's socket",
                     fontsize=10, color=LEAK_COLOUR if leaked else "black")
    handles = [Patch(color=(0.78, 0.90, 0.79), label="own events"),
               Patch(color=(0.94, 0.60, 0.60), label="another user's events (cross-user leak)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
