"""Which groups look alike at baseline, and which respond alike."""

from __future__ import annotations

from itertools import combinations

import anndata as ad
import numpy as np
import pandas as pd

from ..metrics import log_normalized


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
    expression already log-normalised (e.g. over more genes than ``adata`` holds). Returns two
    groups × genes DataFrames: the source means and the changes.
    """
    lognorm = log_normalized(adata) if lognorm is None else np.asarray(lognorm)
    groups = adata.obs[groupby].astype(str).to_numpy()
    condition = adata.obs[condition_key].astype(str).to_numpy()
    baseline, change = {}, {}
    for g in adata.obs[groupby].astype("category").cat.categories.astype(str):
        is_source = (groups == g) & (condition == source)
        is_target = (groups == g) & (condition == target)
        if is_source.any() and is_target.any():
            baseline[g] = lognorm[is_source].mean(0)
            change[g] = lognorm[is_target].mean(0) - baseline[g]
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
