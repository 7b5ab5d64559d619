"""TRVAEModel: the user-facing trVAE model on scvi-tools."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

# scvi-tools' view_anndata_setup calls rich.pretty without importing it; rich < 15 imported it
# at the top of rich.console, rich 15 imports it lazily
import rich.pretty  # noqa: F401
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import (
    ArchesMixin,
    BaseModelClass,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi.utils import setup_anndata_dsp
from scvi.utils._docstrings import devices_dsp

from ._backed import check_backed_file
from ._calibration import calibrate_draws
from ._callbacks import RestoreBestWeights, StopOnNonFiniteLoss
from ._data_splitter import (
    ConditionBalancedDataSplitter,
    has_validation_cells,
    n_training_cells,
)
from ._differential import differential_response
from ._mmd import MMDMode
from ._module import Dispersion, Likelihood, TRVAEModule
from ._persistence import check_saved_model, save_model
from ._rollback import restores_adata_on_failure
from ._threads import training_threads
from ._training_plan import TRVAETrainingPlan
from ._validation import (
    check_anndata_object,
    check_condition_column,
    check_condition_sizes,
    check_expression,
    check_finite,
    check_indices,
    check_known_conditions,
    check_not_view,
    check_var_names,
)
from ._version import __version__
from .metrics import log1p_normalize

logger = logging.getLogger(__name__)

#: Adam learning rate of ``train()``: converges in about a third of the epochs 1e-3 needs here.
DEFAULT_LR = 3e-3
#: Optimiser steps of linear KL warm-up; early stopping waits for them (the loss changes meaning
#: meanwhile). Budgets are in steps because a step, not an epoch, is the unit of the optimiser's
#: progress: an epoch of a large dataset holds many times the steps the model needs.
KL_WARMUP_STEPS = 150
#: Steps without a better validation loss before early stopping (rounded up to whole epochs).
PATIENCE_STEPS = 150
#: Default budget of optimiser steps (``max_epochs=None``); early stopping usually ends sooner.
MAX_STEPS = 2000

Readout = Literal["mean", "sampled", "calibrated"]
#: Draws per cell when ``predict`` is not given ``n_samples``.
DEFAULT_DRAWS = {"mean": 0, "sampled": 1, "calibrated": 10}


class TRVAEModel(RNASeqMixin, VAEMixin, ArchesMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """trVAE: predict how cells respond to a condition they were never observed in.

    A conditional VAE on raw counts with an MMD penalty between conditions on the first decoder
    layer ``y`` (Lotfollahi et al., Bioinformatics 2020). Encode cells with their own condition,
    decode them with another one: :meth:`predict`, or scvi-tools' own
    ``get_normalized_expression`` / ``posterior_predictive_sample`` /
    ``differential_expression`` with ``transform_batch=<target condition>``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`; ``None`` with ``registry`` (what
        ``load(path, adata=False)`` does: a model without data).
    registry
        Registry of a saved model, for a model without data.
    n_hidden, n_latent, n_layers, dropout_rate, likelihood, dispersion, mmd_weight, \
kernel_bandwidths, kl_weight, condition_offset
        See :class:`~sctrvae.TRVAEModule`. ``condition_offset=False`` is the paper's decoder.
    mmd_mode
        ``"global"``, ``"label"`` or ``"reweighted"`` (see :class:`~sctrvae.TRVAEModule`); the
        last two need ``labels_key`` in :meth:`setup_anndata`. Default: ``"reweighted"`` when
        labels are registered (the conditions are compared at equal label proportions, and a
        label seen in one condition only, such as a held-out cell type, stays out of the
        penalty), else ``"global"``. The user guide page on the MMD shows why.
    **module_kwargs
        Further keyword arguments of :class:`~sctrvae.TRVAEModule`.

    Examples
    --------
    >>> sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    >>> model = sctrvae.TRVAEModel(adata)
    >>> model.train()
    >>> model.predict(adata, indices=ctrl, target_condition="stimulated", key_added="trvae_stim")
    """

    _module_cls = TRVAEModule
    _data_splitter_cls = ConditionBalancedDataSplitter
    _training_plan_cls = TRVAETrainingPlan

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        likelihood: Likelihood = "nb",
        dispersion: Dispersion = "gene",
        mmd_weight: float = 100.0,
        kernel_bandwidths: str | Sequence[float] = "auto",
        kl_weight: float = 1.0,
        mmd_mode: MMDMode | None = None,
        condition_offset: bool = True,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        # from the summary, which a model loaded without data (adata=False) has too
        has_labels = "n_labels" in self.summary_stats
        if mmd_mode is None:
            mmd_mode = "reweighted" if has_labels else "global"
        if mmd_mode != "global" and not has_labels:
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
        if adata is not None:
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
            condition_offset=condition_offset,
            n_labels=self.summary_stats.get("n_labels", 0),
            **module_kwargs,
        )
        self._model_summary_string = (
            f"TRVAEModel: {n_conditions} conditions, n_latent={n_latent}, n_hidden={n_hidden}, "
            f"n_layers={n_layers}, likelihood={likelihood}, dispersion={dispersion}, "
            f"mmd_weight={mmd_weight}, mmd_mode={mmd_mode}, kernel_bandwidths={kernel_bandwidths}, "
            f"condition_offset={condition_offset}."
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
        return [str(c) for c in self._condition_state["categorical_mapping"]]

    @property
    def condition_key(self) -> str:
        """The ``adata.obs`` column holding the condition."""
        return self._condition_state["original_key"]

    @property
    def _condition_state(self) -> dict:
        # from the registry, which a model loaded without data has too
        return self.registry_["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]

    @classmethod
    def load(
        cls, dir_path: str, adata: ad.AnnData | Literal[False] | None = None, **kwargs
    ) -> TRVAEModel:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory of the saved model.
        adata
            AnnData with the training genes, set up like the training data on the way.
            ``None``: the AnnData saved with the model (``save(..., save_anndata=True)``);
            ``False``: no AnnData, pass one to every method that reads cells.
        **kwargs
            Keyword arguments of scvi-tools' ``BaseModelClass.load`` (``accelerator``,
            ``device``, ``prefix``, ``backup_url``).
        """
        if kwargs.get("backup_url") is None:  # else scvi-tools downloads the model file
            check_saved_model(cls, dir_path, kwargs.get("prefix"))
        saved = os.path.join(dir_path, f"{kwargs.get('prefix') or ''}adata.h5ad")
        if adata is None and kwargs.get("backup_url") is None and not os.path.exists(saved):
            raise ValueError(
                f"{dir_path} holds no AnnData: the model was saved without it. Pass the data "
                "with load(path, adata=...), load the model without data with adata=False, or "
                "save with save(path, save_anndata=True)."
            )
        return super().load(dir_path, adata=adata, **kwargs)

    def save(
        self, dir_path: str, prefix: str | None = None, overwrite: bool = False, **kwargs
    ) -> None:
        """scvi-tools' ``BaseModelClass.save``, made atomic.

        The files are written to a temporary directory beside ``dir_path`` and renamed into
        place when complete: a save that fails or is interrupted leaves an earlier save at
        ``dir_path`` as it was. Arguments as in scvi-tools (``save_anndata``, ...).
        """
        save_model(self, dir_path, prefix=prefix, overwrite=overwrite, **kwargs)

    @classmethod
    def load_query_data(
        cls,
        adata: ad.AnnData | None = None,
        reference_model: str | TRVAEModel | None = None,
        *args,
        **kwargs,
    ) -> TRVAEModel:
        """scvi-tools' ``ArchesMixin.load_query_data`` (scArches surgery), see :doc:`/query`.

        The output offset (``condition_offset``) trains like the condition columns of the
        condition-injected layers: every column may move, and one moves only when the query
        holds cells of its condition (only the new conditions' when the query holds those alone).
        """
        model = super().load_query_data(adata, reference_model, *args, **kwargs)
        if model.module.condition_offset is not None:
            # scvi-tools freezes every parameter outside its FCLayers' injected columns
            model.module.condition_offset.requires_grad_(True)
        return model

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
            Optional column of ``adata.obs`` with a cell label (e.g. the cell type). The MMD
            then compares the conditions at equal label proportions by default
            (``TRVAEModel(mmd_mode="reweighted")``; ``"label"``: within each label), and every
            (label, condition) pair is dealt evenly over the minibatches (rare pairs are not
            resampled). Cells passed to the model later must carry a known label too.

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
        early_stopping_patience: int | None = None,
        min_cells_per_condition: int = 8,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model on condition-balanced minibatches.

        Parameters
        ----------
        max_epochs
            Default: a budget of 2,000 optimiser steps (``MAX_STEPS``, passed to Lightning as
            ``max_steps``), or one epoch if that is longer, so that every cell is seen once.
            Passing it trains at most that many epochs, with no step budget.
        %(param_accelerator)s
        %(param_devices)s
        train_size, validation_size
            Fractions of cells for training and validation (default 0.9 / 0.1).
        batch_size
            Cells per minibatch (per process under DDP).
        early_stopping
            Stop when ``validation_loss`` (ELBO terms + weighted MMD) has not improved for
            ``early_stopping_patience`` epochs after the KL warm-up, and restore the weights of
            the best epoch after the warm-up. Disabled by scvi-tools under DDP, and here (with a
            warning) when there are no validation cells (``train_size=1.0`` or
            ``validation_size=0``).
        early_stopping_patience
            Epochs without improvement before stopping. Default: 150 optimiser steps
            (``PATIENCE_STEPS``) rounded up to whole epochs, at least 2.
        min_cells_per_condition
            Floor of cells of each condition in every minibatch (small conditions are resampled).
        plan_kwargs
            Keyword arguments of :class:`~scvi.train.TrainingPlan`. Defaults here: ``lr=3e-3``
            and a KL warm-up over the first 150 optimiser steps (``n_steps_kl_warmup``, at most
            the whole run); scvi-tools' own defaults (1e-3, 400 epochs) leave the KL
            under-weighted for most of a short run. ``n_epochs_kl_warmup`` counts in epochs.
        datasplitter_kwargs
            Keyword arguments of :class:`~sctrvae.ConditionBalancedDataSplitter`, e.g.
            ``{"device_resident": True}``: copy the count matrix to the training device once and
            slice every minibatch there (for a GPU starved by the data loader).
        **trainer_kwargs
            Keyword arguments of :class:`~scvi.train.Trainer` (``strategy``,
            ``gradient_clip_val``, ``enable_progress_bar``, ``max_steps``, ...).

        Notes
        -----
        Torch threads for this call (the caller's count is restored afterwards):
        ``scvi.settings.num_threads`` if set, else ``OMP_NUM_THREADS`` if set, else every CPU
        this process may use (affinity, cgroup quota); only when torch was loaded before
        sctrvae (idle threads then spin), the CPUs other processes leave idle now. The count is
        applied at every call because scanpy's numba functions reset torch's OpenMP thread
        count to all cores whenever they run.
        """
        check_condition_sizes(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY), self.conditions
        )
        check_backed_file(self.adata)
        # the choice holds for this call only: the user's torch code keeps its own thread count
        threads_before = torch.get_num_threads()
        torch.set_num_threads(_thread_setting() or training_threads(settings.seed is not None))
        steps_per_epoch = _steps_per_epoch(self.adata.n_obs, train_size, batch_size)
        if max_epochs is None:
            trainer_kwargs.setdefault("max_steps", _step_budget(steps_per_epoch))
            max_epochs = math.ceil(trainer_kwargs["max_steps"] / steps_per_epoch)
        plan_kwargs = {"lr": DEFAULT_LR, **(plan_kwargs or {})}
        if "n_epochs_kl_warmup" not in plan_kwargs:
            total_steps = max_epochs * steps_per_epoch
            if trainer_kwargs.get("max_steps", -1) >= 0:
                total_steps = min(total_steps, trainer_kwargs["max_steps"])
            plan_kwargs.setdefault("n_steps_kl_warmup", min(KL_WARMUP_STEPS, total_steps))
            plan_kwargs["n_epochs_kl_warmup"] = None
        if early_stopping_patience is None:
            early_stopping_patience = max(2, math.ceil(PATIENCE_STEPS / steps_per_epoch))
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
        stop_on_nan = StopOnNonFiniteLoss()
        callbacks = [*(trainer_kwargs.pop("callbacks", None) or []), stop_on_nan]
        external = datasplitter_kwargs.get("external_indexing")
        validated = has_validation_cells(self.adata.n_obs, train_size, validation_size, external)
        if early_stopping and not distributed and not validated:
            warnings.warn(
                "There are no validation cells: training runs all max_epochs without early "
                "stopping or restoring the best weights.",
                UserWarning,
                stacklevel=2,
            )
            early_stopping = False
        # scvi-tools switches early stopping off under DDP, and with it validation
        if early_stopping and not distributed:
            warmup = plan_kwargs["n_epochs_kl_warmup"] or math.ceil(
                (plan_kwargs.get("n_steps_kl_warmup") or 0) / steps_per_epoch
            )
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
            trainer_kwargs.setdefault("early_stopping_warmup_epochs", warmup)
            callbacks.append(RestoreBestWeights(trainer_kwargs["early_stopping_monitor"]))
        trainer_kwargs["callbacks"] = callbacks
        # scvi-tools leaves the module in eval mode after training or loading, and Lightning keeps
        # the mode it finds: without this a second train() (or a resume) runs without dropout
        self.module.train()
        try:
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
        except Exception as error:
            # a non-finite loss not read yet (off CPU) can make a later step fail first
            if stop_on_nan.error is None:
                raise
            raise stop_on_nan.error from error
        finally:
            torch.set_num_threads(threads_before)

    def _condition_code(self, condition: str) -> int:
        if str(condition) not in self.conditions:
            raise ValueError(
                f"Unknown condition {condition!r}; the model was trained on {self.conditions}."
            )
        return self.conditions.index(str(condition))

    def _prepare(
        self, adata: ad.AnnData | None, indices: Sequence[int] | None, key_added: str | None
    ) -> tuple[ad.AnnData, np.ndarray, np.ndarray]:
        """Validated AnnData, the indices to return, and the (sorted, unique) ones to compute."""
        if adata is None and self.adata is None:
            raise ValueError(
                "The model was loaded without data (load(..., adata=False)): pass adata, or "
                "save the model with save(path, save_anndata=True) to load its data with it."
            )
        check_backed_file(self.adata if adata is None else adata)
        if adata is not None and adata is not self.adata:
            adata = self._check_new_anndata(adata, key_added)
        adata = self._validate_anndata(adata)
        selected = selected_positions(adata.n_obs, indices)
        if selected.size == 0:
            raise ValueError("`indices` is empty: select at least one cell.")
        # cells are computed in increasing order, the order in which scvi-tools reads backed data
        return adata, selected, np.unique(selected)

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

    @restores_adata_on_failure
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader=None,
        representation: Literal["z", "y"] = "z",
        key_added: str | None = None,
        **data_loader_kwargs,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent ``z`` or the MMD layer ``y`` of each cell.

        The arguments before ``representation`` are those of scvi-tools'
        ``VAEMixin.get_latent_representation`` (so ``get_aggregated_posterior`` and
        ``differential_abundance`` work).

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the model's.
        indices
            Cells to return; default all.
        give_mean
            Posterior mean of ``z`` (deterministic) or one sample.
        mc_samples
            As in scvi-tools; unused here: the posterior of ``z`` is Gaussian, its mean exact.
        batch_size
            Cells per forward pass (memory stays flat in the number of cells).
        return_dist
            Return the posterior means and variances of ``z`` instead.
        dataloader
            Minibatches of tensors to read instead of ``adata`` / ``indices``.
        representation
            ``"z"``: the latent space. ``"y"``: first decoder layer under the cell's own
            condition, where the MMD aligns the conditions.
        key_added
            Also write the result for all cells of ``adata`` to ``adata.obsm[key_added]``.
        **data_loader_kwargs
            Keyword arguments of the data loader.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)`` or ``(n_cells, n_hidden)``; with ``return_dist``,
        the means and variances of ``z``.
        """
        if representation not in ("z", "y"):
            raise ValueError(f"representation must be 'z' or 'y', got {representation!r}.")
        if return_dist and (representation == "y" or key_added is not None):
            raise ValueError("return_dist returns the posterior of z; it takes no key_added or y.")
        if dataloader is not None and key_added is not None:
            raise ValueError("key_added writes to adata; a dataloader has no AnnData.")
        if dataloader is None:
            adata, selected, computed = self._prepare(adata, indices, key_added)
            if key_added is not None:  # obsm must cover every cell
                computed = np.arange(adata.n_obs)
            loader = self._make_data_loader(
                adata, indices=computed, batch_size=batch_size, **data_loader_kwargs
            )
        else:
            loader = dataloader
        if representation == "z":
            result = super().get_latent_representation(
                give_mean=give_mean,
                mc_samples=mc_samples,
                return_dist=return_dist,
                dataloader=loader,
            )
        else:
            result = self._decoder_layer(loader, give_mean)
        if dataloader is not None:
            return result
        if key_added is not None:
            adata.obsm[key_added] = result
        position = np.searchsorted(computed, selected)
        if return_dist:
            return result[0][position], result[1][position]
        return result[position]

    def _decoder_layer(self, dataloader, give_mean: bool) -> np.ndarray:
        """``y`` of each cell under its own condition."""
        self._check_if_trained(warn=False)
        self.module.eval()
        chunks = []
        for tensors in dataloader:
            _, generative_outputs = self.module.forward(
                tensors, inference_kwargs={"give_mean": give_mean}, compute_loss=False
            )
            chunks.append(generative_outputs["y"].cpu().numpy())
        return np.concatenate(chunks)

    @restores_adata_on_failure
    @torch.inference_mode()
    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        target_condition: str | None = None,
        readout: Readout | None = None,
        n_samples: int | None = None,
        groupby: str | None = None,
        library_size: Literal["observed"] | float = "observed",
        batch_size: int | None = None,
        key_added: str | None = None,
    ) -> ad.AnnData:
        """Counterfactual expression: encode with each cell's condition, decode with the target.

        The decoding is scvi-tools' ``transform_batch`` path (that of
        ``get_normalized_expression`` and ``posterior_predictive_sample``), read into an
        AnnData.

        Parameters
        ----------
        adata
            AnnData with the training genes (e.g. only the control cells of one cell type);
            default: the model's.
        indices
            Cells to predict; default all.
        target_condition
            Condition to transfer the cells to; one of :attr:`conditions`.
        readout
            Default: ``"sampled"`` when ``n_samples`` is given, else ``"mean"``.
            ``"mean"``: posterior mean of ``z`` and the likelihood's mean (deterministic).
            ``"sampled"``: ``n_samples`` draws of ``z`` and of the likelihood per cell:
            realistic counts with cell-to-cell variance.
            ``"calibrated"``: the sampled draws, corrected by the model's reconstruction error
            on the cells themselves (count likelihoods). The cells are also decoded under their
            own condition, with the same number of draws; for each gene, the mean log-normalised
            expression of the observed cells minus that of their reconstruction is added to
            every predicted draw (clipped at 0). The decoder's error on a population it never
            saw in the target condition is thereby assumed to be the one it makes on that
            population's observed cells: the model predicts the change, the data the level. The
            most accurate readout of the Kang benchmark.
        n_samples
            Draws per cell of ``"sampled"`` (default 1) and ``"calibrated"`` (default 10).
        groupby
            ``"calibrated"`` only: column of ``adata.obs`` (e.g. the cell type) with one
            correction per group; default one correction for all cells.
        library_size
            ``"observed"``: each cell's own total count; a number: the same total for every cell.
        batch_size
            Cells per forward pass.
        key_added
            Also write the readout into ``adata.layers[key_added]`` of the passed AnnData,
            log-normalised (``log1p(x / total × 1e4)``), one row per cell: the mean readout;
            the log-normalised mean of the sampled counts; the mean of the calibrated draws.
            Rows of cells not in ``indices`` are NaN. ``adata.uns[key_added]`` records what was
            written (readout, target condition, n_samples, groupby, library_size, sctrvae
            version). An existing layer of that name is replaced.

        Returns
        -------
        AnnData of the predicted cells (``n_samples × n_cells`` rows stacked by draw for
        ``"sampled"`` / ``"calibrated"``, draw number in ``obs["sctrvae_draw"]``), with the same
        ``var``, ``obs`` copied and ``obs[condition_key]`` set to the target. ``.X``: expected
        counts (``"mean"``) or sampled counts; ``.layers["normalized"]``: predicted
        proportions, each row summing to 1 (count likelihoods); ``.layers["log_normalized"]``:
        the readout, log-normalised, which :func:`sctrvae.metrics.score_prediction` and the
        plots in ``sctrvae.pl`` read by default; ``.uns["sctrvae_prediction"]``: the record above;
        ``.uns["sctrvae_calibration"]`` (``"calibrated"``): the corrections, groups × genes.
        """
        check_indices(indices)
        if target_condition is None:
            raise ValueError(f"Pass target_condition, one of {self.conditions}.")
        target = self._condition_code(target_condition)
        if readout is None:
            readout = "sampled" if n_samples else "mean"
        n_samples = self._check_readout(readout, n_samples, groupby)
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
        if groupby is not None and groupby not in adata.obs:
            raise KeyError(
                f"groupby={groupby!r} is not a column of adata.obs; pass the column that groups "
                "the cells (e.g. the cell type), or None for one correction."
            )
        self.module.eval()
        forward_kwargs = {
            "inference_kwargs": (
                {"give_mean": True} if readout == "mean" else {"n_samples": n_samples}
            ),
            "get_generative_input_kwargs": (
                {} if library_size == "observed" else {"library_size": float(library_size)}
            ),
            "compute_loss": False,
        }
        to_target = self._get_transform_batch_gen_kwargs(target)
        # outputs are filled in place, batch by batch: memory is the output plus one batch
        arrays: dict[str, np.ndarray] = {}
        start = 0
        for tensors in self._make_data_loader(adata, indices=computed, batch_size=batch_size):
            n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
            _, outputs = self.module.forward(tensors, generative_kwargs=to_target, **forward_kwargs)
            px = outputs["px"]
            out = {"expression": px.mean if readout == "mean" else px.sample()}
            if self.module.likelihood != "normal":
                out["normalized"] = px.scale
            if readout == "calibrated":  # the same cells decoded under their own condition
                _, own = self.module.forward(tensors, **forward_kwargs)
                out["reconstruction"] = own["px"].sample()
                out["observed"] = tensors[REGISTRY_KEYS.X_KEY]  # already read for this batch
            for key, value in out.items():
                value = value.cpu().numpy()
                if readout != "mean" and key != "observed":  # a draw axis also for one draw
                    value = value.reshape(n_samples, n, -1)
                if key not in arrays:
                    shape = (*value.shape[:-2], computed.size, value.shape[-1])
                    arrays[key] = np.empty(shape, dtype=np.float32)
                arrays[key][..., start : start + n, :] = value
            start += n
        if not np.array_equal(computed, selected):
            position = np.searchsorted(computed, selected)
            arrays = {k: v[..., position, :] for k, v in arrays.items()}
        pred = self._prediction_anndata(adata, selected, arrays, target_condition, n_samples)
        record = {
            "readout": readout,
            "target_condition": str(target_condition),
            "n_samples": n_samples,
            "library_size": library_size,
            "sctrvae_version": __version__,
        }
        if groupby is not None:
            record["groupby"] = groupby
        if readout == "calibrated":
            groups = None if groupby is None else adata.obs[groupby].iloc[selected]
            log_expression, corrections = calibrate_draws(
                arrays["observed"], arrays["expression"], arrays["reconstruction"], groups
            )
            corrections.columns = adata.var_names
            pred.uns["sctrvae_calibration"] = corrections
            per_cell = log_expression.reshape(n_samples, selected.size, -1).mean(0)
        else:
            log_expression = self._log_expression(pred.X)
            per_cell = self._log_expression(
                arrays["expression"] if readout == "mean" else arrays["expression"].mean(0)
            )
        pred.layers["log_normalized"] = log_expression
        pred.uns["sctrvae_prediction"] = record
        if key_added is not None:
            write_layer(adata, selected, per_cell, key_added, record)
        return pred

    def _check_readout(self, readout: str, n_samples: int | None, groupby: str | None) -> int:
        """Validate the readout's arguments; returns the number of draws (0: the mean)."""
        if readout not in DEFAULT_DRAWS:
            raise ValueError(f"readout must be one of {list(DEFAULT_DRAWS)}, got {readout!r}.")
        if readout == "mean" and n_samples:
            raise ValueError(
                "readout='mean' is deterministic; for draws pass readout='sampled' or "
                "'calibrated' with n_samples."
            )
        n_samples = DEFAULT_DRAWS[readout] if n_samples is None else n_samples
        if readout != "mean" and not (isinstance(n_samples, int) and n_samples > 0):
            raise ValueError(f"readout={readout!r} needs n_samples >= 1, got {n_samples!r}.")
        if readout == "calibrated" and self.module.likelihood == "normal":
            raise ValueError("readout='calibrated' needs a count likelihood ('nb' or 'zinb').")
        if groupby is not None and readout != "calibrated":
            raise ValueError("groupby sets the groups of readout='calibrated' only.")
        return n_samples

    def _log_expression(self, values: np.ndarray) -> np.ndarray:
        """Predicted values in log-normalised space; a Gaussian model's already are."""
        if self.module.likelihood == "normal":
            return values.astype(np.float32)
        return log1p_normalize(values.reshape(-1, values.shape[-1])).astype(np.float32)

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

    @restores_adata_on_failure
    def differential_response(
        self,
        adata: ad.AnnData | None,
        groupby: str,
        source: str,
        target: str,
        groups: Sequence[str] | None = None,
        n_samples: int = 10,
        max_cells: int | None = 500,
        delta: float = 0.25,
        pseudocounts: float | None = None,
        credible_level: float = 0.95,
        batch_size: int | None = None,
        random_state: int | None = 0,
        key_added: str | None = None,
    ) -> pd.DataFrame:
        """Predicted log fold change of every gene, ``target`` vs ``source``, per group.

        A paired counterfactual: the ``source`` cells of each group are encoded once, and each
        draw of ``z`` is decoded under ``source`` and under ``target``. The log fold change
        ``log2(rho_target + pc) - log2(rho_source + pc)`` of the normalised expressions ``rho``
        is taken per cell and draw, so the cells' baseline differences cancel in it and what
        varies is the response itself. Its samples over draws of ``z`` and cells give the mean,
        median and credible interval, and ``proba_de`` = ``P(|LFC| >= delta)``. These are the
        conventions of scvi-tools' "change" mode (Boyeau et al. 2019; ``get_bayes_factors`` of
        :class:`scvi.model.base.DifferentialComputation`): LFC of normalised expression in log2
        with pseudocounts, the summaries with a 1000 times smaller pseudocount than the test,
        highest posterior density intervals; ``proba_de`` is their ``test_mode="two"``. As in
        scvi-tools, the draws are of ``z``, not of counts: the likelihood's noise is sampling
        noise of counts at a given depth, not uncertainty about expression.

        Parameters
        ----------
        adata
            AnnData with the training genes; ``None``: the model's.
        groupby
            Column of ``adata.obs`` with the groups (cell types).
        source, target
            Conditions to compare; the LFC is ``target`` vs ``source``.
        groups
            Groups to report; default every group with ``source`` cells.
        n_samples
            Draws of ``z`` per cell.
        max_cells
            Source cells per group at most (a random subset above; ``None``: all).
        delta
            Smallest ``|LFC|`` that counts as a response (scvi-tools' default, 0.25).
        pseudocounts
            Added to the normalised expression before the log. ``None``: half a count at the
            median library size of the group's source cells, which keeps genes the group barely
            expresses from reaching large LFCs by noise. (scvi-tools' default estimate, from
            genes with a mean count below 0.01, falls to about 1e-8 on gene-filtered data such
            as Kang's, and then shrinks nothing.)
        credible_level
            Mass of the credible interval ``[lfc_lower, lfc_upper]``.
        batch_size
            Cells per minibatch (default: scvi-tools' ``settings.batch_size``).
        random_state
            Seed of the choice of cells when a group has more than ``max_cells``; the draws of
            ``z`` follow torch's global seed (``scvi.settings.seed``).
        key_added
            Also store ``{"params", "results"}`` in ``adata.uns[key_added]``.

        Returns
        -------
        One row per group and gene: ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_lower``,
        ``lfc_upper``, ``proba_de``, the mean normalised expressions ``scale_source`` and
        ``scale_target``, ``observed_lfc`` (the log2 ratio, with the pseudocount of
        ``proba_de``, of the measured cells' mean proportions; NaN for a group without
        ``target`` cells), ``n_cells`` (source cells
        used), ``n_target_cells`` (measured target cells) and ``pseudocounts``.

        Examples
        --------
        >>> df = model.differential_response(
        ...     adata, groupby="cell_type", source="control", target="stimulated"
        ... )
        >>> df[df.group == "CD4T"].nlargest(10, "proba_de")
        """
        return differential_response(
            self,
            adata,
            groupby,
            source,
            target,
            groups=groups,
            n_samples=n_samples,
            max_cells=max_cells,
            delta=delta,
            pseudocounts=pseudocounts,
            credible_level=credible_level,
            batch_size=batch_size,
            random_state=random_state,
            key_added=key_added,
        )


def _steps_per_epoch(n_obs: int, train_size: float | None, batch_size: int) -> int:
    """Optimiser steps in one epoch of the training split (as scvi-tools' splitter sizes it)."""
    return max(1, math.ceil(n_training_cells(n_obs, train_size) / batch_size))


def _step_budget(steps_per_epoch: int) -> int:
    """Default ``max_steps``: ``MAX_STEPS``, or one epoch if longer (every cell is seen once)."""
    return max(MAX_STEPS, steps_per_epoch)


def selected_positions(n_obs: int, indices: Sequence[int] | None) -> np.ndarray:
    """Positions ``indices`` selects among ``n_obs`` cells (all for ``None``; masks allowed)."""
    selected = np.arange(n_obs) if indices is None else np.asarray(indices)
    return np.flatnonzero(selected) if selected.dtype == bool else selected


def write_layer(
    adata: ad.AnnData, selected: np.ndarray, per_cell: np.ndarray, key_added: str, record: dict
) -> None:
    """Write ``per_cell`` to ``adata.layers[key_added]`` (NaN outside ``selected``) and ``record``.

    ``record`` (what was written) goes to ``adata.uns[key_added]``.
    """
    written = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
    written[selected] = per_cell
    adata.layers[key_added] = written
    adata.uns[key_added] = dict(record)


def _thread_setting() -> int | None:
    """Torch threads the user asked for: ``scvi.settings.num_threads``, else ``OMP_NUM_THREADS``.

    Re-applied at every ``train()``: numba (scanpy's parallel functions) shares torch's OpenMP
    runtime and sets its thread count to every core whenever it runs, so a count set once at
    the start of a session does not hold after the first scanpy call.
    """
    if settings.num_threads is not None:
        return settings.num_threads
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
    except (KeyError, ValueError):
        return None


def _matrix_name(layer: str | None) -> str:
    """How the count matrix in ``layer`` (``None``: ``X``) is spelled in messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _registry_var_names(registry: dict) -> pd.Index:
    """Training genes stored by scvi-tools in a (saved) registry."""
    field = registry["field_registries"][REGISTRY_KEYS.X_KEY]
    return pd.Index(np.asarray(field["state_registry"]["column_names"]).astype(str))
