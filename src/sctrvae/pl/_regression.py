"""Predicted vs real per-gene statistics, with the top DEGs highlighted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from .._constants import PREDICTION_LAYER
from ..metrics import log_normalized, prediction_expression
from ._figure import FIGURE_PARAMETERS, FIGURE_RETURNS, finish

_PARAMETERS = (
    """
    Parameters
    ----------
    predicted
        Predicted cells: the output of :meth:`~sctrvae.TRVAEModel.predict`, an AnnData
        ``predict(..., key_added=...)`` wrote into, or (with ``condition_key``) one AnnData
        holding the real and the predicted cells.
    real
        Real cells of the target condition (counts in ``X``), same ``var_names``; ``None`` with
        ``condition_key``.
    degs
        Genes to highlight, with their own R² (e.g. :func:`sctrvae.metrics.top_degs`).
    predicted_layer, predicted_is_log
        What to read of the predicted cells; by default the readout ``predict`` returned
        (see :func:`sctrvae.metrics.prediction_expression`, which
        :func:`~sctrvae.metrics.score_prediction` uses too).
    n_labels
        Label the first ``n_labels`` of ``degs`` (when ``gene_list`` is not given).
    """
    + FIGURE_PARAMETERS
    + """
    condition_key
        scGen's form: column of ``predicted.obs`` that tells real from predicted cells.
    axis_keys
        scGen's form: ``{"x": <category of the real cells>, "y": <category of the predicted
        cells>}`` in ``condition_key``.
    gene_list
        Genes to label (scGen's name); default the first ``n_labels`` of ``degs``.
    top_100_genes
        scGen's name for ``degs``.

    """
    + FIGURE_RETURNS
)


def _split(
    adata: ad.AnnData, condition_key: str, axis_keys: Mapping[str, str] | None
) -> tuple[ad.AnnData, ad.AnnData]:
    """Predicted and real cells of one AnnData, scGen's ``condition_key`` / ``axis_keys``."""
    if axis_keys is None or set(axis_keys) != {"x", "y"}:
        raise ValueError(
            'condition_key needs axis_keys={"x": <real category>, "y": <predicted category>}.'
        )
    cells = {}
    for axis, category in axis_keys.items():
        mask = (adata.obs[condition_key] == category).to_numpy()
        if not mask.any():
            raise ValueError(f"No cell has {condition_key} == {category!r} (axis_keys[{axis!r}]).")
        cells[axis] = adata[mask]
    return cells["y"], cells["x"]


def _reg_plot(
    statistic: str,
    predicted: ad.AnnData,
    real: ad.AnnData | None,
    degs: Sequence[str] | None,
    predicted_layer: str | None,
    predicted_is_log: bool | None,
    n_labels: int,
    ax: Axes | None,
    show: bool | None,
    save: str | None,
    condition_key: str | None,
    axis_keys: Mapping[str, str] | None,
    gene_list: Sequence[str] | None,
    top_100_genes: Sequence[str] | None,
) -> Axes | None:
    if top_100_genes is not None:
        if degs is not None:
            raise ValueError("Pass degs or its scGen name top_100_genes, not both.")
        degs = top_100_genes
    if condition_key is not None:
        if real is not None:
            raise ValueError("With condition_key, pass one AnnData holding both populations.")
        predicted, real = _split(predicted, condition_key, axis_keys)
    elif real is None:
        raise ValueError("Pass the real cells, or condition_key and axis_keys.")
    if not predicted.var_names.equals(real.var_names):
        raise ValueError("predicted and real must have the same var_names.")
    reduce = np.mean if statistic == "mean" else np.var
    x = reduce(log_normalized(real), axis=0)
    y = reduce(prediction_expression(predicted, predicted_layer, predicted_is_log), axis=0)
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
        ax.legend(frameon=False, loc="upper left", fontsize=8)
    labels = list(degs)[:n_labels] if gene_list is None and degs is not None else gene_list
    for gene in labels or []:
        i = real.var_names.get_loc(gene)
        ax.annotate(gene, (x[i], y[i]), fontsize=7)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax.plot(lim, lim, ls="--", c="k", lw=0.8)
    ax.set_xlabel(f"real {statistic} (log-normalised)")
    ax.set_ylabel(f"predicted {statistic} (log-normalised)")
    ax.set_title(title)
    return finish(ax, show, save)


def _regression_plot(statistic: str, summary: str):
    """The public plot of ``statistic`` (one signature for both plots)."""

    def plot(
        predicted: ad.AnnData,
        real: ad.AnnData | None = None,
        degs: Sequence[str] | None = None,
        predicted_layer: str | None = PREDICTION_LAYER,
        n_labels: int = 5,
        ax: Axes | None = None,
        show: bool | None = None,
        save: str | None = None,
        *,
        predicted_is_log: bool | None = None,
        condition_key: str | None = None,
        axis_keys: Mapping[str, str] | None = None,
        gene_list: Sequence[str] | None = None,
        top_100_genes: Sequence[str] | None = None,
    ) -> Axes | None:
        # the arguments above, by name (locals() also holds the closure's statistic)
        arguments = {k: v for k, v in locals().items() if k != "statistic"}
        return _reg_plot(statistic, **arguments)

    plot.__doc__ = summary + _PARAMETERS
    return plot


reg_mean_plot = _regression_plot(
    "mean",
    """Scatter of per-gene means, predicted vs real, in log-normalised space.
""",
)
reg_mean_plot.__name__ = reg_mean_plot.__qualname__ = "reg_mean_plot"
reg_var_plot = _regression_plot(
    "variance",
    """Scatter of per-gene variances, predicted vs real, in log-normalised space.

    Variances are realistic for sampled readouts (``predict(readout="sampled")`` or
    ``"calibrated"``), not for the deterministic mean.
""",
)
reg_var_plot.__name__ = reg_var_plot.__qualname__ = "reg_var_plot"
