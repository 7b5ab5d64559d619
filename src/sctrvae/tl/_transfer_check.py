"""Leave-one-group-out inside the training data: does the model beat the shared response."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._utils import pearson
from ..metrics import log_normalized, top_degs
from ._coverage import donor_coverage
from ._similarity import group_changes

#: Verdicts of :func:`transfer_check`, by the sign of the margin.
VERDICTS = ("the model beats the shared response here", "does not")
#: Methods a transfer check scores, in the order of its table.
CHECK_METHODS = ("model", "mean_shift", "median_shift")


def refit_like(model, adata: ad.AnnData, **train_kwargs):
    """A model of ``model``'s class, set up and initialised as ``model`` was, trained on ``adata``.

    ``adata`` is set up with the registered arguments of ``model`` (``setup_args`` of its
    registry) and the model is built with ``model.init_params_``.
    """
    setup_args = {k: v for k, v in model.registry_["setup_args"].items() if v is not None}
    params = model.init_params_
    init_kwargs = {**params["non_kwargs"], **params["kwargs"].get("module_kwargs", {})}
    cls = type(model)
    cls.setup_anndata(adata, **setup_args)
    refit = cls(adata, **init_kwargs)
    refit.train(**{"enable_progress_bar": False, **train_kwargs})
    return refit


def predicted_change(
    model, source: ad.AnnData, target_condition: str, readout: str, n_samples: int | None
) -> np.ndarray:
    """Mean log-normalised prediction of ``source``'s cells minus their own mean."""
    pred = model.predict(
        source, target_condition=target_condition, readout=readout, n_samples=n_samples
    )
    return np.asarray(pred.layers["log_normalized"], dtype=np.float64).mean(0) - log_normalized(
        source
    ).mean(0)


def shared_changes(changes: pd.DataFrame) -> dict[str, np.ndarray]:
    """The shared-response baselines: mean and gene-wise median of other groups' changes."""
    return {
        "mean_shift": changes.mean(axis=0).to_numpy(),
        "median_shift": changes.median(axis=0).to_numpy(),
    }


def score_change(
    change: np.ndarray, real_change: np.ndarray, source_mean: np.ndarray, deg_mask: np.ndarray
) -> dict[str, float]:
    """Δ-Pearson and R² of means over the DEGs, of a predicted mean change (log space)."""
    real_mean = source_mean + real_change
    return {
        "pearson_delta_deg": pearson(change[deg_mask], real_change[deg_mask]),
        "r2_mean_deg": pearson((source_mean + change)[deg_mask], real_mean[deg_mask]) ** 2,
    }


