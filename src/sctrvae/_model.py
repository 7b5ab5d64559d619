"""TRVAEModel: the user-facing trVAE model on scvi-tools."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model._utils import get_max_epochs_heuristic, use_distributed_sampler
from scvi.model.base import ArchesMixin, BaseModelClass, UnsupervisedTrainingMixin, VAEMixin
from scvi.utils import setup_anndata_dsp
from scvi.utils._docstrings import devices_dsp

from ._calibration import calibrate_draws
from ._callbacks import RestoreBestWeights, StopOnNonFiniteLoss
from ._data_splitter import ConditionBalancedDataSplitter
from ._mmd import MMDMode
from ._module import Dispersion, Likelihood, TRVAEModule
from ._training_plan import TRVAETrainingPlan
from ._validation import (
    check_anndata_object,
    check_condition_column,
    check_condition_sizes,
    check_expression,
    check_finite,
    check_known_conditions,
    check_not_view,
    check_var_names,
)
from ._version import __version__

logger = logging.getLogger(__name__)

#: Adam learning rate of ``train()``: converges in about a third of the epochs 1e-3 needs here.
DEFAULT_LR = 3e-3
#: Epochs of linear KL warm-up; early stopping waits for them (the loss changes meaning meanwhile).
KL_WARMUP_EPOCHS = 10


class TRVAEModel(VAEMixin, ArchesMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """trVAE: predict how cells respond to a condition they were never observed in.

    A conditional VAE on raw counts with an MMD penalty between conditions on the first decoder
    layer ``y`` (Lotfollahi et al., Bioinformatics 2020). Encode cells with their own condition,
    decode them with another one: :meth:`predict`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden, n_latent, n_layers, dropout_rate, likelihood, dispersion, mmd_weight, \
