"""The checks of ``setup_anndata``: all of them run before scvi-tools writes to the AnnData."""

from __future__ import annotations

import anndata as ad

from .._utils import layer_matrix, matrix_name, registry_var_names
from ..data._covariates import check_covariate_columns
from ._validation import (
    check_anndata_object,
    check_condition_column,
    check_finite,
    check_not_view,
    check_var_names,
)


def check_setup_arguments(
    adata: ad.AnnData,
    condition_key: str,
    *,
    layer: str | None,
    labels_key: str | None,
    categorical_keys: list[str],
    continuous_keys: list[str],
    source_registry: dict | None,
) -> None:
    """Raise on anything ``setup_anndata`` cannot register; change nothing.

    ``source_registry``: the registry of a saved model (``load`` or a model without data), whose
    genes ``adata`` must have in the same order.
    """
    check_anndata_object(adata, "setup_anndata")
    check_not_view(adata, "setup_anndata")
    if layer is not None and layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers)}); pass "
            "the name of the raw-count layer, or layer=None for adata.X."
        )
    if source_registry is not None:
        check_var_names(adata.var_names, registry_var_names(source_registry))
    check_condition_column(adata.obs, condition_key)
    if labels_key is not None and (
        labels_key not in adata.obs or adata.obs[labels_key].isna().any()
    ):
        raise KeyError(
            f"labels_key {labels_key!r} must be a column of adata.obs with a label for "
            "every cell (drop or label the cells with missing values)."
        )
    check_covariate_columns(adata.obs, condition_key, categorical_keys, continuous_keys)
    check_finite(layer_matrix(adata, layer), matrix_name(layer))
