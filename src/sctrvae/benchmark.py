"""Leave-one-group-out evaluation of condition transfer, with reference rows on the same folds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi

from ._utils import pearson
from .metrics import condition_mixing, log_normalized, score_log_expression, top_degs
from .model import TRVAEModel
from .module import TRVAEModule

#: Reference rows :func:`leave_one_out` can add to each fold.
REFERENCES = ("ceiling", "identity", "mean_shift", "cvae")


@contextmanager
def output_bias_from_zero() -> Iterator[None]:
    """Models built inside start their output bias at 0, as every model did before it had a start.

    For comparisons with the earlier defaults; see
    :meth:`~sctrvae.TRVAEModule.start_from_profiles` for what a model does otherwise.
    """
    start = TRVAEModule.start_from_profiles
    TRVAEModule.start_from_profiles = lambda module, gene_means: None
    try:
        yield
    finally:
        TRVAEModule.start_from_profiles = start


class PeakRSS:
    """Context manager sampling this process's resident memory; ``.peak_mb`` after exit."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        """Resident set size now, in MiB (Linux ``/proc``; 0 where unavailable)."""
        status = Path("/proc/self/status")
        if not status.exists():
            return 0.0
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak_mb = self.current_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


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
    with PeakRSS() as memory:
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
        "peak_rss_mb": memory.peak_mb,
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
    :func:`~sctrvae.metrics.condition_mixing`), ``train_seconds``, ``epochs`` and
    ``peak_rss_mb``.
    """
    unknown = set(references) - set(REFERENCES)
    if unknown:
        raise ValueError(f"Unknown references {sorted(unknown)}; choose from {REFERENCES}.")
    model_kwargs, train_kwargs = dict(model_kwargs or {}), dict(train_kwargs or {})
    variants = dict(methods or {"trvae": {}})
    if "cvae" in references:
        variants["cvae"] = {"mmd_weight": 0.0}
    cond = adata.obs[condition_key].astype(str).to_numpy()
    group = adata.obs[group_key].astype(str).to_numpy()
    if groups is None:
        groups = [g for g in pd.unique(group) if {source, target} <= set(cond[group == g])]
    lognorm = log_normalized(adata)
    group_delta = {
        g: lognorm[(group == g) & (cond == target)].mean(0)
        - lognorm[(group == g) & (cond == source)].mean(0)
        for g in pd.unique(group)
        if {source, target} <= set(cond[group == g])
    }
    rows = []
    for g in groups:
        is_source, is_target = (group == g) & (cond == source), (group == g) & (cond == target)
        if not is_source.any() or not is_target.any():
            raise ValueError(f"Group {g!r} has no cells in {source!r} or in {target!r}.")
        source_cells, real = adata[is_source].copy(), adata[is_target].copy()
        degs = top_degs(real, source_cells, n_degs)
        deg_mask = adata.var_names.isin(degs)
        real_lognorm, source_lognorm = lognorm[is_target], lognorm[is_source]

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
                adata[~is_target].copy(),
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
            others = [d for h, d in group_delta.items() if h != g]
            shifted = np.clip(source_lognorm + np.mean(others, axis=0), 0.0, None)
            fold.append({"method": "mean_shift", "readout": "cells", **scores_of(shifted)})
        rows += [
            {"group": g, "n_source": int(is_source.sum()), "n_target": int(is_target.sum()), **row}
            for row in fold
        ]
    return pd.DataFrame(rows)
