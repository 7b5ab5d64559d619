"""Hedge a prediction toward the shared response where its look-alikes are unreliable."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import hedged_change, layer_matrix
from ..metrics import log1p_normalize
from ._coverage import donor_coverage
from ._similarity import group_changes
from ._transfer_check import shared_changes


def hedge_weight(coverage: pd.Series, reliability: pd.Series, lent: pd.Series) -> float:
    """The weight ``w_t`` of a predicted group's own response (see :func:`hedge`).

    ``coverage`` (training groups covering the predicted group, :func:`donor_coverage`),
    ``reliability`` and ``lent`` (the checked groups' columns of
    :func:`~sctrvae.tl.transfer_check`), indexed by group.
    ``w = 1 − (1 − L) · Σ_g coverage_g · (1 − reliability_g)``, clipped to ``[0, 1]``, with the
    lending record ``L = Σ_h lent_h · reliability_h / (Σ_h lent_h + 1)``.
    """
    record = float(lent @ reliability.reindex(lent.index) / (lent.sum() + 1.0))
    lost = float((coverage * (1.0 - reliability.reindex(coverage.index))).sum())
    return float(np.clip(1.0 - (1.0 - record) * lost, 0.0, 1.0))


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


def hedge(
    model,
    adata: ad.AnnData,
    check: pd.DataFrame,
    groupby: str,
    layer: str,
    shared: str = "median_shift",
    n_neighbors: int = 30,
    key_added: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Keep of each group's predicted response only what its look-alikes make trustworthy.

    The hedged mean change of a predicted group ``t`` is ``shared + w_t · (model − shared)``
    (log-normalised means): the shared response (mean or median change of the training
    groups) plus a share ``w_t`` of the model's group-specific part, with

    ``w_t = 1 − (1 − L) · Σ_g coverage_g(t) · (1 − reliability_g)``, clipped to ``[0, 1]``
    (:func:`hedge_weight`).

    ``coverage_g(t)`` (:func:`donor_coverage`) is how far training group ``g``'s source cells
    cover ``t``'s in the model's ``z``: 1 for a look-alike whose cells mix with ``t``'s, 0 for a
    group apart. ``reliability_g`` comes from :func:`sctrvae.tl.transfer_check`: 1 where the refit
    without ``g``'s target cells predicted them better than the shared response did (mean and
    median shift), else 0. A look-alike whose own response the others could not predict is an
    unreliable donor of response for ``t``, whose prediction then falls back to the shared
    response. ``L`` is the lending record of the check: ``Σ_h lent_h · reliability_h /
    (Σ_h lent_h + 1)`` over the checked groups, where ``lent_h`` says how far ``h``'s cells were
    covered by treated look-alikes in its refit. Where the check saw look-alike responses lent
    successfully (the T-cell types of a PBMC set predicting each other), an idiosyncratic
    look-alike is trusted more; where it saw none, the prior (one failed lending) keeps the hedge
    cautious. A group far from every training group keeps the model's prediction, which then
    comes from what the model learned across groups rather than from one look-alike. Every
    predicted cell is shifted by ``(w_t − 1) · (model − shared)`` (clipped at 0).

    Parameters
    ----------
    model
        The trained :class:`~sctrvae.TRVAEModel` that predicted ``layer``.
    adata
        AnnData that ``model.predict(adata, indices=..., key_added=layer)`` wrote into: counts
        in the registered matrix, the predicted rows non-NaN in ``adata.layers[layer]``.
    check
        The output of :func:`sctrvae.tl.transfer_check` for ``model``.
    groupby
        Column of ``adata.obs`` (and of the training data) with the groups.
    layer
        The predicted, log-normalised layer.
    shared
        ``"mean_shift"`` or ``"median_shift"``: the shared response hedged toward.
    n_neighbors
        Neighbours in ``z`` that decide how far each training group covers a predicted group.
    key_added
        Layer to write the hedged prediction to; default ``f"{layer}_hedged"``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy), with ``adata.layers[key_added]`` (NaN outside the predicted rows)
    and ``adata.uns[key_added]``: ``"weights"`` (``w_t`` per group), ``"target_condition"``,
    ``"readout": "hedged"``, ``"layer"``, ``"shared"``, and, when ``check`` carries the
    per-gene changes of :func:`~sctrvae.tl.transfer_check` (``check.attrs["changes"]``),
    ``"change"`` and ``"change_se"`` (groups × genes): the hedged mean change and its standard
    error (:func:`change_se`, from the checked groups' errors under the same weight; a 90%
    interval is ``change ± 1.645 · change_se``).
    """
    if layer not in adata.layers or not isinstance(adata.uns.get(layer), dict):
        raise KeyError(
            f"{layer!r} is not a layer written by model.predict(..., key_added={layer!r})."
        )
    if shared not in ("mean_shift", "median_shift"):
        raise ValueError(f"shared must be 'mean_shift' or 'median_shift', got {shared!r}.")
    if not {"group", "reliability", "lent"} <= set(check.columns):
        raise KeyError("check must be the table of tl.transfer_check (group, reliability, lent).")
    adata = adata.copy() if copy else adata
    key_added = f"{layer}_hedged" if key_added is None else key_added
    target = adata.uns[layer]["target_condition"]
    condition_key = model.registry_["setup_args"]["condition_key"]
    predicted = np.asarray(adata.layers[layer], dtype=np.float64)
    rows = np.flatnonzero(~np.isnan(predicted).all(1))
    sources = adata.obs[condition_key].iloc[rows].astype(str).unique()
    if len(sources) != 1:
        raise ValueError(f"The predicted cells must share one condition, found {list(sources)}.")
    per_group = check.groupby("group", sort=False)[["reliability", "lent"]].first()
    reliability = per_group["reliability"]

    train = model.adata
    _, changes = group_changes(train, groupby, condition_key, sources[0], target)
    train_groups = train.obs[groupby].astype(str).to_numpy()
    is_donor = (train.obs[condition_key].astype(str).to_numpy() == sources[0]) & np.isin(
        train_groups, reliability.index
    )
    donors_z = model.get_latent_representation(train, indices=np.flatnonzero(is_donor))

    hedged = np.full(predicted.shape, np.nan, dtype=np.float32)
    weights, change, se = {}, {}, {}
    groups = adata.obs[groupby].iloc[rows].astype(str).to_numpy()
    counts = layer_matrix(adata, model.registry_["setup_args"]["layer"])
    for t in pd.unique(groups):
        cells = rows[groups == t]
        others = train_groups[is_donor] != t  # a group never lends to itself
        z = model.get_latent_representation(adata, indices=cells)
        coverage = donor_coverage(z, donors_z[others], train_groups[is_donor][others], n_neighbors)
        weights[t] = hedge_weight(coverage, reliability, per_group["lent"])
        base = shared_changes(changes.drop(index=t, errors="ignore"))[shared]
        model_change = predicted[cells].mean(0) - log1p_normalize(counts[cells]).mean(0)
        correction = (weights[t] - 1.0) * (model_change - base)
        hedged[cells] = np.clip(predicted[cells] + correction, 0.0, None)
        change[t] = hedged_change(model_change, base, weights[t])
        checked = {g: c for g, c in check.attrs.get("changes", {}).items() if g != t}
        if checked:
            residuals = np.array(
                [
                    np.subtract(c["real"], c[shared])
                    - weights[t] * np.subtract(c["model"], c[shared])
                    for c in checked.values()
                ]
            )
            se[t] = change_se(residuals)
    adata.layers[key_added] = hedged
    adata.uns[key_added] = {
        "readout": "hedged",
        "target_condition": target,
        "layer": layer,
        "shared": shared,
        "weights": weights,
    }
    if se:
        adata.uns[key_added]["change"] = pd.DataFrame(change, index=adata.var_names).T
        adata.uns[key_added]["change_se"] = pd.DataFrame(se, index=adata.var_names).T
    return adata if copy else None
