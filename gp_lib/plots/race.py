"""Figures of the race-conditions scenario: how early sends and concurrency lead to 1011.

Each function takes a ScenarioResult and returns a Figure with one axes per
arm (fault injected and fixed side by side in reference mode).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gp_lib.plots import OUTCOME_COLOURS, arm_axes, arms_of, empty_note
from gp_lib.protocol import CLOSE_CODES, INTERNAL_ERROR
from gp_lib.scenarios.race_conditions import PHASES, labelled, rate_by_delay

WAIT_READY_COLOUR = "#1565c0"
#: Marker of each lifecycle moment on the timeline.
MOMENTS = (("t_open_ms", "|", "upgrade"), ("t_ready_ms", "o", "readiness"),
           ("t_first_send_ms", ">", "first send"), ("t_close_ms", "x", "close"))


def _level_colours(levels: list[int]) -> dict[int, Any]:
    """A colour per concurrency level, light to dark as concurrency grows."""
    cmap = plt.get_cmap("Reds")
    steps = np.linspace(0.45, 0.95, max(len(levels), 1))
    return {level: cmap(step) for level, step in zip(levels, steps)}


def _legend_below(ax: Any) -> None:
    """A legend under the axes, where it hides no data."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _with_concurrency(attempts: pd.DataFrame) -> pd.DataFrame:
    """The attempts opened in batches of several concurrency levels: storm and sweep."""
    attempts = labelled(attempts)
    return attempts[attempts["phase"].isin(("storm", "sweep"))]


def rate_1011_by_delay(result: Any) -> plt.Figure:
    """1011 rate against first-send delay: a line per concurrency level, and the readiness-waiting line."""
    arms = arms_of(result)
    fig, axes = arm_axes(arms, "Race-window sweep: share of connections closed 1011 by first-send delay",
                         width=6.5, height=4.2)
    for arm in arms:
        ax = axes[arm]
        table = rate_by_delay(result.observations[arm].attempts)
        if table.empty:
            empty_note(ax, "no sweep attempts")
            continue
        early = table[table["condition"] == "send_at_delay"]
        levels = sorted(int(c) for c in early["concurrency"].unique())
        colours = _level_colours(levels)
        for size, level in zip(range(11, 0, -3), levels):  # shrinking markers keep overlapping lines visible
            line = early[early["concurrency"] == level].sort_values("send_delay_ms")
            ax.plot(line["send_delay_ms"], 100 * line["rate_1011"], marker="o", markersize=max(size, 4),
                    color=colours[level], label=f"sent at delay, {level} concurrent (n={int(line['attempts'].sum())})")
        waited = table[table["condition"] == "wait_ready"]
        if len(waited):
            pooled = waited.groupby("send_delay_ms")[["attempts", "closed_1011"]].sum().reset_index()
            ax.plot(pooled["send_delay_ms"], 100 * pooled["closed_1011"] / pooled["attempts"], marker="s",
                    linestyle="--", color=WAIT_READY_COLOUR,
                    label=f"waited for readiness, all levels (n={int(pooled['attempts'].sum())})")
        ax.set_xscale("symlog", linthresh=1.0)
        delays = sorted(table["send_delay_ms"].unique())
        ax.set_xticks(delays)
        ax.set_xticklabels([f"{d:g}" for d in delays])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("first send after the upgrade (ms, symlog scale)")
        ax.set_ylabel("connections closed 1011 (%)")
        _legend_below(ax)
    fig.tight_layout()
    return fig


def handshake_ecdf(result: Any) -> plt.Figure:
    """ECDF of upgrade and readiness times, a colour per concurrency level (storm and sweep attempts)."""
    arms = arms_of(result)
    fig, axes = arm_axes(arms, "Upgrade (solid) and readiness (dashed) times by concurrency", width=6.5, height=4.2)
    for arm in arms:
        ax = axes[arm]
        attempts = _with_concurrency(result.observations[arm].attempts)
        if attempts["t_open_ms"].isna().all():
            empty_note(ax, "no storm or sweep attempt upgraded")
            continue
        levels = sorted(int(c) for c in attempts["concurrency"].unique())
        colours = _level_colours(levels)
        for level in levels:
            rows = attempts[attempts["concurrency"] == level]
            for column, style, what in (("t_open_ms", "-", "upgrade"), ("t_ready_ms", "--", "readiness")):
                values = np.sort(pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy())
                if len(values):
                    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", linestyle=style,
                            color=colours[level], label=f"{what}, {level} concurrent (n={len(values)})")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("time since the connection attempt started (ms, log scale)")
        ax.set_ylabel("share at or below (of the n in the legend)")
        _legend_below(ax)
    fig.tight_layout()
    return fig