def transfer_check(
    model,
    groupby: str,
    source: str,
    target: str,
    adata: ad.AnnData | None = None,
    groups: Sequence[str] | None = None,
    n_degs: int = 50,
    readout: str = "calibrated",
    n_samples: int | None = 5,
    max_steps: int | None = None,
    train_kwargs: dict | None = None,
    progress: bool = True,
    key_added: str | None = "transfer_check",
) -> pd.DataFrame:
    """Check, on your own training data, whether the model beats the shared response.

    Leave one group out over the groups that have cells in both conditions: for each such
    group ``g``, refit a model like ``model`` (same class, :meth:`setup_anndata` arguments and
    init parameters) on the data without ``g``'s ``target`` cells, predict them from ``g``'s
    ``source`` cells, and score the model and two shared-response baselines on ``g``'s own top
    DEGs: mean shift (``g``'s source cells + the average change of the other groups) and median
    shift (the gene-wise median change). Where the model does not beat them on the groups you
    have, do not trust it on a group you have not measured.

    **Cost**: one extra training per checked group (``k`` groups: ``k`` fits, each about as long
    as ``model.train()``). Cheaper: ``max_steps`` (e.g. 200 instead of the default budget of
    at least 420 steps: about 2× faster) and ``groups`` (check a few). Briefly trained refits are
    weaker and noisier than the model, and can flip a verdict: explore with them, check at the
    default budget before you hedge.

    Parameters
    ----------
    model
        A trained :class:`~sctrvae.TRVAEModel`.
    groupby
        Column of ``adata.obs`` with the groups to leave out (cell types, patients).
    source, target
        The condition predicted from, and the condition predicted.
    adata
        Data to check on, with counts as the model was set up; default the model's own.
    groups
        Groups to leave out; default every group with cells in both conditions.
    n_degs
        Top Wilcoxon DEGs (target vs source, real cells) of each group that are scored.
    readout, n_samples
        Readout of :meth:`~sctrvae.TRVAEModel.predict`.
    max_steps
        Optimiser steps of each refit; default the model's default budget.
    train_kwargs
        Further keyword arguments of ``train()`` for each refit.
    progress
        Show a progress bar over the groups.
    key_added
        Also store the table in ``adata.uns[key_added]`` (``None``: do not).

    Returns
    -------
    One row per group × method (``"model"``, ``"mean_shift"``, ``"median_shift"``):
    ``group``, ``method``, ``pearson_delta_deg`` (Pearson r of predicted vs real mean change
    over the group's DEGs), ``r2_mean_deg`` (R² of mean expression over them), and per group
    ``margin`` (the model's Δ-Pearson minus the better baseline's), ``verdict`` ("the model
    beats the shared response here" / "does not") and ``reliability`` (1 where the verdict is
    that the model beats the shared response, else 0: whether the group is a reliable donor of
    response for its look-alikes) and ``lent`` (how far the group's source cells were covered,
    in the refit's ``z``, by groups treated in that refit, at most 1,
    :func:`~sctrvae.tl.donor_coverage`: where it is near 1 the check tested lending a
    look-alike's response); :func:`sctrvae.tl.hedge` reads both.
    ``table.attrs["changes"]``: per group, the real and predicted mean changes per gene
    (lists under ``"real"``, ``"model"``, ``"mean_shift"``, ``"median_shift"``), from which
    :func:`sctrvae.tl.hedge` estimates the uncertainty of a hedged change.
    """
    adata = model.adata if adata is None else adata
    condition_key = model.registry_["setup_args"]["condition_key"]
    baseline, changes = group_changes(adata, groupby, condition_key, source, target)
    checked = list(changes.index if groups is None else groups)
    missing = sorted(set(checked) - set(changes.index))
    if missing:
        raise ValueError(
            f"Groups {missing} lack cells in {source!r} or {target!r}; a check needs both. "
            f"Checkable: {list(changes.index)}."
        )
    if len(changes) < 3:
        raise ValueError("A transfer check needs at least three groups with both conditions.")
    labels = adata.obs[groupby].astype(str).to_numpy()
    condition = adata.obs[condition_key].astype(str).to_numpy()
    train_kwargs = dict(train_kwargs or {})
    if max_steps is not None:
        train_kwargs["max_steps"] = max_steps
    rows, changes_of = [], {}
    for g in tqdm(checked, desc="transfer check", disable=not progress):
        is_source, is_target = (
            (labels == g) & (condition == source),
            (labels == g) & (condition == target),
        )
        refit = refit_like(model, adata[~is_target].copy(), **train_kwargs)
        model_change = predicted_change(refit, adata[is_source].copy(), target, readout, n_samples)
        lenders = (condition == source) & np.isin(labels, changes.index) & (labels != g)
        lent = float(
            donor_coverage(
                refit.get_latent_representation(adata, indices=np.flatnonzero(is_source)),
                refit.get_latent_representation(adata, indices=np.flatnonzero(lenders)),
                labels[lenders],
            )
            .sum()
            .clip(max=1.0)
        )
        real_change = changes.loc[g].to_numpy()
        degs = top_degs(adata[is_target], adata[is_source], n_degs)
        deg_mask = adata.var_names.isin(degs)
        shared = shared_changes(changes.drop(index=g))
        predictions = {"model": model_change, **shared}
        group_rows = [
            {
                "group": g,
                "method": method,
                **score_change(change, real_change, baseline.loc[g].to_numpy(), deg_mask),
            }
            for method, change in predictions.items()
        ]
        margin = group_rows[0]["pearson_delta_deg"] - max(
            r["pearson_delta_deg"] for r in group_rows[1:]
        )
        # per gene, for the uncertainty of a hedged prediction (tl.hedge); lists, because
        # pandas compares attrs with == when it combines tables
        changes_of[g] = {k: v.tolist() for k, v in {"real": real_change, **predictions}.items()}
        for row in group_rows:
            row.update(
                margin=margin,
                verdict=VERDICTS[0] if margin > 0 else VERDICTS[1],
                reliability=float(margin > 0),
                lent=lent,
            )
        rows += group_rows
    table = pd.DataFrame(rows)
    table.attrs["changes"] = changes_of
    if key_added is not None:
        adata.uns[key_added] = table
    return table
