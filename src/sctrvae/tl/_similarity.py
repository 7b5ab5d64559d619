"""Which groups look alike at baseline, and which respond alike."""

from __future__ import annotations

from itertools import combinations

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import log1p_normalize, row_blocks, sums_by_code


def group_changes(
    adata: ad.AnnData,
    groupby: str,
    condition_key: str,
    source: str,
    target: str,
    lognorm: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean log-normalised source expression and mean change (target − source) per group.

    Only groups with cells in both conditions; counts in ``adata.X``, or ``lognorm``: the cells'
    expression already log-normalised (e.g. over more genes than ``adata`` holds). The counts are
    log-normalised and summed per group in row blocks: no dense copy of the whole matrix.
    Returns two groups × genes DataFrames: the source means and the changes.
    """
    names = adata.obs[groupby].astype("category").cat.categories.astype(str)
    groups = pd.Categorical(adata.obs[groupby].astype(str), categories=names).codes
    condition = adata.obs[condition_key].astype(str).to_numpy()
    # one slot per (group, side): source cells at the group's code, target cells after them
    slots = np.where(
        condition == source, groups, np.where(condition == target, groups + len(names), -1)
    )
    slots[groups < 0] = -1
    matrix = adata.X if lognorm is None else np.asarray(lognorm)
    sums, start = np.zeros((2 * len(names), adata.n_vars)), 0
    for block in row_blocks(matrix):
        values = block if lognorm is not None else log1p_normalize(block)
        sums += sums_by_code(values, slots[start : start + block.shape[0]], 2 * len(names))
        start += block.shape[0]
    cells = np.bincount(slots[slots >= 0], minlength=2 * len(names))
    baseline, change = {}, {}
    for i, g in enumerate(names):
        if cells[i] and cells[i + len(names)]:
            baseline[g] = sums[i] / cells[i]
            change[g] = sums[i + len(names)] / cells[i + len(names)] - baseline[g]
    if len(change) < 2:
        raise ValueError(
            f"Fewer than two groups of {groupby!r} have cells in both {source!r} and {target!r}."
        )
    return (
        pd.DataFrame(baseline, index=adata.var_names).T,
        pd.DataFrame(change, index=adata.var_names).T,
    )


def group_similarity(
    adata: ad.AnnData,
    groupby: str,
    condition_key: str,
    source: str,
    target: str,
    n_genes: int = 100,
) -> pd.DataFrame:
    """How alike every pair of groups is at baseline and in its response, from the counts.

    A pair that is close at baseline but responds unlike is where borrowing the response of
    look-alike cells (what a transfer model does) goes wrong.

    Parameters
    ----------
    adata
        Counts in ``X``.
    groupby, condition_key
        Columns of ``adata.obs`` with the groups (e.g. patients) and the condition.
    source, target
        The unperturbed and the perturbed condition.
    n_genes
        Responses are correlated over the ``n_genes`` genes with the largest absolute change in
        any group (the others add only noise).

    Returns
    -------
    One row per pair of groups with both conditions, sorted by baseline distance:
    ``group_a``, ``group_b``, ``baseline_distance`` (Euclidean distance of the mean
    log-normalised source profiles), ``response_correlation`` (Pearson r of the mean changes).
    """
    baseline, change = group_changes(adata, groupby, condition_key, source, target)
    genes = np.argsort(-change.abs().max(axis=0).to_numpy())[:n_genes]
    rows = [
        {
            "group_a": a,
            "group_b": b,
            "baseline_distance": float(np.linalg.norm(baseline.loc[a] - baseline.loc[b])),
            "response_correlation": float(
                np.corrcoef(change.loc[a].iloc[genes], change.loc[b].iloc[genes])[0, 1]
            ),
        }
        for a, b in combinations(change.index, 2)
    ]
    return pd.DataFrame(rows).sort_values("baseline_distance", ignore_index=True)
