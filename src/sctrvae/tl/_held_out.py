"""Hold groups' target cells out of a fit, and score what a prediction of them gets right.

The one engine behind :func:`sctrvae.tl.transfer_check` and
:func:`sctrvae.benchmark.leave_one_out`: which groups a fit holds out (:func:`grouped_folds`),
what is known of each held-out group from its real cells (:class:`HeldOutGroup`), the
shared-response baselines the fit's own training groups give (:func:`shared_changes`), and the
scores of a predicted mean change (:func:`score_change`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .._constants import PREDICTION_LAYER
from .._utils import log1p_normalize, pearson, quiet_fitting
from ..metrics import top_degs
from ._similarity import group_changes


def grouped_folds(
    groups: Sequence[str], n_folds: int, n_repeats: int, random_state: int | None = 0
) -> list[tuple[str, ...]]:
    """Repeated grouped K-fold: ``n_repeats`` shuffles of ``groups``, each cut into ``n_folds``.

    Each fold is the set of groups one fit holds out; every group is held out once per repeat.
    ``n_folds=len(groups), n_repeats=1`` is leave-one-group-out.
    """
    if not 1 <= n_folds <= len(groups):
        raise ValueError(f"n_folds must be between 1 and the {len(groups)} groups, got {n_folds}.")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be at least 1, got {n_repeats}.")
    rng = np.random.default_rng(random_state)
    folds = []
    for _ in range(n_repeats):
        order = rng.permutation(np.asarray(groups, dtype=object))
        folds += [tuple(sorted(fold)) for fold in np.array_split(order, n_folds)]
    return folds


@dataclass(frozen=True)
class HeldOutGroup:
    """What the real cells say of one group: its cells, mean change, baseline and DEGs."""

    name: str
    source_cells: np.ndarray
    target_cells: np.ndarray
    real_change: np.ndarray
    source_mean: np.ndarray
    deg_mask: np.ndarray


class GroupedData:
    """An AnnData's groups with cells in both conditions, and what their real cells say.

    Parameters
    ----------
    adata
        Counts in ``X``.
    groupby, condition_key
        Columns of ``adata.obs`` with the groups and the condition.
    source, target
        The condition predicted from, and the condition predicted.
    n_degs
        Top Wilcoxon DEGs (target vs source, real cells) of each group that are scored.
    lognorm
        The cells' expression already log-normalised, for the changes and baselines (see
        :func:`~sctrvae.tl.group_changes`); DEGs are still ranked on the counts.
    max_cells
        Rank a group's DEGs on at most this many of its cells per condition (a random subset,
        :meth:`capped`; default all). A top-50 ranking is settled long before thousands of
        cells, while a Wilcoxon test of 12,000 against 12,000 cells takes seconds; the changes
        and baselines always use every cell.
    random_state
        Seed of those subsets (each group's drawn from the seed and the group's position).
    """

    def __init__(
        self,
        adata: ad.AnnData,
        groupby: str,
        condition_key: str,
        source: str,
        target: str,
        n_degs: int,
        lognorm: np.ndarray | None = None,
        max_cells: int | None = None,
        random_state: int | None = 0,
    ):
        self.adata, self.n_degs = adata, n_degs
        self.max_cells, self.random_state = max_cells, random_state
        self.baseline, self.changes = group_changes(
            adata, groupby, condition_key, source, target, lognorm
        )
        self.labels = adata.obs[groupby].astype(str).to_numpy()
        condition = adata.obs[condition_key].astype(str).to_numpy()
        self.is_source, self.is_target = condition == source, condition == target
        self._held_out: dict[str, HeldOutGroup] = {}

    @property
    def groups(self) -> list[str]:
        """Groups with cells in both conditions."""
        return list(self.changes.index)

    def source_cells(self, name: str) -> np.ndarray:
        """Positions of group ``name``'s source cells."""
        return np.flatnonzero(self.is_source & (self.labels == name))

    def group(self, name: str) -> HeldOutGroup:
        """The real cells' view of group ``name`` (DEGs computed once)."""
        if name not in self._held_out:
            source = self.source_cells(name)
            target = np.flatnonzero(self.is_target & (self.labels == name))
            ranked = [self.capped(cells, name) for cells in (target, source)]
            degs = top_degs(self.adata[ranked[0]], self.adata[ranked[1]], self.n_degs)
            self._held_out[name] = HeldOutGroup(
                name,
                source,
                target,
                self.changes.loc[name].to_numpy(),
                self.baseline.loc[name].to_numpy(),
                self.adata.var_names.isin(degs),
            )
        return self._held_out[name]

    def capped(self, cells: np.ndarray, name: str) -> np.ndarray:
        """``cells`` of group ``name``, or a random ``max_cells`` of them (sorted).

        The same cells for the same group and seed: its DEGs are ranked on them, and
        :func:`~sctrvae.tl.transfer_check` predicts the same source cells.
        """
        if self.max_cells is None or cells.size <= self.max_cells:
            return cells
        seed = None if self.random_state is None else [self.random_state, self.groups.index(name)]
        return np.sort(np.random.default_rng(seed).choice(cells, self.max_cells, replace=False))

    def without_targets(self, held_out: Sequence[str]) -> np.ndarray:
        """Mask of the cells a fit that holds out ``held_out`` trains on."""
        return ~(self.is_target & np.isin(self.labels, list(held_out)))

    def shared(self, held_out: Sequence[str]) -> dict[str, np.ndarray]:
        """The shared-response baselines of a fit that holds out ``held_out``."""
        return shared_changes(self.changes.drop(index=list(held_out)))

    def folds(self, folds: Sequence[Sequence[str]]) -> Iterator[tuple[np.ndarray, list]]:
        """Per fold: the training mask and the held-out groups (:class:`HeldOutGroup`)."""
        for fold in folds:
            yield self.without_targets(fold), [self.group(g) for g in fold]


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


