"""Figures of the factory initialization scenario: startup timeline, close reasons, time to readiness.

Each takes a ScenarioResult and returns a Figure with one axes per arm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from gp_lib.plots import OUTCOME_COLOURS, arm_axes, arms_of, empty_note
from gp_lib.scenarios import factory_initialization as fi

PHASE_LABELS = {
    fi.FAULTY_START: "process started\nwith faulty config",
    fi.RESTARTED: "process restarted\nwith the arm's config",
    fi.FIRST_CONNECT: "first connection",
    fi.RECONNECT: "reconnect",
}
GROUPS = {fi.HEALTH: "health checks", fi.SEND_AT_ONCE: "fresh connections", fi.SEND_AFTER_READY: "fresh connections",
          fi.FAULTY_START: "start with faulty config", fi.RESTARTED: "restart / reconnect",
          fi.FIRST_CONNECT: "restart / reconnect", fi.RECONNECT: "restart / reconnect"}
#: The deliberate start with the faulty configuration: drawn, but counted by no check, metric or diagnosis.
CONTROL = "start with faulty config"
GROUP_COLOURS = {"health checks": "#1565c0", "fresh connections": "#8e24aa", "start with faulty config": "#cfd8dc",
                 "restart / reconnect": "#607d8b"}
CONDITION_STYLES = {fi.SEND_AT_ONCE: ("#e65100", "sent at once"),
                    fi.SEND_AFTER_READY: ("#1565c0", "waited for readiness")}


def startup_timeline(result: Any) -> Any:
    """Each recovery attempt at its start, seconds after its process started (or the reconnect), by outcome."""
    arms = arms_of(result)
    title = ("Startup timeline: connection attempts from the moment the process starts" if result.mode == "reference"
             else "Reconnect timeline: connection attempts from the first connection and from the reconnect")
    fig, axes = arm_axes(arms, title, width=6.5, height=4.2)
    deadline_s = float(result.params.get("recovery_deadline_s") or 0)
    for arm in arms:
        ax = axes[arm]
        rows = _conditions(result.observations[arm].attempts, [*PHASE_LABELS])
        if not len(rows):
            empty_note(ax, "no restart or reconnect attempts")
            continue
        phases = [p for p in PHASE_LABELS if (rows["condition"] == p).any()]
        listening = _listening_s(result.observations[arm].tables.get("processes"))
        for y, phase in enumerate(phases):
            part = rows[rows["condition"] == phase]
            start_s = pd.to_numeric(part["t_since_start_ms"], errors="coerce") / 1000
            for outcome, group in part.groupby("outcome"):
                ax.scatter(start_s[group.index], [y] * len(group), s=36, color=OUTCOME_COLOURS.get(outcome, "#000"),
                           edgecolor="white", linewidth=0.5, zorder=3)
            ready = part[part["t_ready_ms"].notna()]
            if len(ready):
                first = ready.iloc[0]
                at_s = (float(first["t_since_start_ms"]) + float(first["t_ready_ms"])) / 1000
                ax.scatter([at_s], [y], marker="*", s=220, color=OUTCOME_COLOURS["ok"], edgecolor="black",
                           linewidth=0.6, zorder=4)
                ax.annotate(f"ready at {at_s:.2f} s", (at_s, y), xytext=(8, 8), textcoords="offset points",
                            fontsize=8)
            elif phase in fi.RECOVERY:
                ax.annotate("no readiness by the deadline", (start_s.max(), y), xytext=(-10, 10),
                            textcoords="offset points", fontsize=8, ha="right", color=OUTCOME_COLOURS["closed_1011"])
            if phase in listening:
                ax.plot([listening[phase]] * 2, [y - 0.25, y + 0.25], color="black", linewidth=1.5)
        if deadline_s:
            ax.axvline(deadline_s, color="#555555", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(phases)), [PHASE_LABELS[p] for p in phases], fontsize=8)
        ax.set_ylim(len(phases) - 0.4, -0.6)
        ax.set_xlim(left=-0.05 * max(deadline_s, 0.1), right=max(deadline_s, 0.1) * 1.05)
        ax.set_xlabel("seconds since the process started" if result.mode == "reference"
                      else "seconds since the phase began (first connection, reconnect)")
        present = [o for o in OUTCOME_COLOURS if (rows["outcome"] == o).any()]
        handles = [Line2D([], [], marker="o", linestyle="", color=OUTCOME_COLOURS[o], label=o) for o in present]
        handles.append(Line2D([], [], marker="*", linestyle="", markersize=12, color=OUTCOME_COLOURS["ok"],
                              markeredgecolor="black", label="first readiness"))
        if listening:
            handles.append(Line2D([], [], color="black", marker="|", linestyle="", markersize=12,
                                  label="process listening"))
        if deadline_s:
            handles.append(Line2D([], [], color="#555555", linestyle="--", label=f"deadline ({deadline_s:g} s)"))
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.tight_layout()
    return fig


def close_reasons(result: Any) -> Any:
    """How every connection attempt ended (close code and reason), counted, stacked by traffic kind."""
    arms = arms_of(result)
    fig, axes = arm_axes(arms, "How connection attempts ended", width=6.5, height=3.8, sharey=False)
    for arm in arms:
        ax = axes[arm]
        attempts = result.observations[arm].attempts
        if not len(attempts):
            empty_note(ax, "no connection attempts")
            continue
        table = pd.DataFrame({"ending": attempts.apply(_ending, axis=1),
                              "group": attempts["condition"].map(GROUPS).fillna("other")})
        counts = table.groupby(["ending", "group"]).size().unstack(fill_value=0)
        counts = counts.loc[counts.sum(axis=1).sort_values().index]
        left = np.zeros(len(counts))
        control = counts[CONTROL].to_numpy() if CONTROL in counts.columns else np.zeros(len(counts))
        for group in [g for g in GROUP_COLOURS if g in counts.columns]:
            values = counts[group].to_numpy()
            label = f"{group} (a control: not counted)" if group == CONTROL else group
            ax.barh(counts.index, values, left=left, color=GROUP_COLOURS[group], label=label)
            left += values
        for y, (total, extra) in enumerate(zip(left, control)):  # the counts the report's text gives
            ax.text(total, y, f" {int(total - extra)}" + (f" (+{int(extra)} control)" if extra else ""),
                    va="center", fontsize=8)
        ax.set_xlim(right=max(left.max() * 1.15, 1))
        ax.set_xlabel("connection attempts")
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _ending(row: pd.Series) -> str:
    """One attempt's ending as a label: the server's close code and reason, or the outcome."""
    if row.get("closed_by") in ("server", "none") and pd.notna(row.get("close_code")):
        reason = row.get("close_reason")
        code = int(row["close_code"])
        return f"{code} {reason}" if isinstance(reason, str) and reason else str(code)
    if row.get("outcome") == "ok":
        return "ok (closed by the client)"
    return str(row.get("outcome"))


def time_to_ready(result: Any) -> Any:
    """ECDF of the fresh connections' time to readiness, by send timing, and of their closes before readiness."""
    arms = arms_of(result)
    fig, axes = arm_axes(arms, "Time to readiness of fresh connections (and to the close, when it came first)",
                         width=6.5, height=3.8)
    for arm in arms:
        ax = axes[arm]
        batch = _conditions(result.observations[arm].attempts, list(fi.BATCH))
        if not len(batch):
            empty_note(ax, "no fresh connections")
            continue
        for condition, (colour, label) in CONDITION_STYLES.items():
            part = batch[batch["condition"] == condition]
            if not len(part):
                continue
            ready = pd.to_numeric(part["t_ready_ms"], errors="coerce").dropna()
            closed = pd.to_numeric(part.loc[part["t_ready_ms"].isna() & part["t_open_ms"].notna(), "t_close_ms"],
                                   errors="coerce").dropna()
            _ecdf(ax, ready, len(part), colour, "-", f"{label}: ready ({len(ready)} of {len(part)})")
            _ecdf(ax, closed, len(part), colour, "--",
                  f"{label}: closed before readiness ({len(closed)} of {len(part)})")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("ms since the connection attempt began")
        ax.set_ylabel("share of fresh connections")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _ecdf(ax: Any, values: pd.Series, total: int, colour: str, style: str, label: str) -> None:
    """A step ECDF scaled to `total`, so a curve ends at the share it stands for."""
    if not len(values):
        ax.plot([], [], color=colour, linestyle=style, label=label)
        return
    xs = np.sort(values.to_numpy(dtype=float))
    ys = np.arange(1, len(xs) + 1) / total
    ax.step(np.concatenate([[0.0], xs]), np.concatenate([[0.0], ys]), where="post", color=colour, linestyle=style,
            label=label)


def _listening_s(processes: pd.DataFrame | None) -> dict[str, float]:
    """Seconds from launch to listening, per process phase (reference mode only)."""
    if processes is None or not len(processes):
        return {}
    started = processes[processes["listening_ms"].notna()]
    return {row["phase"]: float(row["listening_ms"]) / 1000 for _, row in started.iterrows()}


def _conditions(attempts: pd.DataFrame, conditions: list[str]) -> pd.DataFrame:
    if not len(attempts) or "condition" not in attempts:
        return attempts.iloc[0:0]
    return attempts[attempts["condition"].isin(conditions)]
