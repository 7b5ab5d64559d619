"""How close a predicted population is to the real one (the leave-one-out protocol's scores)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from .._constants import PREDICTION_LAYER
from .._utils import layer_matrix, log1p_normalize, pearson, written_rows


def log_normalized(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
    """:func:`log1p_normalize` of ``adata.X`` or of a layer."""
    return log1p_normalize(layer_matrix(adata, layer))


def prediction_expression(
    adata: ad.AnnData, layer: str | None = PREDICTION_LAYER, is_log: bool | None = None
) -> np.ndarray:
    """Log-normalised expression of predicted cells, as the scores and plots compare it.

    Parameters
    ----------
    adata
        Predicted cells: the output of :meth:`~sctrvae.TRVAEModel.predict`, or an AnnData that
        ``predict(..., key_added=...)`` wrote a layer into.
    layer
        Layer to read, ``None`` for ``X``. The default, ``"log_normalized"``, is the readout
        ``predict`` returns; an AnnData without that layer (e.g. real cells) is read from ``X``.
    is_log
        Whether the values are log-normalised already (used as they are) or counts /
        proportions (log-normalised here). ``None``: already for ``layers["log_normalized"]``
        and for a layer ``predict`` wrote (recorded in ``adata.uns[layer]``).

    Returns
    -------
    Dense ``(cells, genes)`` array; rows that are all NaN (cells ``predict`` was not asked
    for) are left out.
    """
    if layer == PREDICTION_LAYER and layer not in adata.layers:
        layer = None
    if is_log is None:
        record = adata.uns.get(layer) if layer is not None else None
        is_log = layer == PREDICTION_LAYER or (isinstance(record, dict) and "readout" in record)
    values = layer_matrix(adata, layer)
    if not is_log:
        return log1p_normalize(values)
    return np.asarray(values[written_rows(values)], dtype=np.float64)


def top_degs(real_target: ad.AnnData, real_source: ad.AnnData, n_genes: int = 100) -> np.ndarray:
    """Top ``n_genes`` genes by Wilcoxon score, target vs source (real cells), as var names.

    Sparse counts stay sparse (the same values; scanpy ranks them in gene chunks): a group of
    many cells is never densified whole.
    """
    cells = [real_target.X, real_source.X]
    both = ad.AnnData(
        X=(
            sp.vstack([log1p_normalize(x, keep_sparse=True) for x in cells], format="csr")
            if all(sp.issparse(x) for x in cells)
            else np.vstack([log1p_normalize(x) for x in cells])
        ),
        obs={"group": ["target"] * real_target.n_obs + ["source"] * real_source.n_obs},
        var=real_target.var[[]],
    )
    both.obs["group"] = both.obs["group"].astype("category")
    sc.tl.rank_genes_groups(
        both, "group", groups=["target"], reference="source", method="wilcoxon", n_genes=n_genes
    )
    return np.asarray(both.uns["rank_genes_groups"]["names"]["target"][:n_genes]).astype(str)


def score_prediction(
    predicted: ad.AnnData,
    real_target: ad.AnnData,
    real_source: ad.AnnData,
    degs: np.ndarray | None = None,
    n_degs: int = 100,
    predicted_layer: str | None = PREDICTION_LAYER,
    predicted_is_log: bool | None = None,
) -> dict[str, float]:
    """Score a predicted population against the real target cells.

    All three AnnData objects must share ``var_names``; real cells hold counts in ``X``.

    Parameters
    ----------
    predicted
        Prediction, e.g. the output of :meth:`~sctrvae.TRVAEModel.predict`.
    real_target, real_source
        Real cells in the target and the source condition.
    degs
        Genes for the ``*_deg`` scores; default the top ``n_degs`` Wilcoxon genes.
    predicted_layer, predicted_is_log
        What to read of ``predicted`` and whether it is log-normalised already; by default the
        readout ``predict`` returned. See :func:`prediction_expression`, which the
        plots in ``sctrvae.pl`` use too.

    Returns
    -------
    ``r2_mean_all``, ``r2_var_all``, ``r2_mean_deg``, ``r2_var_deg`` (squared Pearson of per-gene
    means / variances), ``pearson_delta_all``, ``pearson_delta_deg`` (Pearson of predicted vs
    real change from the source mean).
    """
    if not (
        predicted.var_names.equals(real_target.var_names)
        and real_source.var_names.equals(real_target.var_names)
    ):
        raise ValueError("predicted, real_target and real_source must have the same var_names.")
    if degs is None:
        degs = top_degs(real_target, real_source, n_degs)
    return score_log_expression(
        prediction_expression(predicted, predicted_layer, predicted_is_log),
        log_normalized(real_target),
        log_normalized(real_source),
        real_target.var_names.isin(degs),
    )


def score_log_expression(
    predicted: np.ndarray, real_target: np.ndarray, real_source: np.ndarray, deg_mask: np.ndarray
) -> dict[str, float]:
    """:func:`score_prediction` on matrices already in log-normalised space (cells × genes)."""
    source_mean = real_source.mean(0)
    scores = {}
    for name, genes in (("all", slice(None)), ("deg", np.asarray(deg_mask, dtype=bool))):
        pm, rm = predicted.mean(0)[genes], real_target.mean(0)[genes]
        pv, rv = predicted.var(0)[genes], real_target.var(0)[genes]
        scores[f"r2_mean_{name}"] = pearson(pm, rm) ** 2
        scores[f"r2_var_{name}"] = pearson(pv, rv) ** 2
        scores[f"pearson_delta_{name}"] = pearson(pm - source_mean[genes], rm - source_mean[genes])
    return scores
