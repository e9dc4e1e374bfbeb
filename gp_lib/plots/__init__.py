"""Matplotlib figures from the attempts and frames tables, one module per scenario.

Every function takes tables (or a ScenarioResult) and returns a Figure; none
draws on screen or writes files, so the same figures serve notebooks, reports
and tests. In reference mode a figure shows both arms side by side.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt

#: Colours by outcome, shared by every figure so a reader learns them once.
OUTCOME_COLOURS = {
    "ok": "#2e7d32", "closed_1011": "#c62828", "closed_other": "#ef6c00", "auth_rejected": "#6a1b9a",
    "refused": "#455a64", "dns_error": "#455a64", "tls_error": "#455a64", "open_timeout": "#78909c",
    "ready_timeout": "#f9a825", "receive_timeout": "#fbc02d", "protocol_error": "#8d6e63",
    "redirected": "#37474f", "client_error": "#bdbdbd",
}
ARM_TITLES = {"faulty": "fault injected", "fixed": "fixed", "live": "live target"}


def arms_of(result: Any) -> list[str]:
    """The arms of a result in reading order: faulty before fixed."""
    order = {"faulty": 0, "fixed": 1, "live": 2}
    return sorted(result.observations, key=lambda arm: order.get(arm, 9))


def arm_axes(arms: Sequence[str], title: str, *, width: float = 6.0, height: float = 4.0,
             sharey: bool = True) -> tuple[Any, dict[str, Any]]:
    """A figure with one axes per arm, side by side, titled by arm; the caller lays it out (`tight_layout`)
    once it has drawn, since a layout of the empty axes is thrown away."""
    fig, axes = plt.subplots(1, len(arms), figsize=(width * len(arms), height), sharey=sharey, squeeze=False)
    by_arm = {}
    for ax, arm in zip(axes[0], arms):
        ax.set_title(ARM_TITLES.get(arm, arm))
        ax.grid(alpha=0.3)
        by_arm[arm] = ax
    fig.suptitle(title)
    return fig, by_arm


def empty_note(ax: Any, text: str = "no data") -> None:
    """Say so on an axes that has nothing to plot, instead of leaving it blank."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
