"""Checks of the cells passed to the query methods (latent, predict, differential response)."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from ..._utils import layer_matrix, selected_positions
from ...data._covariates import check_covariate_columns, registered_covariates
from .._backed import check_backed_file
from .._validation import (
    check_anndata_object,
    check_expression,
    check_known_conditions,
    check_var_names,
)


class InputMixin:
    """Validation shared by every method that reads cells; nothing is written before it passes."""

    def _counts(self, adata: ad.AnnData):
        """The registered count matrix of ``adata`` (``X`` or the layer given at setup)."""
        return layer_matrix(adata, self.registry_["setup_args"]["layer"])

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
        categorical, continuous = registered_covariates(self.registry_)
        check_covariate_columns(
            adata.obs, self.condition_key, list(categorical), continuous, known=categorical
        )
        check_expression(self._counts(adata), self.module.likelihood, self._x_name)
        return adata
