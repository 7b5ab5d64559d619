"""Leave-one-group-out evaluation of condition transfer, with reference rows on the same folds."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scvi

from .._utils import pearson
from ..metrics import condition_mixing, log_normalized, score_log_expression
from ..model import TRVAEModel
from ..tl._held_out import GroupedData

#: Reference rows :func:`leave_one_out` can add to each fold.
REFERENCES = ("ceiling", "identity", "mean_shift", "cvae")


def _model_rows(
    method: str,
    train: ad.AnnData,
    source: ad.AnnData,
    condition_key: str,
    group_key: str,
    target: str,
    scores_of,
    model_kwargs: dict,
    train_kwargs: dict,
    n_samples: int,
) -> list[dict]:
    model_kwargs = dict(model_kwargs)
    labels_key = model_kwargs.pop("labels_key", None)
    TRVAEModel.setup_anndata(train, condition_key=condition_key, labels_key=labels_key)
    model = TRVAEModel(train, **model_kwargs)
    start = time.perf_counter()
    model.train(**{"enable_progress_bar": False, **train_kwargs})
    seconds = time.perf_counter() - start
    mean = model.predict(source, target_condition=target)
    drawn = model.predict(
        source, target_condition=target, readout="calibrated", n_samples=n_samples
    )
    # alignment of the training cells' conditions within each group, where the MMD acts (y)
    mixing = {
        f"mixing_{rep}": condition_mixing(
            model.get_latent_representation(representation=rep),
            train.obs[condition_key].to_numpy(),
            train.obs[group_key].to_numpy(),
        )
        for rep in ("y", "z")
    }
    extra = {
        **mixing,
        "train_seconds": seconds,
        "epochs": len(model.history["elbo_train"]),
    }
    return [
        {
            "method": method,
            "readout": "mean",
            **scores_of(log_normalized(mean, "normalized")),
            **extra,
        },
        {"method": method, "readout": "sampled", **scores_of(log_normalized(drawn)), **extra},
        {
            "method": method,
            "readout": "calibrated",
            **scores_of(drawn.layers["log_normalized"]),
            **extra,
        },
    ]


def leave_one_out(
    adata: ad.AnnData,
    condition_key: str,
    group_key: str,
    source: str,
    target: str,
    groups: Sequence[str] | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    references: Sequence[str] = REFERENCES,
    methods: Mapping[str, Mapping] | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
    n_degs: int = 100,
    n_samples: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Hold out each group's target-condition cells in turn, predict them, score the prediction.

    For each group ``g``: train on all cells except those of ``g`` in ``target``, predict them
    from the cells of ``g`` in ``source``, and score against the real ones with
    :func:`~sctrvae.metrics.score_log_expression` over all genes and the top ``n_degs`` DEGs of
    ``g`` (Wilcoxon, real target vs source).

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    condition_key, group_key
        ``obs`` columns of the condition and of the group (cell type) to hold out.
    source, target
        Conditions to transfer from and to.
    groups
        Groups to hold out (default: every group with cells in both conditions).
    model_kwargs, train_kwargs
        Passed to :class:`~sctrvae.TRVAEModel` and its ``train``.
    references
        Any of ``"ceiling"`` (a random half of the real target cells scored against the other
        half), ``"identity"`` (the source cells unchanged), ``"mean_shift"`` (source cells plus
        the average change of the other groups, in log space) and ``"cvae"`` (the same model
        with ``mmd_weight=0``).
    methods
        Model variants, each a name and its overrides of ``model_kwargs`` (a ``"labels_key"``
        entry is passed to ``setup_anndata`` instead), e.g.
        ``{"label": {"labels_key": "cell_type", "mmd_mode": "label"}}``; default
        ``{"trvae": {}}``.
    truth
        Optional true change of each group's genes (e.g. a simulator's log-fold change, NaN for
        genes not to score): adds ``pearson_delta_true``, the Pearson r of the predicted change
        of the mean log-normalised expression with it.
    n_degs
        Number of DEGs for the ``*_deg`` scores.
    n_samples
        NB draws per source cell for the ``"sampled"`` and ``"calibrated"`` readouts (more
        draws, less Monte Carlo noise in the predicted means and variances).
    seed
        ``scvi.settings.seed`` before each model, and the seed of the ceiling's split.

    Returns
    -------
    One row per (group, method, readout): ``readout`` is ``"mean"`` (predicted proportions,
    deterministic), ``"sampled"`` (NB draws normalised like real cells), ``"calibrated"`` (the
    same draws with ``predict(readout="calibrated")``'s correction) or ``"cells"`` (the references
    built from real cells); the six scores, and for models the condition mixing of the training
    cells within groups in ``y`` and ``z`` (``mixing_y``, ``mixing_z``, see
    :func:`~sctrvae.metrics.condition_mixing`), ``train_seconds`` and ``epochs``.
    """
    unknown = set(references) - set(REFERENCES)
    if unknown:
        raise ValueError(f"Unknown references {sorted(unknown)}; choose from {REFERENCES}.")
    model_kwargs, train_kwargs = dict(model_kwargs or {}), dict(train_kwargs or {})
    variants = dict(methods or {"trvae": {}})
    if "cvae" in references:
        variants["cvae"] = {"mmd_weight": 0.0}
    data = GroupedData(adata, group_key, condition_key, source, target, n_degs)
    if groups is None:
        groups = [g for g in pd.unique(data.labels) if g in data.groups]
    missing = [g for g in groups if g not in data.groups]
    if missing:
        raise ValueError(f"Group {missing[0]!r} has no cells in {source!r} or in {target!r}.")
    lognorm = log_normalized(adata)
    rows = []
    for keep, (held,) in data.folds([(g,) for g in groups]):
        g, deg_mask = held.name, held.deg_mask
        real_lognorm, source_lognorm = lognorm[held.target_cells], lognorm[held.source_cells]
        source_cells = adata[held.source_cells].copy()

        def scores_of(
            pred, real=real_lognorm, source_lognorm=source_lognorm, deg_mask=deg_mask, g=g
        ):
            scores = score_log_expression(pred, real, source_lognorm, deg_mask)
            if truth is not None:
                known = np.isfinite(truth[g])
                change = (pred.mean(0) - source_lognorm.mean(0))[known]
                scores["pearson_delta_true"] = pearson(change, truth[g][known])
            return scores

        fold = []
        for method, overrides in variants.items():
            scvi.settings.seed = seed
            fold += _model_rows(
                method,
                adata[keep].copy(),
                source_cells,
                condition_key,
                group_key,
                target,
                scores_of,
                {**model_kwargs, **overrides},
                train_kwargs,
                n_samples,
            )
        if "ceiling" in references:
            order = np.random.default_rng(seed).permutation(real_lognorm.shape[0])
            half = order.size // 2
            ceiling = scores_of(real_lognorm[order[:half]], real_lognorm[order[half:]])
            fold.append({"method": "ceiling", "readout": "cells", **ceiling})
        if "identity" in references:
            fold.append({"method": "identity", "readout": "cells", **scores_of(source_lognorm)})
        if "mean_shift" in references:
            shift = data.shared([g])["mean_shift"]
            shifted = np.clip(source_lognorm + shift, 0.0, None)
            fold.append({"method": "mean_shift", "readout": "cells", **scores_of(shifted)})
        rows += [
            {
                "group": g,
                "n_source": held.source_cells.size,
                "n_target": held.target_cells.size,
                **row,
            }
            for row in fold
        ]
    return pd.DataFrame(rows)