kernel_bandwidths, kl_weight
        See :class:`~sctrvae.TRVAEModule`.
    mmd_mode
        ``"global"`` (default), ``"label"`` or ``"reweighted"`` (see
        :class:`~sctrvae.TRVAEModule`); the last two need ``labels_key`` in
        :meth:`setup_anndata`. The user guide page on the MMD says why the default is global.
    **module_kwargs
        Further keyword arguments of :class:`~sctrvae.TRVAEModule`.

    Examples
    --------
    >>> sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    >>> model = sctrvae.TRVAEModel(adata)
    >>> model.train()
    >>> pred = model.predict(adata[ctrl_cells], target_condition="stimulated")
    """

    _module_cls = TRVAEModule
    _data_splitter_cls = ConditionBalancedDataSplitter
    _training_plan_cls = TRVAETrainingPlan

    def __init__(
        self,
        adata: ad.AnnData,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        likelihood: Likelihood = "nb",
        dispersion: Dispersion = "gene",
        mmd_weight: float = 100.0,
        kernel_bandwidths: str | Sequence[float] = "auto",
        kl_weight: float = 1.0,
        mmd_mode: MMDMode = "global",
        **module_kwargs,
    ):
        super().__init__(adata)
        if (
            mmd_mode != "global"
            and REGISTRY_KEYS.LABELS_KEY not in self.adata_manager.data_registry
        ):
            raise ValueError(
                f"mmd_mode={mmd_mode!r} compares cells of the same label: register them with "
                "setup_anndata(..., labels_key=...), or use mmd_mode='global'."
            )
        n_conditions = self.summary_stats.n_batch
        if n_conditions < 2 and mmd_weight > 0:
            raise ValueError(
                f"The condition column has {n_conditions} category; the MMD needs at least two "
                "conditions (or set mmd_weight=0 for a plain VAE)."
            )
        check_expression(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY), likelihood, self._x_name
        )
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_conditions=n_conditions,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            likelihood=likelihood,
            dispersion=dispersion,
            mmd_weight=mmd_weight,
            kernel_bandwidths=kernel_bandwidths,
            kl_weight=kl_weight,
            mmd_mode=mmd_mode,
            n_labels=self.summary_stats.get("n_labels", 0),
            **module_kwargs,
        )
        self._model_summary_string = (
            f"TRVAEModel: {n_conditions} conditions, n_latent={n_latent}, n_hidden={n_hidden}, "
            f"n_layers={n_layers}, likelihood={likelihood}, dispersion={dispersion}, "
            f"mmd_weight={mmd_weight}, mmd_mode={mmd_mode}, kernel_bandwidths={kernel_bandwidths}."
        )
        # saved with the model (scvi-tools saves attributes ending in "_"); load restores it
        self.sctrvae_version_ = __version__
        self.init_params_ = self._get_init_params(locals())

    @property
    def _x_name(self) -> str:
        """How the registered count matrix is spelled in messages."""
        return _matrix_name(self.registry_["setup_args"]["layer"])

    @property
    def training_var_names(self) -> pd.Index:
        """Genes the model was trained on, in the training order (kept in the saved registry)."""
        return _registry_var_names(self.registry_)

    @property
    def conditions(self) -> list[str]:
        """Condition categories seen in training, in code order."""
        mapping = self.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        return [str(c) for c in mapping]

    @property
    def condition_key(self) -> str:
        """The ``adata.obs`` column holding the condition."""
        return self.get_state_registry(REGISTRY_KEYS.BATCH_KEY).original_key

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        condition_key: str,
        layer: str | None = None,
        labels_key: str | None = None,
        **kwargs,
    ) -> None:
        """%(summary)s.

        Parameters
        ----------
        %(param_adata)s
        condition_key
            Column of ``adata.obs`` with the condition (e.g. control / stimulated); two or more
            categories.
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        labels_key
            Optional column of ``adata.obs`` with a cell label (e.g. the cell type). It enables
            the MMD within each label (``TRVAEModel(mmd_mode="label")``) or at equal label
            proportions (``"reweighted"``), and makes minibatches hold every (label, condition)
            pair. Cells passed to the model later must carry a known label too.

        Notes
        -----
        As in all of scvi-tools, registering adds ``_scvi_*`` columns to ``adata.obs`` and
        ``_scvi_*`` keys to ``adata.uns``; nothing else of ``adata`` is changed. Views are
        rejected (make a copy first). Backed AnnData (``ad.read_h5ad(path, backed="r")``) is
        accepted: the input checks read its matrix in row blocks, and training and prediction
        read only each minibatch's rows from disk.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        # validate everything before scvi-tools writes to adata, so a failure changes nothing
        check_anndata_object(adata, "setup_anndata")
        check_not_view(adata, "setup_anndata")
        if layer is not None and layer not in adata.layers:
            raise KeyError(
                f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers)}); pass "
                "the name of the raw-count layer, or layer=None for adata.X."
            )
        source_registry = kwargs.get("source_registry")
        if source_registry is not None:  # load() or a model loaded without data
            check_var_names(adata.var_names, _registry_var_names(source_registry))
        check_condition_column(adata.obs, condition_key)
        if labels_key is not None and (
            labels_key not in adata.obs or adata.obs[labels_key].isna().any()
        ):
            raise KeyError(
                f"labels_key {labels_key!r} must be a column of adata.obs with a label for "
                "every cell (drop or label the cells with missing values)."
            )
        check_finite(adata.X if layer is None else adata.layers[layer], _matrix_name(layer))
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, condition_key),
        ]
        if labels_key is not None:  # registered only when given: the default MMD depends on it
            anndata_fields.append(CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key))
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @devices_dsp.dedent
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = True,
        early_stopping_patience: int = 10,
        min_cells_per_condition: int = 8,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model on condition-balanced minibatches.

        Parameters
        ----------
        max_epochs
            Default: scvi-tools' heuristic (400 epochs up to 20k cells, fewer above).
        %(param_accelerator)s
        %(param_devices)s
        train_size, validation_size
            Fractions of cells for training and validation (default 0.9 / 0.1).
        batch_size
            Cells per minibatch (per process under DDP).
        early_stopping
            Stop when ``validation_loss`` (ELBO terms + weighted MMD) has not improved for
            ``early_stopping_patience`` epochs after the KL warm-up, and restore the weights of
            the best epoch. Disabled by scvi-tools under DDP.
        min_cells_per_condition
            Floor of cells of each condition in every minibatch (small conditions are resampled).
        plan_kwargs
            Keyword arguments of :class:`~scvi.train.TrainingPlan`. Defaults here: ``lr=3e-3``
            and a KL warm-up over the first 10 epochs (``n_epochs_kl_warmup``); scvi-tools' own
            defaults (1e-3, 400 epochs) leave the KL under-weighted for most of a short run.
        datasplitter_kwargs
            Keyword arguments of :class:`~sctrvae.ConditionBalancedDataSplitter`, e.g.
            ``{"device_resident": True}``: copy the count matrix to the training device once and
            slice every minibatch there (for a GPU starved by the data loader).
        **trainer_kwargs
            Keyword arguments of :class:`~scvi.train.Trainer` (``strategy``,
            ``gradient_clip_val``, ``enable_progress_bar``, ...).
        """
        check_condition_sizes(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY), self.conditions
        )
        max_epochs = max_epochs or get_max_epochs_heuristic(self.adata.n_obs)
        plan_kwargs = {"lr": DEFAULT_LR, **(plan_kwargs or {})}
        if "n_steps_kl_warmup" not in plan_kwargs:
            plan_kwargs.setdefault("n_epochs_kl_warmup", min(KL_WARMUP_EPOCHS, max_epochs))
        datasplitter_kwargs = {
            "min_cells_per_condition": min_cells_per_condition,
            **(datasplitter_kwargs or {}),
        }
        distributed = use_distributed_sampler(trainer_kwargs.get("strategy"))
        if distributed:
            # our sampler shards by rank itself; Lightning would otherwise wrap it and split its
            # (already per-rank) batches again
            trainer_kwargs.setdefault("use_distributed_sampler", False)
        # a diverged run raises instead of leaving NaN weights behind
        callbacks = [*(trainer_kwargs.pop("callbacks", None) or []), StopOnNonFiniteLoss()]
        # scvi-tools switches early stopping off under DDP, and with it validation
        if early_stopping and not distributed:
            warmup = plan_kwargs.get("n_epochs_kl_warmup") or 0
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
            trainer_kwargs.setdefault("early_stopping_warmup_epochs", warmup)
            callbacks.append(RestoreBestWeights(trainer_kwargs["early_stopping_monitor"]))
        trainer_kwargs["callbacks"] = callbacks
        # scvi-tools leaves the module in eval mode after training or loading, and Lightning keeps
        # the mode it finds: without this a second train() (or a resume) runs without dropout
        self.module.train()
        return super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            datasplitter_kwargs=datasplitter_kwargs,
            **trainer_kwargs,
        )

    def _condition_code(self, condition: str) -> int:
        if str(condition) not in self.conditions:
            raise ValueError(
                f"Unknown condition {condition!r}; the model was trained on {self.conditions}."
            )
        return self.conditions.index(str(condition))

    def _prepare(
        self, adata: ad.AnnData | None, indices: Sequence[int] | None, key_added: str | None
    ) -> tuple[ad.AnnData, np.ndarray, np.ndarray]:
        """Validated AnnData, the indices to return, and the indices to compute."""
        if adata is not None and adata is not self.adata:
            adata = self._check_new_anndata(adata, key_added)
        adata = self._validate_anndata(adata)
        selected = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        if selected.dtype == bool:
            selected = np.flatnonzero(selected)
        if selected.size == 0:
            raise ValueError("`indices` is empty: select at least one cell.")
        # results written to `adata` must cover every cell, so compute them all then; cells are
        # computed in increasing order, the order in which scvi-tools reads backed data
        computed = np.arange(adata.n_obs) if key_added is not None else np.unique(selected)
        return adata, selected, computed

    def _check_new_anndata(self, adata: ad.AnnData, key_added: str | None) -> ad.AnnData:
        """Check an AnnData other than the training one; a view is replaced by its copy."""
        check_anndata_object(adata, "The model")
        if adata.is_view:
            if key_added is not None:
                raise ValueError(
                    "adata is a view (e.g. `adata[mask]`), so key_added cannot be written to it; "
                    "pass `adata[mask].copy()` or leave key_added=None."
                )
            # scvi-tools would turn the user's view into an actual AnnData in place
            adata = adata.copy()
        check_var_names(adata.var_names, self.training_var_names)
        check_known_conditions(adata.obs, self.condition_key, self.conditions)
        layer = self.registry_["setup_args"]["layer"]
        matrix = adata.X if layer is None else adata.layers[layer]
        check_expression(matrix, self.module.likelihood, self._x_name)
        return adata

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        representation: Literal["z", "y"] = "z",
        give_mean: bool = True,
        batch_size: int | None = None,
        key_added: str | None = None,
    ) -> np.ndarray:
        """Latent ``z`` (posterior mean) or the MMD layer ``y`` of each cell.

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the model's.
        indices
            Cells to return; default all.
        representation
            ``"z"``: the latent space. ``"y"``: first decoder layer under the cell's own
            condition, where the MMD aligns the conditions.
        give_mean
            Posterior mean of ``z`` (deterministic) or one sample.
        batch_size
            Cells per forward pass (memory stays flat in the number of cells).
        key_added
            Also write the result for all cells of ``adata`` to ``adata.obsm[key_added]``.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)`` or ``(n_cells, n_hidden)``.
        """
        if representation not in ("z", "y"):
            raise ValueError(f"representation must be 'z' or 'y', got {representation!r}.")
        self._check_if_trained(warn=False)
        adata, selected, computed = self._prepare(adata, indices, key_added)
        self.module.eval()
        chunks = []
        for tensors in self._make_data_loader(adata, indices=computed, batch_size=batch_size):
            inference = self.module.inference(**self.module._get_inference_input(tensors))
            z = inference["qz"].loc if give_mean else inference["z"]
            if representation == "y":
                condition = tensors[REGISTRY_KEYS.BATCH_KEY].to(z.device)
                z = self.module.generative(z, condition, inference["library"])["y"]
            chunks.append(z.cpu().numpy())
        result = np.concatenate(chunks)
        if key_added is not None:
            adata.obsm[key_added] = result
        return result[np.searchsorted(computed, selected)]

    @torch.inference_mode()
    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        target_condition: str | None = None,
        n_samples: int = 0,
        calibrate: bool | str = False,
        library_size: Literal["observed"] | float = "observed",
        batch_size: int | None = None,
        key_added: str | None = None,
    ) -> ad.AnnData:
        """Counterfactual expression: encode with each cell's condition, decode with the target.

        Parameters
        ----------
        adata
            AnnData with the training genes (e.g. only the control cells of one cell type);
            default: the model's.
        indices
            Cells to predict; default all.
        target_condition
            Condition to transfer the cells to; one of :attr:`conditions`.
        n_samples
            ``0``: posterior mean of ``z`` and the likelihood mean (deterministic).
            ``k > 0``: ``k`` draws of ``z`` and of the negative binomial per cell: realistic
            counts with cell-to-cell variance. The draws are stacked (``k × n_cells`` rows,
            draw number in ``obs["sctrvae_draw"]``).
        calibrate
            Correct the draws by the model's reconstruction error on the cells themselves
            (count likelihoods, ``n_samples > 0``). The cells are also decoded under their own
            condition, with the same number of draws; for each gene, the mean log-normalised
            expression (``log1p(x / total × 1e4)``) of the observed cells minus that of their
            reconstruction is added to every predicted draw. The decoder's error on a population
            it never saw in the target condition is thereby assumed to be the one it makes on
            that population's observed cells: the model predicts the change, the data the level.
            ``True``: one correction over all returned cells; the name of an ``obs`` column
            (e.g. the cell type): one per group. Adds ``layers["log_normalized"]`` (corrected,
            clipped at 0) and ``uns["sctrvae_calibration"]`` (corrections, groups × genes).
        library_size
            ``"observed"``: each cell's own total count; a number: the same total for every cell.
        batch_size
            Cells per forward pass.
        key_added
            Also write ``.X`` of the prediction for all cells of ``adata`` to
            ``adata.layers[key_added]`` (the mean of the draws when ``n_samples > 1``).

        Returns
        -------
        AnnData with the same ``var``, ``obs`` copied and ``obs[condition_key]`` set to the target;
        ``.X``: predicted expected counts (or sampled counts); ``.layers["normalized"]``: predicted
        proportions, each row summing to 1 (count likelihoods only);
        ``.layers["log_normalized"]`` with ``calibrate``.
        """
        if target_condition is None:
            raise ValueError(f"Pass target_condition, one of {self.conditions}.")
        target = self._condition_code(target_condition)
        if n_samples < 0:
            raise ValueError("n_samples must be 0 (deterministic mean) or a positive integer.")
        if calibrate is not False and (n_samples == 0 or self.module.likelihood == "normal"):
            raise ValueError(
                "calibrate needs draws of counts: pass n_samples > 0, with a count likelihood."
            )
        if library_size != "observed" and not (
            isinstance(library_size, int | float) and library_size > 0
        ):
            raise ValueError("library_size must be 'observed' or a positive number.")
        self._check_if_trained(warn=False)
        layer = self.registry_["setup_args"]["layer"]
        if key_added is not None and key_added == layer:
            raise ValueError(
                f"key_added={key_added!r} is the input count layer; choose another name so the "
                "counts are not overwritten."
            )
        adata, selected, computed = self._prepare(adata, indices, key_added)
        if isinstance(calibrate, str) and calibrate not in adata.obs:
            raise KeyError(
                f"calibrate={calibrate!r} is not a column of adata.obs; pass the column that "
                "groups the cells (e.g. the cell type), or True for one group."
            )
        self.module.eval()
        # outputs are filled in place, batch by batch: memory is the output plus one batch
        arrays: dict[str, np.ndarray] = {}
        start = 0
        for tensors in self._make_data_loader(adata, indices=computed, batch_size=batch_size):
            n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
            library = None
            if library_size != "observed":
                library = torch.full((n, 1), float(library_size))
            out = self.module.transfer(tensors, target, n_samples=n_samples, library=library)
            if calibrate is not False:
                own = self.module.transfer(tensors, None, n_samples=n_samples, library=library)
                out["reconstruction"] = own["expression"]
                out["observed"] = tensors[REGISTRY_KEYS.X_KEY]  # already read for this batch
            for key, value in out.items():
                if key not in arrays:
                    shape = (*value.shape[:-2], computed.size, value.shape[-1])
                    arrays[key] = np.empty(shape, dtype=np.float32)
                arrays[key][..., start : start + n, :] = value.cpu().numpy()
            start += n
        if key_added is not None:
            expression = arrays["expression"]
            adata.layers[key_added] = expression.mean(0) if n_samples > 0 else expression
        if not np.array_equal(computed, selected):
            position = np.searchsorted(computed, selected)
            arrays = {k: v[..., position, :] for k, v in arrays.items()}
        pred = self._prediction_anndata(adata, selected, arrays, target_condition, n_samples)
        if calibrate is not False:
            groups = adata.obs[calibrate].iloc[selected] if isinstance(calibrate, str) else None
            corrected, corrections = calibrate_draws(
                arrays["observed"], arrays["expression"], arrays["reconstruction"], groups
            )
            corrections.columns = adata.var_names
            pred.layers["log_normalized"] = corrected
            pred.uns["sctrvae_calibration"] = corrections
        return pred

    def _prediction_anndata(
        self,
        adata: ad.AnnData,
        selected: np.ndarray,
        arrays: dict[str, np.ndarray],
        target_condition: str,
        n_samples: int,
    ) -> ad.AnnData:
        obs = adata.obs.iloc[selected].copy()
        draws = max(n_samples, 1)
        if n_samples > 0:
            obs = pd.concat([obs] * draws)
            obs["sctrvae_draw"] = np.repeat(np.arange(draws), selected.size)
            obs.index = [
                f"{name}-{d}" for name, d in zip(obs.index, obs["sctrvae_draw"], strict=True)
            ]
        obs[self.condition_key] = pd.Categorical(
            [str(target_condition)] * obs.shape[0], categories=self.conditions
        )
        obs = obs.drop(columns=[c for c in obs.columns if c.startswith("_scvi")])
        n_genes = adata.n_vars
        layers = {k: v.reshape(-1, n_genes) for k, v in arrays.items() if k == "normalized"}
        return ad.AnnData(
            X=arrays["expression"].reshape(-1, n_genes),
            obs=obs,
            var=adata.var.copy(),
            layers=layers,
        )


def _matrix_name(layer: str | None) -> str:
    """How the count matrix in ``layer`` (``None``: ``X``) is spelled in messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _registry_var_names(registry: dict) -> pd.Index:
    """Training genes stored by scvi-tools in a (saved) registry."""
    field = registry["field_registries"][REGISTRY_KEYS.X_KEY]
    return pd.Index(np.asarray(field["state_registry"]["column_names"]).astype(str))
