"""Small array and AnnData helpers shared by the model, the ensemble, metrics and benchmarks.

A leaf module: it imports nothing of sctrvae and no scanpy, so every other module can use it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm
from scvi import REGISTRY_KEYS
from sklearn.neighbors import NearestNeighbors

#: Loggers whose info lines (Lightning's banner and tips, scvi-tools' setup transfers) a fit
#: inside another function must not print.
FIT_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")
#: Modules (regular expressions on the warning's module) whose deprecation warnings such a fit
#: does not print.
FIT_DEPRECATIONS_FROM = (r"lightning\.", r"torch\.", r"scvi\.")

#: Total counts each cell is scaled to before ``log1p``.
TARGET_SUM = 1e4
#: Neighbours per cell of :func:`mixing_score`'s kNN classifier.
MIXING_NEIGHBORS = 15


def log1p_normalize(
    x: np.ndarray | sp.spmatrix, dtype: np.dtype = np.float64, keep_sparse: bool = False
) -> np.ndarray | sp.csr_matrix:
    """Dense ``log1p(x / row total × 1e4)`` of a cells × genes matrix, in ``dtype``.

    Counts or proportions alike; all-zero rows stay zero. Row totals are summed in float64.
    ``keep_sparse``: a sparse ``x`` gives a CSR matrix of the same values (zeros stay zeros),
    for computations that need not densify every cell at once.
    """
    if keep_sparse and sp.issparse(x):
        out = sp.csr_matrix(x, dtype=dtype, copy=True)
        totals = np.asarray(out.sum(1, dtype=np.float64)).ravel()
        per_value = np.repeat(np.where(totals > 0, totals, 1.0), np.diff(out.indptr))
        out.data /= per_value.astype(dtype)
        out.data *= TARGET_SUM
        np.log1p(out.data, out=out.data)
        return out
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    totals = x.sum(-1, keepdims=True, dtype=np.float64)
    out = x.astype(dtype) / np.where(totals > 0, totals, 1.0).astype(dtype)
    out *= TARGET_SUM
    return np.log1p(out, out=out)


#: Entries of a row block of :func:`row_blocks`: a whole-matrix intermediate becomes one block's.
ROW_BLOCK_ENTRIES = 10_000_000


def row_blocks(matrix, max_entries: int | None = None) -> Iterator:
    """Row blocks of ``matrix`` (dense, sparse or backed), read one by one.

    Each block has at most about ``max_entries`` entries, zeros included (default
    :data:`ROW_BLOCK_ENTRIES`).
    """
    n_rows, n_cols = matrix.shape
    step = max(1, (max_entries or ROW_BLOCK_ENTRIES) // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield matrix[start : start + step]


def written_rows(layer: np.ndarray) -> np.ndarray:
    """Positions of the rows of a ``predict`` layer that hold values (not all NaN).

    Scanned in row blocks: no whole-layer boolean mask.
    """
    rows, start = [], 0
    for block in row_blocks(layer):
        rows.append(start + np.flatnonzero(~np.isnan(block).all(1)))
        start += block.shape[0]
    return np.concatenate(rows) if rows else np.array([], dtype=np.intp)


def sums_by_code(
    values: np.ndarray | sp.spmatrix, codes: np.ndarray, n_codes: int, weights=None
) -> np.ndarray:
    """Float64 sums of the rows of ``values`` (cells × genes) per code, ``(n_codes, genes)``.

    ``codes``: each row's code in ``0 … n_codes − 1`` (rows coded ``-1`` are left out);
    ``weights``: each row's weight (default 1). The product is taken in float64 on this block
    only, whatever the dtype of ``values``.
    """
    kept = np.flatnonzero(codes >= 0)
    weights = np.ones(kept.size) if weights is None else np.asarray(weights, np.float64)[kept]
    indicator = sp.csr_matrix((weights, (codes[kept], kept)), shape=(n_codes, len(codes)))
    sums = indicator @ (values.astype(np.float64) if sp.issparse(values) else values)
    return sums.toarray() if sp.issparse(sums) else np.asarray(sums, dtype=np.float64)


def draws_per_cell(n_cells: int, per_group: int, at_most: int) -> int:
    """Draws per cell that give a group of ``n_cells`` cells ``per_group`` draws in all.

    At least 1 and at most ``at_most``: a group mean needs a number of draws, not a number per
    cell, so a large group takes fewer per cell.
    """
    return int(min(at_most, max(1, math.ceil(per_group / n_cells))))


def log_expression(values: np.ndarray, likelihood: str) -> np.ndarray:
    """Predicted values (cells × genes, any leading axes) as float32 log-normalised expression.

    A Gaussian model's (``likelihood="normal"``) values are log-normalised already.
    """
    if likelihood == "normal":
        return values.astype(np.float32)
    return log1p_normalize(values.reshape(-1, values.shape[-1]), np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0 when either is constant."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def hedged_change(model_change: np.ndarray, shared_change: np.ndarray, weight: float) -> np.ndarray:
    """A predicted change hedged toward the shared one: ``shared + weight · (model − shared)``.

    ``weight`` is the share of the model's own (group-specific) part that is kept: 1 gives the
    model's change, 0 the shared change (e.g. the other groups' mean or median change).
    """
    return shared_change + weight * (model_change - shared_change)


def selected_positions(n_obs: int, indices: Sequence[int] | None) -> np.ndarray:
    """Positions ``indices`` selects among ``n_obs`` cells (all for ``None``; masks allowed)."""
    selected = np.arange(n_obs) if indices is None else np.asarray(indices)
    return np.flatnonzero(selected) if selected.dtype == bool else selected


def mixing_score(
    x: np.ndarray, condition: np.ndarray, groups: np.ndarray, n_neighbors: int = MIXING_NEIGHBORS
) -> float:
    """:func:`~sctrvae.metrics.condition_mixing` of a dense cells × features array.

    The mean over groups of a kNN classifier's balanced accuracy in recovering the condition;
    NaN when no group has two conditions with ``n_neighbors + 1`` cells each. ``condition`` and
    ``groups``: one code per cell. Here, below the training layer, so that the training plan
    logs it without importing ``metrics``.
    """
    x = np.asarray(x, dtype=np.float64)
    condition, groups = np.asarray(condition).reshape(-1), np.asarray(groups).reshape(-1)
    scores = []
    for g in pd.unique(groups):
        in_group = groups == g
        labels, sizes = np.unique(condition[in_group], return_counts=True)
        # conditions with enough cells for a full neighbourhood of their own
        scored = in_group & np.isin(condition, labels[sizes > n_neighbors])
        _, codes, sizes = np.unique(condition[scored], return_inverse=True, return_counts=True)
        if sizes.size < 2:
            continue
        cells = x[scored]
        index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(cells).kneighbors(cells)[1]
        votes = np.zeros((codes.size, sizes.size))
        np.add.at(votes, (np.arange(codes.size)[:, None], codes[index[:, 1:]]), 1.0)
        predicted = (votes / sizes).argmax(1)
        scores.append(np.mean([np.mean(predicted[codes == c] == c) for c in range(sizes.size)]))
    return float(np.mean(scores)) if scores else float("nan")


def blank_layer(adata: ad.AnnData) -> np.ndarray:
    """A float32 layer of ``adata``'s shape, all NaN: rows not predicted stay NaN."""
    return np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)


