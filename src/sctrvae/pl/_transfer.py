"""The transfer check: model vs the shared-response baselines, group by group."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from scipy.stats import t as student_t

from ._figure import FIGURE_PARAMETERS, FIGURE_RETURNS, finish

_COLOURS = {"model": "tab:red", "mean_shift": "tab:grey", "median_shift": "silver"}
_SHORT = {
    "the model beats the shared response here": "beats",
    "does not": "does not",
    "undecided": "undecided",
}


def _half_width(per_group: pd.DataFrame) -> np.ndarray:
    """90% half-width of each group's margin (NaN for a table without ``margin_se``)."""
    if "margin_se" not in per_group:
        return np.full(len(per_group), np.nan)
    df = max(1, int((per_group["n_scores"] - 1).sum()))
    return student_t.ppf(0.95, df) * per_group["margin_se"].to_numpy()


def transfer_check(
    table: pd.DataFrame,
    score: str = "pearson_delta_deg",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Bars of each method's score per checked group; the verdict and margin above each group.

    Each bar is the mean over the refits that scored the group; above the bars, the verdict
    ("beats", "does not", "undecided") and the margin with its 90% interval between refits
    (``margin ± t · margin_se``, drawn as an error bar on the model's bar).

    Parameters
    ----------
    table
        The output of :func:`sctrvae.tl.transfer_check`.
    score
        Column to plot: ``"pearson_delta_deg"`` or ``"r2_mean_deg"``.
    {figure}

    {returns}
    """
    missing = {"group", "method", score, "margin"} - set(table.columns)
    if missing:
        raise KeyError(f"table lacks {sorted(missing)}: pass the output of tl.transfer_check.")
    scores = table.pivot(index="group", columns="method", values=score)
    groups = list(pd.unique(table["group"]))
    methods = list(pd.unique(table["method"]))
    scores = scores.loc[groups, methods]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.9 * len(groups), 3.2))
    width = 0.8 / len(methods)
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            scores[method],
            width,
            label=method,
            color=_COLOURS.get(method),
        )
    per_group = table.groupby("group", sort=False).first().loc[groups]
    top = np.nanmax(scores.to_numpy())
    half = _half_width(per_group)
    if "model" in methods:
        model_x = x + (methods.index("model") - (len(methods) - 1) / 2) * width
        ax.errorbar(model_x, scores["model"], yerr=half, fmt="none", ecolor="black", lw=0.8)
    for xi, (_, row), h in zip(x, per_group.iterrows(), half, strict=True):
        verdict = _SHORT.get(row.get("verdict"), "beats" if row.margin > 0 else "does not")
        spread = "" if np.isnan(h) else f" ± {h:.2f}"
        ax.text(
            xi,
            top * 1.05,
            f"{verdict}\n{row.margin:+.2f}{spread}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(score)
    ax.set_ylim(top=top * 1.35 if top > 0 else 1.0)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title("Held out by the refits: model vs shared response")
    return finish(ax, show, save)


transfer_check.__doc__ = transfer_check.__doc__.format(
    figure=FIGURE_PARAMETERS, returns=FIGURE_RETURNS
)
