"""The transfer check: model vs the shared-response baselines, group by group."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._figure import FIGURE_PARAMETERS, FIGURE_RETURNS, finish

_COLOURS = {"model": "tab:red", "mean_shift": "tab:grey", "median_shift": "silver"}


def transfer_check(
    table: pd.DataFrame,
    score: str = "pearson_delta_deg",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Bars of each method's score per left-out group, the verdict above each group.

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
    margins = table.groupby("group", sort=False)["margin"].first().loc[groups]
    top = np.nanmax(scores.to_numpy())
    for xi, margin in zip(x, margins, strict=True):
        # the verdict is the margin's sign; its size says how clear the verdict is
        ax.text(
            xi,
            top * 1.05,
            f"{'beats' if margin > 0 else 'does not'}\n{margin:+.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(score)
    ax.set_ylim(top=top * 1.35 if top > 0 else 1.0)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title("Left out in turn: model vs shared response")
    return finish(ax, show, save)


transfer_check.__doc__ = transfer_check.__doc__.format(
    figure=FIGURE_PARAMETERS, returns=FIGURE_RETURNS
)
