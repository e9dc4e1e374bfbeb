"""Figures of the post-incident review: run trends, the verdict grid, a captured trace's timeline.

Runs sit on the x axis in time order, one tick per run, so a run of a week
ago and one of an hour ago are one step apart: the review reads order, not
distance. A run that lacks a figure another run has is a labelled gap,
never a silent hole or a crash.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from gp_lib import protocol
from gp_lib.history import TRENDS
from gp_lib.plots import empty_note

ARM_STYLES = {"live": "-", "fixed": "-", "faulty": "--"}
ARM_MARKERS = {"live": "o", "fixed": "^", "faulty": "v"}
VERDICT_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "error": "#6a1b9a", "absent": "#e0e0e0"}
GAP_COLOUR = "#9e9e9e"
SHARES = ("rate_1011", "event_completeness")


def trends_figure(trends: pd.DataFrame) -> plt.Figure:
    """One panel per trend (1011 rate, connect p95, readiness p95, event completeness) over the runs.

    A line per scenario and arm (dashed: the faulty arm of a reference run). An
    x on the axis, in the line's colour, marks a run where its figure is missing; the
    lines that never report a figure are named under its panel.
    """
    runs = list(dict.fromkeys(trends["run_id"]))
    position = {run: i for i, run in enumerate(runs)}
    series = list(dict.fromkeys(zip(trends["scenario"], trends["arm"])))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(dict.fromkeys(s for s, _ in series))}
    fig, grid = plt.subplots(2, 2, figsize=(13, 9), squeeze=False, layout="constrained")
    legend: dict[str, Line2D] = {}
    for ax, trend in zip(grid.flat, TRENDS):
        rows = trends[trends["trend"] == trend.name]
        ax.set_title(trend.title)
        ax.set_ylabel(trend.unit)
        ax.grid(alpha=0.3)
        never, drawn = [], 0
        for scenario, arm in series:
            line = rows[(rows["scenario"] == scenario) & (rows["arm"] == arm)]
            if line["value"].notna().sum() == 0:
                if len(line):
                    never.append(f"{scenario} ({arm})")
                continue
            drawn += 1
            x = [position[r] for r in line["run_id"]]
            label = f"{scenario} ({arm})"
            legend[label], = ax.plot(x, line["value"], ARM_STYLES.get(arm, ":"), marker=ARM_MARKERS.get(arm, "o"),
                                     color=colours[scenario], label=label)
            missing = [position[r] for r, v in zip(line["run_id"], line["value"]) if pd.isna(v)]
            if missing:
                ax.plot(missing, [0] * len(missing), "x", color=colours[scenario], markersize=10, markeredgewidth=2,
                        clip_on=False, transform=ax.get_xaxis_transform())
                legend["missing"] = Line2D([], [], marker="x", linestyle="", color=GAP_COLOUR, markersize=10,
                                           markeredgewidth=2, label="x on the axis: figure missing in that run")
        if trend.name in SHARES:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(-0.5, max(len(runs) - 0.5, 0.5))
        ax.set_xticks(range(len(runs)), runs, rotation=20, ha="right", fontsize=8)
        if not drawn:
            empty_note(ax, "no run reports this figure")
        if never:
            ax.set_xlabel("not reported by: " + ", ".join(never), fontsize=7, color="#666666", wrap=True)
    if legend:
        fig.legend(handles=list(legend.values()), loc="outside lower center", ncol=min(len(legend), 4), fontsize=8,
                   frameon=False)
    fig.suptitle(f"Trends over {len(runs)} run{'s' if len(runs) != 1 else ''} (oldest left)")
    return fig


def verdicts_figure(verdicts: pd.DataFrame) -> plt.Figure:
    """Verdict per scenario (rows) and run (columns): a coloured cell, its verdict written in it."""
    scenarios, runs = list(verdicts.index), list(verdicts.columns)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(runs) + 3), max(2.5, 0.6 * len(scenarios) + 1.5)))
    ax.set_title("Verdict per scenario and run (oldest left)")
    if not scenarios or not runs:
        empty_note(ax, "no runs")
        ax.set_axis_off()
        return fig
    for row, scenario in enumerate(scenarios):
        for column, run in enumerate(runs):
            verdict = str(verdicts.loc[scenario, run])
            ax.add_patch(plt.Rectangle((column - 0.45, row - 0.4), 0.9, 0.8,
                                       color=VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["absent"])))
            ax.text(column, row, verdict, ha="center", va="center", fontsize=9,
                    color="black" if verdict == "absent" else "white")
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.set_ylim(len(scenarios) - 0.5, -0.5)
    ax.set_xticks(range(len(runs)), runs, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(scenarios)), scenarios)
    ax.set_xlabel("run")
    ax.legend(handles=[Patch(color=c, label=v) for v, c in VERDICT_COLOURS.items()], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    return fig


#: Colours of the frames on a trace timeline: the five events in order, then the rest.
FRAME_COLOURS = {"agent_started": "#1565c0", "agent_thinking": "#6a1b9a", "tool_executing": "#ef6c00",
                 "tool_completed": "#f9a825", "agent_completed": "#2e7d32", "ready": "#00838f",
                 "error": "#c62828", "other": "#9e9e9e"}
MAX_TIMELINE_ROWS = 40
#: Close marks by code: a normal end, the incident class, an auth or limit rejection, anything else.
CLOSE_COLOURS = {"close 1000 (normal)": "#9e9e9e", "close 1011 (internal error)": "#c62828",
                 "close 1008 (policy: auth or limit)": "#ef6c00", "close, other code": "#6a1b9a",
                 "close, code not recorded": "#000000"}


def trace_timeline(attempts: pd.DataFrame, frames: pd.DataFrame) -> plt.Figure:
    """A captured trace, one row per connection: every frame at its time, coloured by kind.

    Received frames are dots (the five agent events in their own colours,
    readiness, errors, the rest grey), sent frames are black triangles, and a
    close is an x in the colour of its code (1000 normal, 1011, 1008, others),
    counted per code in the legend. The legend counts each kind and always
    lists the five events, so one that never came reads "(0)". Beyond
    MAX_TIMELINE_ROWS connections an evenly spaced sample is drawn, and the
    title says so.
    """
    every = list(dict.fromkeys(attempts["attempt_id"])) if len(attempts) else []
    ids = timeline_sample(every)
    users = dict(zip(attempts["attempt_id"], attempts["user_id"])) if len(attempts) else {}
    codes = dict(zip(attempts["attempt_id"], pd.to_numeric(attempts["close_code"], errors="coerce"))) \
        if len(attempts) else {}
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.45 * len(ids) + 1.6)))
    ax.set_title("Captured trace: frames per connection over time"
                 + (f" (a sample: {len(ids)} of {len(every)} connections, evenly spaced)" if len(ids) < len(every)
                    else ""))
    ax.set_xlabel("time since the connection started (ms)")
    ax.grid(alpha=0.3, axis="x")
    shown = frames[frames["attempt_id"].isin(ids)] if len(frames) else frames
    if not ids or shown.empty:
        empty_note(ax, "no frames in this trace")
        return fig
    row = {attempt: i for i, attempt in enumerate(ids)}
    y = shown["attempt_id"].map(row)
    t = pd.to_numeric(shown["t_ms"], errors="coerce")
    kinds = [_kind(d, k) for d, k in zip(shown["direction"], shown["type"])]
    legend = {}
    for kind, colour in FRAME_COLOURS.items():
        picked = [k == kind for k in kinds]
        if any(picked) or kind in protocol.EVENT_NAMES:  # an event that never came is listed, counted 0
            legend[kind] = ax.scatter(t[picked], y[picked], s=40, color=colour, label=f"{kind} ({sum(picked)})",
                                      zorder=3)
    sent = [k == "sent" for k in kinds]
    if any(sent):
        legend["sent"] = ax.scatter(t[sent], y[sent], s=50, marker=">", color="black", label="sent by the client",
                                    zorder=3)
    close_labels = [_close_label(codes.get(a)) if k == "close" else None for a, k in zip(shown["attempt_id"], kinds)]
    for label, colour in CLOSE_COLOURS.items():
        picked = [c == label for c in close_labels]
        if any(picked):
            legend[label] = ax.scatter(t[picked], y[picked], s=70, marker="x", color=colour,
                                       label=f"{label} ({sum(picked)})", zorder=4)
    ax.set_yticks(range(len(ids)), [f"{a} ({users.get(a) or 'user unknown'})" for a in ids], fontsize=8)
    ax.set_ylim(len(ids) - 0.5, -0.5)
    ax.legend(handles=list(legend.values()), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    fig.tight_layout()
    return fig


def timeline_sample(ids: list[str], limit: int = MAX_TIMELINE_ROWS) -> list[str]:
    """`ids`, or an evenly spaced sample of `limit` of them (first and last kept), in order."""
    if len(ids) <= limit:
        return list(ids)
    step = (len(ids) - 1) / (limit - 1)
    return [ids[round(k * step)] for k in range(limit)]


def _close_label(code: float | None) -> str:
    if code is None or pd.isna(code):
        return "close, code not recorded"
    code = int(code)
    return {1000: "close 1000 (normal)", 1011: "close 1011 (internal error)",
            1008: "close 1008 (policy: auth or limit)"}.get(code, "close, other code")


def _kind(direction: str, kind: str | None) -> str:
    """Which colour group a frames row belongs to."""
    if direction == "sent":
        return "sent"
    if direction == "mark":
        return {"close": "close", "ready": "skip", "open": "skip", "error": "error"}.get(kind or "", "skip")
    if kind in FRAME_COLOURS:
        return kind
    if kind in protocol.READY_TYPES:
        return "ready"
    if kind in protocol.ERROR_TYPES or kind == protocol.AGENT_ERROR:
        return "error"
    return "other"