def refit_like(model, adata: ad.AnnData, **train_kwargs):
    """A model of ``model``'s class, set up and initialised as ``model`` was, trained on ``adata``.

    ``adata`` is set up with the registered arguments of ``model`` (``setup_args`` of its
    registry) and the model is built with ``model.init_params_``. Training on index lists
    (``datasplitter_kwargs={"external_indexing": [train, ...]}``), the decoder starts from the
    training cells only (:meth:`~sctrvae.TRVAEModel.start_decoder`). The fit prints no progress
    bar and no Lightning banner; warnings still show.
    """
    setup_args = {k: v for k, v in model.registry_["setup_args"].items() if v is not None}
    params = model.init_params_
    init_kwargs = {**params["non_kwargs"], **params["kwargs"].get("module_kwargs", {})}
    cls = type(model)
    with quiet_fitting():
        cls.setup_anndata(adata, **setup_args)
        refit = cls(adata, **init_kwargs)
        split = train_kwargs.get("datasplitter_kwargs", {}).get("external_indexing")
        if split is not None:  # held-out cells must not shape the start either
            refit.start_decoder(split[0])
        refit.train(**{"enable_progress_bar": False, **train_kwargs})
    return refit


def release(model) -> None:
    """Drop every AnnData registration of ``model``, an internal refit about to be deleted.

    scvi-tools keeps each AnnData a model has seen (its training data, every AnnData it
    predicted) in class-level stores that outlive the model: without this, each refit's
    predictions would stay in memory until the process ends.
    """
    model.deregister_manager(model.adata)
    type(model)._per_instance_manager_store.pop(model.id, None)


def sharing_matrices(adata: ad.AnnData) -> ad.AnnData:
    """A new AnnData on ``adata``'s count matrices (not copied), with its own ``obs`` and ``var``.

    Refits register it (``setup_anndata`` writes into its ``obs`` and ``uns``, not ``adata``'s)
    and train on index lists (:func:`held_out_split`), so that no refit holds a copy of the
    data. A backed AnnData is read into memory once instead.
    """
    if adata.isbacked:
        return adata.to_memory()
    return ad.AnnData(
        X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(), layers=dict(adata.layers)
    )


def held_out_split(keep: np.ndarray) -> dict:
    """``datasplitter_kwargs`` of a refit that trains on the cells of mask ``keep`` only.

    Every kept cell trains (no validation); the others form the unused test split.
    """
    return {
        "external_indexing": [
            np.flatnonzero(keep),
            np.array([], dtype=int),
            np.flatnonzero(~keep),
        ]
    }


def predicted_change(
    model,
    adata: ad.AnnData,
    group: HeldOutGroup,
    target_condition: str,
    readout: str,
    n_samples: int | None,
    cells: np.ndarray | None = None,
) -> np.ndarray:
    """Mean log-normalised prediction of ``group``'s source cells minus their own mean.

    ``cells``: positions of the source cells to predict (default all of the group's); a subset
    is compared with its own mean.
    """
    cells = group.source_cells if cells is None else cells
    subset = cells.size < group.source_cells.size
    source = adata[cells].copy()
    # only the readout, one row per cell: not every draw of every gene
    model.predict(
        source,
        target_condition=target_condition,
        readout=readout,
        n_samples=n_samples,
        key_added=PREDICTION_LAYER,
        return_anndata=False,
    )
    predicted = source.layers[PREDICTION_LAYER].mean(0, dtype=np.float64)
    # a group's own mean is the one the engine already holds
    return predicted - (log1p_normalize(source.X).mean(0) if subset else group.source_mean)
