"""TRVAEModel: the user-facing trVAE model on scvi-tools."""

from __future__ import annotations

import os
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

# scvi-tools' view_anndata_setup calls rich.pretty without importing it; rich < 15 imported it
# at the top of rich.console, rich 15 imports it lazily
import rich.pretty  # noqa: F401
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import ArchesMixin, BaseModelClass, RNASeqMixin
from scvi.utils import setup_anndata_dsp

from .._constants import MMDMode
from .._utils import matrix_name, registry_var_names
from .._version import __version__
from ..data._covariates import (
    categorical_keys,
    covariate_fields,
    registered_covariates,
)
from ..data._data_splitter import ConditionBalancedDataSplitter
from ..module._trvae import TRVAEModule
from ..train._training_plan import TRVAETrainingPlan
from ._initialisation import condition_gene_means
from ._persistence import check_saved_model, save_model
from ._setup_checks import check_setup_arguments
from ._surgery import constrain_query_surgery
from ._validation import (
    check_expression,
)
from .base._differential_mixin import DifferentialResponseMixin
from .base._input_mixin import InputMixin
from .base._latent_mixin import LatentMixin
from .base._prediction_mixin import PredictionMixin
from .base._training_mixin import TrainingMixin


class TRVAEModel(
    TrainingMixin,
    LatentMixin,
    PredictionMixin,
    DifferentialResponseMixin,
    InputMixin,
    RNASeqMixin,
    ArchesMixin,
    BaseModelClass,
):
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
    mmd_mode
        ``"global"``, ``"label"`` or ``"reweighted"`` (see :class:`~sctrvae.TRVAEModule`); the
        last two need ``labels_key`` or ``batch_key`` in :meth:`setup_anndata`. Default:
        ``"reweighted"`` when labels or a batch are registered (the conditions are compared at
        equal label (and batch) proportions, and a label or donor seen in one condition only,
        such as a held-out cell type, stays out of the penalty), else ``"global"``. The user
        guide page on the MMD shows why.
    **module_kwargs
        Keyword arguments of :class:`~sctrvae.TRVAEModule`, where they and their defaults are
        described: ``n_hidden`` (128), ``n_latent`` (10), ``n_layers`` (2), ``dropout_rate``,
        ``likelihood`` (``"nb"``), ``dispersion``, ``mmd_weight`` (100), ``kernel_bandwidths``,
        ``kl_weight``, ``condition_offset`` (``False`` is the paper's decoder), ... The model
        passes the number of genes, conditions and labels itself.

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
        mmd_mode: MMDMode | None = None,
        **module_kwargs,
    ):
        super().__init__(adata, registry)
        # from the summary, which a model loaded without data (adata=False) has too
        n_labels = self.summary_stats.get("n_labels", 0)
        categorical, continuous = registered_covariates(self.registry_)
        has_batch = self.registry_["setup_args"].get("batch_key") is not None
        if mmd_mode is None:
            mmd_mode = "reweighted" if n_labels or has_batch else "global"
        module_kwargs.setdefault("mmd_within_batch", has_batch)
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_conditions=self.summary_stats.n_batch,
            mmd_mode=mmd_mode,
            n_labels=n_labels,
            n_cats_per_cov=[len(c) for c in categorical.values()],
            n_continuous_cov=len(continuous),
            **module_kwargs,
        )
        if adata is not None:
            check_expression(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
                self.module.likelihood,
                self._x_name,
            )
            self.start_decoder()
        self._model_summary_string = f"TRVAEModel: {self.module.summary}."
        # saved with the model (scvi-tools saves attributes ending in "_"); load restores it
        self.sctrvae_version_ = __version__
        self.init_params_ = self._get_init_params(locals())

    def start_decoder(self, indices: np.ndarray | None = None) -> None:
        """Start the decoder's output bias at the conditions' gene profiles of the cells.

        Done when the model is built, from all its registered cells
        (:meth:`~sctrvae.TRVAEModule.start_from_profiles`). ``indices`` (positions in the
        model's AnnData): from these cells only, e.g. the training cells of a split given by
        index lists (``datasplitter_kwargs={"external_indexing": ...}``), so that held-out
        cells do not shape the start. Call it before :meth:`train`.
        """
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).reshape(-1)
        if indices is not None:  # the other cells are left out of the sums (code -1)
            chosen = np.full(codes.shape, -1, dtype=np.int64)
            chosen[indices] = codes[indices]
            codes = chosen
        profiles = condition_gene_means(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            codes,
            self.module.n_conditions,
            self.module.likelihood,
        )
        self.module.start_from_profiles(torch.as_tensor(profiles, dtype=torch.float32))

    @property
    def _x_name(self) -> str:
        """How the registered count matrix is spelled in messages."""
        return matrix_name(self.registry_["setup_args"]["layer"])

    @property
    def training_var_names(self) -> pd.Index:
        """Genes the model was trained on, in the training order (kept in the saved registry)."""
        return registry_var_names(self.registry_)

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
        A query that adds no condition (e.g. new donors) trains only the columns of its new
        covariate categories: the reference's conditions and donors keep their weights.
        """
        reference = reference_model
        if not isinstance(reference, BaseModelClass):
            reference = cls.load(reference_model, adata=False)
        model = super().load_query_data(adata, reference_model, *args, **kwargs)
        constrain_query_surgery(model, reference, unfrozen=kwargs.get("unfrozen", False))
        return model

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        condition_key: str,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
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
        batch_key
            Optional column with the donor, patient, lane or batch. The condition holds
            scvi-tools' batch slot, so this column is registered as the first categorical
            covariate (``REGISTRY_KEYS.CAT_COVS_KEY``); see ``categorical_covariate_keys``. The
            MMD then also matches cells by batch (``TRVAEModule(mmd_within_batch=True)``), and
            ``predict(target_batch=...)`` can decode cells as another batch.
        categorical_covariate_keys, continuous_covariate_keys
            Columns of other covariates. Covariates enter the decoder after the MMD layer (and
            the encoder with ``encode_covariates=True``), never the condition comparison;
            predictions keep each cell's values. Every cell needs a value (finite, for the
            continuous ones), and cells passed later a category seen in training.

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
        check_setup_arguments(
            adata,
            condition_key,
            layer=layer,
            labels_key=labels_key,
            categorical_keys=categorical_keys(batch_key, categorical_covariate_keys),
            continuous_keys=list(continuous_covariate_keys or []),
            source_registry=kwargs.get("source_registry"),
        )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, condition_key),
        ]
        if labels_key is not None:  # registered only when given: the default MMD depends on it
            anndata_fields.append(CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key))
        anndata_fields += covariate_fields(
            batch_key, categorical_covariate_keys, continuous_covariate_keys
        )
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)