def write_layer(adata: ad.AnnData, layer: np.ndarray, key_added: str, record: dict) -> None:
    """Write ``layer`` (from :func:`blank_layer`) to ``adata.layers[key_added]``, and ``record``.

    ``record`` (what was written) goes to ``adata.uns[key_added]``.
    """
    adata.layers[key_added] = layer
    adata.uns[key_added] = dict(record)


def layer_matrix(adata: ad.AnnData, layer: str | None):
    """The matrix in ``adata.layers[layer]``, or ``adata.X`` for ``None``."""
    return adata.X if layer is None else adata.layers[layer]


def matrix_name(layer: str | None) -> str:
    """How the count matrix in ``layer`` (``None``: ``X``) is spelled in messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def registry_var_names(registry: dict) -> pd.Index:
    """Training genes stored by scvi-tools in a (saved) registry."""
    field = registry["field_registries"][REGISTRY_KEYS.X_KEY]
    return pd.Index(np.asarray(field["state_registry"]["column_names"]).astype(str))


@contextmanager
def quiet_fitting() -> Iterator[None]:
    """Fits and predictions inside run without info lines or third-party deprecations.

    For the fits a function makes on its own (refits of a check, members of an ensemble): the
    caller's progress bar is the one line the user should see.
    """
    loggers = [logging.getLogger(name) for name in FIT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            # deprecations inside Lightning and torch (e.g. torch's LeafSpec, at every fit):
            # nothing a user can act on, repeated once per internal fit
            for module in FIT_DEPRECATIONS_FROM:
                warnings.filterwarnings("ignore", category=FutureWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Pseudo-count of genes' pooled error in each gene's error estimate (few left-out groups).
PRIOR_GROUPS = 2.0


def change_se(residuals: np.ndarray, prior_groups: float = PRIOR_GROUPS) -> np.ndarray:
    """Standard error per gene of a predicted change, from left-out groups' errors.

    ``residuals`` (left-out groups × genes): real minus predicted change of each group of the
    transfer check, under the same rule. Each gene's mean squared error is pooled with the
    average over genes (weight ``prior_groups`` against the ``k`` groups), and inflated by
    ``1 + 1/k`` for a new group. A 90% interval is ``change ± 1.645 · se``.
    """
    k = residuals.shape[0]
    per_gene = (residuals**2).mean(0)
    pooled = (k * per_gene + prior_groups * per_gene.mean()) / (k + prior_groups)
    return np.sqrt(pooled * (1.0 + 1.0 / k))


def interval_se(
    residuals: Sequence[np.ndarray],
    degs: Sequence[np.ndarray],
    responses: Sequence[np.ndarray],
    level: float = 0.9,
) -> np.ndarray:
    """Per-gene standard error of a new group's change, calibrated on the checked groups.

    Two parts, added in quadrature. What the check measured: ``residuals``, per checked group,
    its real minus predicted change in each refit that scored it (refits × genes), and
    ``degs``, per checked group, the positions of its DEGs. The per-gene scale is
    :func:`change_se` of all residuals; each refit's radius is the multiple of that scale its
    residuals need for ``level`` of its group's DEGs, and of all its genes, to lie within, and
    the largest radius over refits and groups sets this part. A new group's change comes from
    one model, so it is compared with single refits rather than their average; one group the
    model got wrong, a look-alike above all, widens every interval. What the check cannot
    measure: how far a new group's response lies from the checked groups' (``k`` groups bound
    a new one only up to ``1/(k + 1)``), taken as their between-group standard deviation per
    gene (``responses``: each checked group's real change). Returned as a standard error: the
    ``level`` interval is ``change ± z · se`` with ``z`` the normal quantile (1.645 at 90%).
    """
    z = float(norm.ppf(0.5 + level / 2))
    scale = change_se(np.vstack(residuals))
    radius = 0.0
    for errors, positions in zip(residuals, degs, strict=True):
        ratio = np.abs(np.atleast_2d(errors)) / scale
        need = np.maximum(
            np.quantile(ratio[:, positions], level, axis=1), np.quantile(ratio, level, axis=1)
        )
        radius = max(radius, float(need.max()))
    responses = np.vstack(responses)
    spread = responses.std(axis=0, ddof=1) if len(responses) > 1 else 0.0
    return np.sqrt((scale * radius / z) ** 2 + spread**2)


def checked_interval_se(checked: Iterable[Mapping]) -> np.ndarray:
    """:func:`interval_se` calibrated on a transfer check's groups.

    ``checked``: values of ``check.attrs["changes"]`` (each with ``"real"``, ``"model"`` per
    refit and ``"degs"``), the groups that calibrate a new one.
    """
    checked = list(checked)
    residuals = [np.subtract(c["real"], c["model"]) for c in checked]
    return interval_se(residuals, [c["degs"] for c in checked], [c["real"] for c in checked])
