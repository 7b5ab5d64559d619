"""Hedge a prediction toward the shared response where it rests on untrusted lending."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import norm

from .._utils import checked_interval_se, hedged_change, layer_matrix, written_rows
from ..metrics import log1p_normalize
from ._coverage import donor_coverage
from ._held_out import shared_changes
from ._similarity import group_changes
from ._transfer_check import margin_verdicts, refit_margins


def lending_weights(
    coverage: pd.Series,
    reliability: pd.Series,
    lent: pd.Series,
    untested: Literal["reliability", "record"] = "reliability",
) -> pd.Series:
    """How much of a predicted group's response rests on each look-alike's untrusted lending.

    ``coverage`` (training groups covering the predicted group, :func:`donor_coverage`),
    ``reliability`` and ``lent`` (the checked groups' columns of
    :func:`~sctrvae.tl.transfer_check`), indexed by group. A look-alike ``g`` is trusted to
    lend its response as far as the check tested lending to ``g`` and the model then beat the
    shared response (``lent_g · reliability_g``); for the rest (``untested``), with
    ``"reliability"`` (the default), as far as the check's refits predicted ``g``'s own
    response from the other groups (``reliability_g``: a response they could predict is not
    ``g``'s alone), or with ``"record"``, as far as the check saw lending succeed anywhere, the
    lending record ``L = Σ_h lent_h · reliability_h / (Σ_h lent_h + 1)`` (0 where the check
    never saw a look-alike lend). Returns ``a_g = coverage_g · (1 − trust_g)``, scaled to sum
    to at most 1.
    """
    if untested not in ("record", "reliability"):
        raise ValueError(f"untested must be 'record' or 'reliability', got {untested!r}.")
    lent = lent.reindex(reliability.index).fillna(0.0)
    record = float(lent @ reliability / (lent.sum() + 1.0))
    fallback = record if untested == "record" else reliability
    trust = lent * reliability + (1.0 - lent) * fallback
    weights = coverage.reindex(reliability.index).fillna(0.0) * (1.0 - trust)
    return weights / max(1.0, float(weights.sum()))


def hedged_change_se(
    model_change: np.ndarray, shared_change: np.ndarray, weight: float, checked: dict
) -> tuple[np.ndarray, np.ndarray | None]:
    """A predicted group's hedged mean change and its standard error (see :func:`hedge`).

    The change is ``shared + weight · (model − shared)``. Its standard error adds to the checked
    groups' calibrated held-out error and between-group spread (:func:`interval_se` of their
    real minus refitted changes and of their real changes; ``checked``: the entries of
    ``check.attrs["changes"]`` other than the predicted group)
    what the weight set aside, ``(1 − weight) · |model − shared| / 1.645``: a 90% interval spans
    the hedged-away part of the model's prediction on each side. ``None`` without checked groups.
    """
    change = hedged_change(model_change, shared_change, weight)
    if not checked:
        return change, None
    calibrated = checked_interval_se(checked.values())
    set_aside = (1.0 - weight) * np.abs(model_change - shared_change) / norm.ppf(0.95)
    return change, calibrated + set_aside


def hedge(
    model,
    adata: ad.AnnData,
    check: pd.DataFrame,
    groupby: str,
    layer: str,
    shared: str = "median_shift",
    n_neighbors: int = 30,
    untested: Literal["reliability", "record"] = "reliability",
    key_added: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Keep of each group's predicted response only what its look-alikes make trustworthy.

    A model lends a group ``t`` it never saw treated the response of the cells ``t`` looks
    like. The hedged mean change of ``t`` keeps a share ``w_t`` of the model's own prediction
    and takes the rest from the shared response (``shared``: the mean or gene-wise median
    change of the training groups):

    ``change_t = shared + w_t · (model_t − shared)``, ``w_t = 1 − Σ_g a_g``,

    with ``a_g = coverage_g(t) · (1 − trust_g)`` (:func:`lending_weights`) over the checked
    groups ``g``. ``coverage_g(t)`` (:func:`donor_coverage`) is how far ``g``'s source cells
    cover ``t``'s in the model's ``z``: 1 for a look-alike whose cells mix with ``t``'s, 0 for
    a group apart. A group far from every training group keeps the model's prediction, which
    then comes from what the model learned across groups rather than from one look-alike.
    ``trust_g`` is what the check of :func:`sctrvae.tl.transfer_check` says of lending ``g``'s
    response: ``reliability_g``, the probability that the check's refits beat, on ``g``, the
    shared response the hedge falls back to (``shared``; computed from the refits' changes in
    ``check.attrs["changes"]`` with the check's pooled spread, else the table's ``reliability``,
    which is against the better of the two baselines). Where the refits tested lending to ``g``
    (``lent_g``: ``g`` was covered by treated look-alikes), that lending worked; where they
    could not (``g``'s look-alikes were held out with it, or ``g``'s only look-alike is ``t``),
    the refits predicted ``g``'s response from the other groups, so it is not ``g``'s alone.
    ``untested="record"`` trusts the untested part by the check's lending record ``L`` instead
    (how often tested lending succeeded; 0 where nothing was tested), which hedges every
    untested look-alike. A look-alike's response is lent to ``t`` only as far as the check
    trusts it. Every predicted cell is shifted by the change's correction (clipped at 0).

    The per-gene interval of the hedged change (``change_se``, :func:`hedged_change_se`) adds
    two parts. The first is :func:`interval_se`: the refits' held-out errors on the checked
    groups, calibrated so that the worst-predicted refit's DEGs and genes are covered, with, in
    quadrature, the checked groups' between-group spread of response (how far a new group's
    response may lie from theirs, which no check of those groups measures). The second is, on
    each side, the part of the model's prediction the hedge set aside: where lending a
    look-alike's response was not trusted, the truth may lie on either side of the shared
    response.

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
    untested
        Trust in a look-alike whose lending the check did not test: ``"reliability"`` (its own
        reliability, the default) or ``"record"`` (the check's lending record ``L``), see
        :func:`lending_weights` and ``docs/transfer.md`` for what each gave on every design.
    key_added
        Layer to write the hedged prediction to; default ``f"{layer}_hedged"``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy), with ``adata.layers[key_added]`` (NaN outside the predicted rows)
    and ``adata.uns[key_added]``: ``"weights"`` (per group, the share of the model's own
    prediction kept, ``1 − Σ_g a_g``), ``"lending"`` (predicted groups × checked groups: each
    ``a_g``, the share of the prediction that fell back for look-alike ``g``),
    ``"reliability"`` (per checked group, ``reliability_g`` as the hedge read it),
    ``"target_condition"``, ``"readout": "hedged"``,
    ``"layer"``, ``"shared"``, and, when ``check`` carries the per-gene changes of
    :func:`~sctrvae.tl.transfer_check` (``check.attrs["changes"]``), ``"change"`` and
    ``"change_se"`` (groups × genes): the hedged mean change and its standard error (a 90%
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
    predicted = adata.layers[layer]
    rows = written_rows(predicted)
    sources = adata.obs[condition_key].iloc[rows].astype(str).unique()
    if len(sources) != 1:
        raise ValueError(f"The predicted cells must share one condition, found {list(sources)}.")
    per_group = check.groupby("group", sort=False)[["reliability", "lent"]].first()
    if check.attrs.get("changes"):
        # trust a lender as far as the refits beat the response the hedge falls back to
        per_group["reliability"] = margin_verdicts(
            refit_margins(check.attrs["changes"], (shared,))
        )["reliability"]

    train = model.adata
    _, changes = group_changes(train, groupby, condition_key, sources[0], target)
    train_groups = train.obs[groupby].astype(str).to_numpy()
    is_donor = (train.obs[condition_key].astype(str).to_numpy() == sources[0]) & np.isin(
        train_groups, per_group.index
    )
    donors_z = model.get_latent_representation(train, indices=np.flatnonzero(is_donor))

    hedged = np.full(predicted.shape, np.nan, dtype=np.float32)
    weights, change, se, lent_by = {}, {}, {}, {}
    groups = adata.obs[groupby].iloc[rows].astype(str).to_numpy()
    counts = layer_matrix(adata, model.registry_["setup_args"]["layer"])
    for t in pd.unique(groups):
        cells = rows[groups == t]
        others = train_groups[is_donor] != t  # a group never lends to itself
        z = model.get_latent_representation(adata, indices=cells)
        coverage = donor_coverage(z, donors_z[others], train_groups[is_donor][others], n_neighbors)
        lent_by[t] = lending_weights(
            coverage, per_group["reliability"], per_group["lent"], untested
        )
        weights[t] = 1.0 - float(lent_by[t].sum())
        values = np.asarray(predicted[cells], dtype=np.float64)  # this group's rows only
        model_change = values.mean(0) - log1p_normalize(counts[cells]).mean(0)
        base = shared_changes(changes.drop(index=t, errors="ignore"))[shared]
        checked = {g: c for g, c in check.attrs.get("changes", {}).items() if g != t}
        change[t], se[t] = hedged_change_se(model_change, base, weights[t], checked)
        hedged[cells] = np.clip(values + change[t] - model_change, 0.0, None)
    se = {t: v for t, v in se.items() if v is not None}
    adata.layers[key_added] = hedged
    adata.uns[key_added] = {
        "readout": "hedged",
        "target_condition": target,
        "layer": layer,
        "shared": shared,
        "weights": weights,
        "lending": pd.DataFrame(lent_by).T,
        "reliability": per_group["reliability"].to_dict(),
    }
    if se:
        adata.uns[key_added]["change"] = pd.DataFrame(change, index=adata.var_names).T
        adata.uns[key_added]["change_se"] = pd.DataFrame(se, index=adata.var_names).T
    return adata if copy else None
