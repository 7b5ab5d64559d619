"""TRVAEEnsemble: several TRVAEModels fitted with different seeds, predictions averaged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
from scvi import settings
from tqdm.auto import tqdm

from .._constants import (
    CALIBRATION_UNS,
    DRAW_OBS,
    MEMBER_OBS,
    NORMALIZED_LAYER,
    PREDICTION_LAYER,
    PREDICTION_UNS,
    READOUTS,
    Representation,
)
from .._utils import (
    blank_layer,
    log_expression,
    quiet_fitting,
    selected_positions,
    write_layer,
)
from ._persistence import atomic_directory, manifest_content, read_manifest
from ._rollback import restores_adata_on_failure
from ._trvae import TRVAEModel
from .base._prediction_mixin import check_returned, chosen_readout

#: File naming the members of a saved ensemble.
MANIFEST = "ensemble.json"


class TRVAEEnsemble:
    """``n_models`` :class:`~sctrvae.TRVAEModel` on the same data, each fitted from its own seed.

    A fit moves between seeds (a Kang fold by up to ±0.03 in Δ-Pearson); averaging the
    predictions of independently fitted models cancels part of that spread, at ``n_models``
    times the training and prediction time. ``benchmarks/ensemble.py`` measures what it buys.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`TRVAEModel.setup_anndata`.
    n_models
        Number of members.
    **model_kwargs
        Keyword arguments of :class:`~sctrvae.TRVAEModel`, the same for every member.

    Examples
    --------
    >>> sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    >>> ensemble = sctrvae.TRVAEEnsemble(adata, n_models=3)
    >>> ensemble.train()
    >>> ensemble.predict(adata, indices=ctrl, target_condition="stimulated", key_added="stim")
    """

    def __init__(self, adata: ad.AnnData | None = None, n_models: int = 3, **model_kwargs):
        if not (isinstance(n_models, int) and n_models >= 1):
            raise ValueError(f"n_models must be a positive integer, got {n_models!r}.")
        self.members = [TRVAEModel(adata, **model_kwargs) for _ in range(n_models)]

    @classmethod
    def from_models(cls, models: Sequence[TRVAEModel]) -> TRVAEEnsemble:
        """An ensemble of already trained models of the same genes and conditions."""
        models = list(models)
        if not models:
            raise ValueError("Pass at least one model.")
        first = models[0]
        for model in models[1:]:
            if not (
                model.training_var_names.equals(first.training_var_names)
                and model.conditions == first.conditions
            ):
                raise ValueError("All models must be trained on the same genes and conditions.")
        ensemble = cls.__new__(cls)
        ensemble.members = models
        return ensemble

    @property
    def n_models(self) -> int:
        return len(self.members)

    @property
    def adata(self) -> ad.AnnData | None:
        return self.members[0].adata

    def __repr__(self) -> str:
        return f"TRVAEEnsemble of {self.n_models} models: {self.members[0].module.summary}."

    def train(self, **train_kwargs) -> None:
        """Train every member with :meth:`TRVAEModel.train` (same arguments).

        With ``scvi.settings.seed = s`` member ``i`` trains with seed ``s + i`` (the setting is
        restored afterwards), so the ensemble is reproducible; without a seed each member draws
        its own initialisation, split and minibatches. One progress bar counts the members
        (``enable_progress_bar=False``: none); the members' own fits print nothing but warnings.
        """
        seed = settings.seed
        progress = train_kwargs.pop("enable_progress_bar", True)
        try:
            for i, member in enumerate(tqdm(self.members, desc="ensemble", disable=not progress)):
                if seed is not None:
                    settings.seed = seed + i
                with quiet_fitting():
                    member.train(enable_progress_bar=False, **train_kwargs)
        finally:
            if seed is not None:
                settings.seed = seed

    @restores_adata_on_failure
    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        key_added: str | None = None,
        return_anndata: bool = True,
        **predict_kwargs,
    ) -> ad.AnnData | None:
        """The members' counterfactual predictions, combined.

        Arguments as in :meth:`TRVAEModel.predict`, for each member. ``"mean"``: the members'
        expected counts and proportions are averaged, then log-normalised. ``"sampled"`` and
        ``"calibrated"``: every member contributes ``n_samples`` draws per cell (each member
        calibrated by its own reconstruction error), stacked by member then draw
        (``obs["sctrvae_member"]``, ``obs["sctrvae_draw"]`` counts over all of them);
        ``uns["sctrvae_calibration"]`` is the members' mean correction. ``key_added`` writes
        the per-cell mean over all members' readouts. With ``return_anndata=False`` only that
        layer is computed, each member's minibatches as they are decoded (memory: two layers,
        the running sum and a member's), and ``None`` is returned.
        """
        adata = self.adata if adata is None else adata
        if not return_anndata:
            return self._write_layer(adata, indices, key_added, predict_kwargs)
        preds = [
            member.predict(adata, indices=indices, **predict_kwargs) for member in self.members
        ]
        record = {**preds[0].uns[PREDICTION_UNS], "n_models": self.n_models}
        if READOUTS[record["readout"]].draws == 0:
            pred = preds[0].copy()
            pred.X = np.mean([p.X for p in preds], axis=0)
            if NORMALIZED_LAYER in pred.layers:
                pred.layers[NORMALIZED_LAYER] = np.mean(
                    [p.layers[NORMALIZED_LAYER] for p in preds], 0
                )
            pred.layers[PREDICTION_LAYER] = log_expression(
                pred.X, self.members[0].module.likelihood
            )
            per_cell = pred.layers[PREDICTION_LAYER]
        else:
            n_draws = record["n_samples"]
            for member, p in enumerate(preds):
                p.obs[MEMBER_OBS] = member
                p.obs[DRAW_OBS] += member * n_draws
                p.obs_names = [
                    f"{name.rsplit('-', 1)[0]}-{draw}"
                    for name, draw in zip(p.obs_names, p.obs[DRAW_OBS], strict=True)
                ]
            pred = ad.concat(preds, merge="same", uns_merge="first")
            n_cells = preds[0].n_obs // n_draws
            if CALIBRATION_UNS in preds[0].uns:
                tables = [p.uns[CALIBRATION_UNS] for p in preds]
                pred.uns[CALIBRATION_UNS] = sum(tables) / len(tables)
            per_cell = pred.layers[PREDICTION_LAYER].reshape(-1, n_cells, pred.n_vars).mean(0)
        pred.uns[PREDICTION_UNS] = record
        if key_added is not None:
            # the members validated adata and indices already
            layer = blank_layer(adata)
            layer[selected_positions(adata.n_obs, indices)] = per_cell
            write_layer(adata, layer, key_added, record)
        return pred

    def _write_layer(
        self,
        adata: ad.AnnData,
        indices: Sequence[int] | None,
        key_added: str | None,
        predict_kwargs: dict,
    ) -> None:
        """``predict(..., return_anndata=False)``: the members' per-cell layers, combined."""
        check_returned(False, key_added)
        readout = chosen_readout(predict_kwargs.get("readout"), predict_kwargs.get("n_samples"))
        # what predict averages over the members: a deterministic readout's expected counts,
        # drawn readouts' log-normalised values (an unknown readout is refused by the members)
        spec = READOUTS.get(readout)
        averaged = "expression" if spec is not None and spec.draws == 0 else "log_normalized"
        total = None
        for member in self.members:
            _, layer, record = member._predict(
                adata, indices, return_anndata=False, per_cell=averaged, **predict_kwargs
            )
            total = layer if total is None else np.add(total, layer, out=total)
        total /= self.n_models
        if averaged == "expression":
            rows = np.unique(selected_positions(adata.n_obs, indices))
            total[rows] = log_expression(total[rows], self.members[0].module.likelihood)
        write_layer(adata, total, key_added, {**record, "n_models": self.n_models})

    @restores_adata_on_failure
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        representation: Representation = "z",
        key_added: str | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The members' ``z`` (or ``y``) side by side: ``(n_cells, n_models × n_latent)``.

        Each member has its own coordinates, so they are concatenated, not averaged: distances
        in the result are those of all members at once (e.g. for ``sc.pp.neighbors``).
        Arguments as in :meth:`TRVAEModel.get_latent_representation`.
        """
        adata = self.adata if adata is None else adata
        result = np.concatenate(
            [
                member.get_latent_representation(
                    adata,
                    indices=indices,
                    give_mean=give_mean,
                    representation=representation,
                    batch_size=batch_size,
                )
                for member in self.members
            ],
            axis=1,
        )
        if key_added is not None:
            if indices is not None:
                raise ValueError("key_added writes every cell of adata; pass indices=None.")
            adata.obsm[key_added] = result
        return result

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save every member under ``dir_path/member_<i>`` (the AnnData once, with the first).

        Written to a temporary directory beside ``dir_path`` and renamed into place when
        complete, like :meth:`TRVAEModel.save`.
        """
        path = Path(dir_path)
        if path.exists() and not overwrite and any(path.iterdir()):
            raise ValueError(f"{dir_path} already exists; pass overwrite=True to replace it.")
        names = [f"member_{i}" for i in range(self.n_models)]
        # as for a model: a save that fails leaves an earlier one whole
        with atomic_directory(path) as tmp:
            for i, (name, member) in enumerate(zip(names, self.members, strict=True)):
                member.save(os.fspath(tmp / name), save_anndata=save_anndata and i == 0)
            (tmp / MANIFEST).write_text(manifest_content(names))

    @classmethod
    def load(
        cls, dir_path: str, adata: ad.AnnData | Literal[False] | None = None, **kwargs
    ) -> TRVAEEnsemble:
        """Load an ensemble saved with :meth:`save`; arguments as in :meth:`TRVAEModel.load`."""
        path = Path(dir_path)
        names = read_manifest(path, MANIFEST)
        first = TRVAEModel.load(os.fspath(path / names[0]), adata=adata, **kwargs)
        rest_adata = first.adata if adata is None else adata
        rest = [
            TRVAEModel.load(os.fspath(path / name), adata=rest_adata, **kwargs)
            for name in names[1:]
        ]
        return cls.from_models([first, *rest])
