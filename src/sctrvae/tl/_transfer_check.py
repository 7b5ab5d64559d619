"""Does the model beat the shared response on your groups, and how sure is that verdict.

Repeated grouped cross-validation inside the training data.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from .._constants import (
    CHECK_BUDGET_FITS,
    CHECK_FOLDS,
    CHECK_GROUP_DRAWS,
    CHECK_MAX_CELLS,
    CHECK_MAX_DRAWS,
    CHECK_REPEATS,
    MIN_MARGIN_SD,
    READOUTS,
    VERDICT_LEVEL,
)
from .._utils import draws_per_cell, pearson, quiet_fitting
from ..train import step_budget, steps_per_epoch
from ._coverage import donor_coverage
from ._held_out import (
    GroupedData,
    grouped_folds,
    held_out_split,
    predicted_change,
    refit_like,
    release,
    score_change,
    sharing_matrices,
)

#: Verdicts of :func:`transfer_check`.
VERDICTS = ("the model beats the shared response here", "does not", "undecided")
#: Methods a transfer check scores, in the order of its table.
CHECK_METHODS = ("model", "mean_shift", "median_shift")


def margin_verdicts(margins: pd.DataFrame, level: float = VERDICT_LEVEL) -> pd.DataFrame:
    """Per group: mean margin, its standard error, verdict and reliability.

    ``margins`` has one row per score (columns ``group``, ``margin``: the model's Δ-Pearson minus
    the better baseline's in one refit). The spread between refits is pooled over groups (each
    group has few scores), floored at ``MIN_MARGIN_SD``; a verdict is called where the
    ``level`` two-sided t interval of the mean margin excludes 0, else "undecided".
    ``reliability`` is the probability, under that t distribution, that the margin is positive.
    """
    per_group = margins.groupby("group", sort=False)["margin"]
    mean, n = per_group.mean(), per_group.count()
    deviations = margins["margin"] - margins["group"].map(mean)
    df = int((n - 1).sum())
    sd = float(np.sqrt((deviations**2).sum() / df)) if df > 0 else 0.0
    sd = max(sd, MIN_MARGIN_SD)
    df = max(df, 1)
    se = sd / np.sqrt(n)
    tscore = mean / se
    bound = student_t.ppf(0.5 + level / 2, df)
    verdict = np.where(
        tscore > bound, VERDICTS[0], np.where(tscore < -bound, VERDICTS[1], VERDICTS[2])
    )
    return pd.DataFrame(
        {
            "margin": mean,
            "margin_se": se,
            "n_scores": n,
            "verdict": verdict,
            "reliability": student_t.cdf(tscore, df),
        }
    )


def refit_margins(changes: dict, baselines: Sequence[str] = CHECK_METHODS[1:]) -> pd.DataFrame:
    """One row per (group, refit): the refit's lead over the best of ``baselines`` on the group.

    ``changes`` is ``check.attrs["changes"]`` of :func:`transfer_check`; the lead is the
    model's Δ-Pearson over the group's DEGs minus the best baseline's in the same refit
    (columns ``group``, ``margin``, as :func:`margin_verdicts` reads them).
    """
    rows = []
    for group, c in changes.items():
        degs = np.asarray(c["degs"], dtype=int)
        real = np.asarray(c["real"])[degs]
        for i, model in enumerate(c["model"]):
            best = max(pearson(np.asarray(c[b][i])[degs], real) for b in baselines)
            rows.append({"group": group, "margin": pearson(np.asarray(model)[degs], real) - best})
    return pd.DataFrame(rows)


def refit_steps(n_train: int, n_refits: int, train_kwargs: dict) -> int:
    """Optimiser steps of each refit: ``CHECK_BUDGET_FITS`` default budgets shared by them."""
    budget = step_budget(
        steps_per_epoch(
            n_train, train_kwargs.get("train_size"), train_kwargs.get("batch_size", 128)
        )
    )
    return max(1, round(CHECK_BUDGET_FITS * budget / n_refits))


def transfer_check(
    model,
    groupby: str,
    source: str,
    target: str,
    adata: ad.AnnData | None = None,
    groups: Sequence[str] | None = None,
    n_degs: int = 50,
    readout: str = "calibrated",
    n_samples: int | None = None,
    n_folds: int = CHECK_FOLDS,
    n_repeats: int = CHECK_REPEATS,
    max_steps: int | None = None,
    train_kwargs: dict | None = None,
    random_state: int | None = 0,
    progress: bool = True,
    key_added: str | None = "transfer_check",
) -> pd.DataFrame:
    """Check, on your own training data, whether the model beats the shared response.

    Repeated grouped cross-validation over the groups with cells in both conditions: the
    checked groups are shuffled ``n_repeats`` times and cut into ``n_folds`` folds; for each
    fold a model like ``model`` (same class, :meth:`setup_anndata` arguments and init
    parameters) is refitted without the fold's ``target`` cells and predicts them from the
    fold's ``source`` cells. Each group is so scored ``n_repeats`` times, by different refits,
    on its own top DEGs, against two shared-response baselines built from that refit's training
    groups: mean shift (the group's source cells + the average change of those groups) and
    median shift (their gene-wise median change). The margin (the model's Δ-Pearson minus the
    better baseline's) is reported with its standard error between refits, and a verdict only
    where that allows one: "undecided" is the answer where the refits disagree or the margin is
    small. Where the model does not beat the shared response on the groups you have, do not
    trust it on a group you have not measured.

    **Cost**: ``n_folds × n_repeats`` refits (default 8) that share two default training
    budgets (each refit runs a quarter of the default step budget), plus their predictions and
    set-up: at most 3× the wall time of ``model.train()`` on the same data, 2.1× in the median
    of ``benchmarks/results/transfer_cost.md`` (1.9–2.8× on Kang and simulated patients; run to
    run, the same fit's wall time moves by up to 20% on a 2-core machine) and 1.85–2.41× at
    20,000–200,000 simulated cells (``benchmarks/results/workflow_scale.md``). ``max_steps``
    sets each refit's steps instead; ``groups`` checks a few groups only (they are then the
    ones cut into folds; the other groups stay in every refit).

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
        Groups to check; default every group with cells in both conditions.
    n_degs
        Top Wilcoxon DEGs (target vs source, real cells) of each group that are scored, ranked
        on at most 1,000 of its cells per condition (a random subset; its mean change reads
        every cell).
    readout, n_samples
        Readout of :meth:`~sctrvae.TRVAEModel.predict`. A prediction is scored on its group
        mean, so at most 1,000 of a group's source cells are predicted (a random subset, against
        its own mean; the same subset stands for the group among the lenders of ``lent``), and
        by default (``None``) a sampling readout draws per cell at most 5 and no more than give
        the group 750 draws (5 up to 150 cells, 1 from 750).
    n_folds, n_repeats
        Folds per shuffle (each fold's groups are held out by one refit) and shuffles.
        ``n_folds=len(groups), n_repeats=1`` is leave-one-group-out.
    max_steps
        Optimiser steps of each refit; default the check's share of the default budget.
    train_kwargs
        Further keyword arguments of ``train()`` for each refit (default: every cell trains,
        ``train_size=1.0``, and no early stopping, ``early_stopping=False``: a refit's budget is
        short and fixed).
    random_state
        Seed of the shuffles and of the subsets of large groups' cells (the refits' own
        randomness follows ``scvi.settings.seed``).
    progress
        Show a progress bar over the refits.
    key_added
        Also store the table in ``adata.uns[key_added]`` (``None``: do not).

    Returns
    -------
    One row per group × method (``"model"``, ``"mean_shift"``, ``"median_shift"``):
    ``group``, ``method``, ``pearson_delta_deg`` (Pearson r of predicted vs real mean change
    over the group's DEGs) and ``r2_mean_deg`` (R² of mean expression over them), each the
    mean over the group's refits; and per group ``margin`` (mean over refits of the model's
    Δ-Pearson minus the better baseline's), ``margin_se`` (its standard error: the spread
    between refits pooled over groups, at least 0.02 per refit), ``n_scores``, ``verdict``
    ("the model beats the shared response here" / "does not" / "undecided", at a 90% two-sided
    t interval), ``reliability`` (the probability that the margin is positive under that t
    distribution: whether the group is a reliable donor of response for its look-alikes) and
    ``lent`` (how far the group's source cells were covered, in the refits' ``z``, by groups
    treated in those refits, at most 1, :func:`~sctrvae.tl.donor_coverage`: near 1 the check
    tested lending a look-alike's response). :func:`sctrvae.tl.hedge` reads both.
    ``table.attrs["changes"]``: per group, the real mean change per gene (``"real"``), its DEGs'
    positions (``"degs"``) and, per refit that scored it, the predicted changes (lists under
    ``"model"``, ``"mean_shift"``, ``"median_shift"``), from which :func:`sctrvae.tl.hedge`
    calibrates the intervals of a hedged change; ``table.attrs["folds"]``: the groups each refit
    held out; ``["refits"]`` and ``["refit_steps"]``: what the check cost.
    """
    adata = model.adata if adata is None else adata
    condition_key = model.registry_["setup_args"]["condition_key"]
    data = GroupedData(
        adata,
        groupby,
        condition_key,
        source,
        target,
        n_degs,
        max_cells=CHECK_MAX_CELLS,
        random_state=random_state,
    )
    checked = list(data.groups if groups is None else groups)
    missing = sorted(set(checked) - set(data.groups))
    if missing:
        raise ValueError(
            f"Groups {missing} lack cells in {source!r} or {target!r}; a check needs both. "
            f"Checkable: {data.groups}."
        )
    if len(data.groups) < 3:
        raise ValueError("A transfer check needs at least three groups with both conditions.")
    folds = grouped_folds(checked, min(n_folds, len(checked)), n_repeats, random_state)
    # each refit runs its whole share of the budget: no validation split, no early stopping
    train_kwargs = {"train_size": 1.0, "early_stopping": False, **(train_kwargs or {})}
    if max_steps is None:
        max_steps = refit_steps(int(data.without_targets(folds[0]).sum()), len(folds), train_kwargs)
    train_kwargs["max_steps"] = max_steps

    def draws(n_cells: int) -> int | None:
        """Draws per cell of a group's prediction."""
        if n_samples is not None or not READOUTS[readout].draws:
            return n_samples
        return draws_per_cell(n_cells, CHECK_GROUP_DRAWS, CHECK_MAX_DRAWS)

    # each group's source cells the check reads (predicted when the group is held out, placed
    # among the lenders when it is treated): all, or the random CHECK_MAX_CELLS its DEGs are
    # ranked on (no DEGs ranked for groups that are not checked)
    cells = {g: data.capped(data.source_cells(g), g) for g in data.groups}
    scores, lent = [], {}
    changes_of = {g: {"model": [], "mean_shift": [], "median_shift": []} for g in checked}
    bar = tqdm(total=len(folds), desc="transfer check", disable=not progress)
    # the caller's progress bar is the one line a check prints
    splits = train_kwargs.pop("datasplitter_kwargs", {})
    # refits read their own AnnData: predicting and encoding it needs no new validation
    shared_data = sharing_matrices(adata)
    with quiet_fitting():
        for keep, held_out in data.folds(folds):
            split = {**splits, **held_out_split(keep)}
            refit = refit_like(model, shared_data, datasplitter_kwargs=split, **train_kwargs)
            held_names = [h.name for h in held_out]
            lenders = np.sort(
                np.concatenate([cells[g] for g in data.groups if g not in held_names])
            )
            lenders_z = refit.get_latent_representation(shared_data, indices=lenders)
            shared = data.shared(held_names)
            for group in held_out:
                predictions = {
                    "model": predicted_change(
                        refit,
                        shared_data,
                        group,
                        target,
                        readout,
                        draws(cells[group.name].size),
                        cells[group.name],
                    ),
                    **shared,
                }
                rows = {
                    method: score_change(
                        change, group.real_change, group.source_mean, group.deg_mask
                    )
                    for method, change in predictions.items()
                }
                scores += [{"group": group.name, "method": m, **s} for m, s in rows.items()]
                covered = donor_coverage(
                    refit.get_latent_representation(shared_data, indices=cells[group.name]),
                    lenders_z,
                    data.labels[lenders],
                )
                lent.setdefault(group.name, []).append(float(covered.sum().clip(max=1.0)))
                # lists, because pandas compares attrs with == when it combines tables
                for method, change in predictions.items():
                    changes_of[group.name][method].append(change.tolist())
            release(refit)
            del refit
            bar.update()
    bar.close()
    for g in checked:
        group = data.group(g)
        changes_of[g].update(
            real=group.real_change.tolist(), degs=np.flatnonzero(group.deg_mask).tolist()
        )
    verdicts = margin_verdicts(refit_margins(changes_of))
    verdicts["lent"] = pd.Series({g: float(np.mean(v)) for g, v in lent.items()})
    table = (
        pd.DataFrame(scores)
        .groupby(["group", "method"], sort=False)
        .mean()
        .reset_index()
        .join(verdicts, on="group")
    )
    order = {g: i for i, g in enumerate(checked)}
    table = table.sort_values("group", key=lambda c: c.map(order), kind="stable", ignore_index=True)
    table.attrs.update(
        changes=changes_of,
        folds=[list(fold) for fold in folds],
        refits=len(folds),
        refit_steps=max_steps,
    )
    if key_added is not None:
        adata.uns[key_added] = table
    return table
