"""Predicted vs real per-gene statistics, with the top DEGs highlighted."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from ..metrics._prediction import log_normalized


def _reg_plot(
    statistic: str,
    predicted: ad.AnnData,
    real: ad.AnnData,
    degs: Sequence[str] | None,
    predicted_layer: str | None,
    n_labels: int,
    ax: Axes | None,
    show: bool | None,
    save: str | None,
) -> Axes | None:
    if not predicted.var_names.equals(real.var_names):
        raise ValueError("predicted and real must have the same var_names.")
    reduce = np.mean if statistic == "mean" else np.var
    x = reduce(log_normalized(real), axis=0)
    y = reduce(log_normalized(predicted, predicted_layer), axis=0)
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x, y, s=6, c="0.6", linewidths=0, label="all genes", rasterized=True)
    title = f"{statistic}: R² = {r2:.3f}"
    if degs is not None and len(degs) > 0:
        mask = real.var_names.isin(list(degs))
        r2_deg = np.corrcoef(x[mask], y[mask])[0, 1] ** 2
        ax.scatter(x[mask], y[mask], s=10, c="tab:red", linewidths=0, label="top DEGs")
        title += f", DEGs {r2_deg:.3f}"
        for gene in list(degs)[:n_labels]:
            i = real.var_names.get_loc(gene)
            ax.annotate(gene, (x[i], y[i]), fontsize=7)
        ax.legend(frameon=False, loc="upper left", fontsize=8)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax.plot(lim, lim, ls="--", c="k", lw=0.8)
    ax.set_xlabel(f"real {statistic} (log-normalised)")
    ax.set_ylabel(f"predicted {statistic} (log-normalised)")
    ax.set_title(title)
    if save:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
        return None
    return ax


def reg_mean_plot(
    predicted: ad.AnnData,
    real: ad.AnnData,
    degs: Sequence[str] | None = None,
    predicted_layer: str | None = "normalized",
    n_labels: int = 5,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Scatter of per-gene means, predicted vs real, in log-normalised space.

    Parameters
    ----------
    predicted
        Output of :meth:`~sctrvae.TRVAEModel.predict`.
    real
        Real cells of the target condition (counts in ``X``), same ``var_names``.
    degs
        Genes to highlight (e.g. :func:`sctrvae.metrics.top_degs`); the first ``n_labels`` are
        labelled.
    predicted_layer
        Layer of ``predicted`` to read; ``None`` reads ``X``.
    ax
        Axes to draw in; a new figure otherwise.
    show
        Show the figure and return ``None`` (scanpy's convention).
    save
        Path to save the figure to.

    Returns
    -------
    The Axes, unless ``show`` is true.
    """
    return _reg_plot("mean", predicted, real, degs, predicted_layer, n_labels, ax, show, save)


def reg_var_plot(
    predicted: ad.AnnData,
    real: ad.AnnData,
    degs: Sequence[str] | None = None,
    predicted_layer: str | None = None,
    n_labels: int = 5,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Scatter of per-gene variances, predicted vs real; see :func:`reg_mean_plot`.

    ``predicted_layer`` defaults to ``X``: variances are only realistic for sampled counts
    (``predict(..., n_samples=1)``).
    """
    return _reg_plot("variance", predicted, real, degs, predicted_layer, n_labels, ax, show, save)