def attempt_timeline(result: Any, max_attempts: int = 120) -> plt.Figure:
    """One row per attempt: upgrade, readiness, first send and close, coloured by outcome.

    More than `max_attempts` per arm are thinned to an evenly spaced sample,
    which the title says.
    """
    arms = arms_of(result)
    samples = {arm: _sample(_ordered(result.observations[arm].attempts), max_attempts) for arm in arms}
    sizes = {arm: len(result.observations[arm].attempts) for arm in arms}
    note = "" if all(len(samples[a]) == sizes[a] for a in arms) else \
        " (sample per group: " + ", ".join(f"{len(samples[a])} of {sizes[a]} {a}" for a in arms) + ")"
    fig, axes = arm_axes(arms, "Attempt timelines" + note, width=6.5, height=7.0, sharey=False)
    outcomes_seen: set[str] = set()
    for arm in arms:
        ax = axes[arm]
        rows = samples[arm]
        if rows.empty:
            empty_note(ax, "no attempts")
            continue
        rows, groups = _stack(rows)
        for outcome, group in rows.groupby("outcome", sort=False):
            colour = OUTCOME_COLOURS.get(outcome, "#000000")
            outcomes_seen.add(outcome)
            ends = group["t_close_ms"].fillna(group["t_open_ms"])
            spans = group[ends.notna()]
            ax.hlines(spans["y"], 0, ends.dropna(), color=colour, linewidth=1.2, alpha=0.6)
            for column, marker, _ in MOMENTS:
                ax.plot(group[column], group["y"], marker=marker, color=colour, markersize=4, linestyle="none",
                        markerfacecolor="none" if marker == "o" else colour)
        for _, top, _ in groups[1:]:
            ax.axhline(top - 0.75, color="#999999", linewidth=0.6)
        ax.set_yticks([(top + bottom) / 2 for _, top, bottom in groups])
        ax.set_yticklabels([label for label, _, _ in groups], fontsize=8)
        ax.set_ylim(groups[-1][2] + 1, -1)
        ax.set_xlabel("time since the connection attempt started (ms)")
        ax.set_ylabel("attempts, grouped by condition × concurrency")
    handles = [Line2D([], [], marker=m, color="#333333", linestyle="none", markerfacecolor="none" if m == "o" else
                      "#333333", label=label) for _, m, label in MOMENTS]
    handles += [Patch(color=OUTCOME_COLOURS.get(o, "#000000"), label=o) for o in sorted(outcomes_seen)]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _stack(rows: pd.DataFrame, slots: int = 4) -> tuple[pd.DataFrame, list[tuple[str, float, float]]]:
    """Rows with a `y` position, each condition × concurrency group given at least `slots` rows of
    height so that its label fits; and the groups as `(label, first y, last y)`."""
    parts, groups, cursor = [], [], 0.0
    for (condition, concurrency), group in rows.groupby(["condition", "concurrency"], sort=False):
        height = max(len(group), slots)
        spacing = height / len(group)
        parts.append(group.assign(y=cursor + spacing * np.arange(len(group)) + (spacing - 1) / 2))
        groups.append((f"{condition} ×{int(concurrency)}", cursor, cursor + height - 1))
        cursor += height + 0.5
    return pd.concat(parts), groups


def _sample(rows: pd.DataFrame, limit: int, floor: int = 4) -> pd.DataFrame:
    """About `limit` rows, evenly spaced within each condition × concurrency group, at least `floor` per group."""
    if len(rows) <= limit:
        return rows.reset_index(drop=True)
    parts = []
    for _, group in rows.groupby(["condition", "concurrency"], sort=False):
        keep = min(len(group), max(floor, round(limit * len(group) / len(rows))))
        parts.append(group.iloc[np.linspace(0, len(group) - 1, keep).round().astype(int)])
    return pd.concat(parts).reset_index(drop=True)


def _ordered(attempts: pd.DataFrame) -> pd.DataFrame:
    """Attempts sorted by phase, concurrency, condition and send delay: groups read top to bottom."""
    attempts = labelled(attempts)
    order = {phase: n for n, phase in enumerate(PHASES)}
    keyed = attempts.assign(_phase=attempts["phase"].map(order))
    return keyed.sort_values(["_phase", "concurrency", "condition", "send_delay_ms"], kind="stable").drop(
        columns="_phase")


def close_codes(result: Any) -> plt.Figure:
    """How each connection ended: close code (and who closed) counted; 1011 in red."""
    arms = arms_of(result)
    fig, axes = arm_axes(arms, "Close codes", width=6.0, height=4.0, sharey=False)
    for arm in arms:
        ax = axes[arm]
        attempts = result.observations[arm].attempts
        if attempts.empty:
            empty_note(ax, "no attempts")
            continue
        labels = [_close_label(code, by) for code, by in zip(attempts["close_code"], attempts["closed_by"])]
        counts = pd.Series(labels).value_counts().sort_index()
        colours = ["#c62828" if label.startswith(str(INTERNAL_ERROR)) else
                   "#2e7d32" if label.startswith("1000") else "#78909c" for label in counts.index]
        bars = ax.barh(counts.index, counts.to_numpy(), color=colours)
        ax.bar_label(bars, padding=2, fontsize=8)
        ax.set_xlabel("connections")
        ax.set_xlim(0, counts.max() * 1.15)
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def _close_label(code: Any, closed_by: Any) -> str:
    if pd.isna(code):
        return "never opened"
    code = int(code)
    by = f", by {closed_by}" if isinstance(closed_by, str) else ""
    return f"{code} {CLOSE_CODES.get(code, 'other')}{by}"
