"""The report's interactive section: mean Dice vs clicks per class (one line per model: the
evaluated one and, when scored, the zero-shot base), and the clicks-to-target table."""
from __future__ import annotations

import html

import pandas as pd
from matplotlib.figure import Figure

from samtune.eval.report_html import _mpl_text, _png_bytes, figure, table

__all__ = ["clicks_png", "clicks_section"]


def clicks_png(clicks: pd.DataFrame) -> bytes:
    """Mean volume Dice over cases after N clicks, one line per (class, model)."""
    fig = Figure(figsize=(5.5, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for (name, model), g in clicks.groupby(["class", "model"], sort=True):
        mean = g.groupby("clicks")["dice"].mean()
        ax.plot(mean.index, mean.values, marker="o",
                linestyle="--" if model == "zero-shot" else "-",
                label=_mpl_text(f"{name} ({model})"))
    ax.set_xlabel("simulated clicks")
    ax.set_ylabel("volume Dice (mean over cases)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Dice vs corrective clicks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png_bytes(fig)


def clicks_section(clicks: pd.DataFrame, reach: pd.DataFrame | None) -> str:
    """HTML of the section (empty string without rows)."""
    if clicks is None or not len(clicks):
        return ""
    parts = ["<h2>Interactive: Dice vs clicks</h2>",
             figure(clicks_png(clicks), "Dice after N simulated corrective clicks (the largest "
                    "error region's centre each time; deterministic)")]
    mean = clicks.groupby(["model", "class", "clicks"])["dice"].mean().reset_index()
    parts.append(table(list(mean.columns), list(mean.itertuples(index=False))))
    if reach is not None and len(reach):
        parts.append(f"<h3>{html.escape('Clicks to reach the target Dice, per case')}</h3>")
        parts.append(table(list(reach.columns), list(reach.itertuples(index=False))))
    return "\n".join(parts)
