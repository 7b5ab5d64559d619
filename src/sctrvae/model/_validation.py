"""Checks on user input that fail early with a message naming the problem and the fix.

Every check only reads its input: a call that fails leaves the AnnData exactly as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import row_blocks

#: Conditions with fewer training cells than this are an error: no within-condition spread.
MIN_CELLS_PER_CONDITION = 2
#: Conditions with fewer training cells than this get a warning: the MMD estimate is noisy.
FEW_CELLS_PER_CONDITION = 10
#: Values scanned at a time, so that checks on large matrices need little extra memory.
_CHUNK = 10_000_000


def matrix_values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification of sparse input)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, values.size, _CHUNK):
        yield values[start : start + _CHUNK]


def in_memory_blocks(matrix) -> Iterator:
    """``matrix`` itself when in memory; row blocks of it read one by one when it is backed.

    A backed matrix (an HDF5 / zarr dataset of a ``backed="r"`` AnnData) is never loaded whole
    (:func:`~sctrvae._utils.row_blocks`).
    """
    if isinstance(matrix, np.ndarray) or sp.issparse(matrix):
        yield matrix
        return
    yield from row_blocks(matrix, _CHUNK)


def _value_chunks(matrix) -> Iterator[np.ndarray]:
    for block in in_memory_blocks(matrix):
        yield from _chunks(matrix_values(block))


def check_anndata_object(adata: ad.AnnData, call: str) -> None:
    """Raise unless ``adata`` is an AnnData object (in memory or backed) with at least one cell."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"{call} needs an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        # an empty selection, e.g. a cell type name the data spells differently
        raise ValueError(
            f"{call}: adata has no cells (0 observations); check the selection that made it, "
            "e.g. that the cell type and condition names exist in adata.obs."
        )


def check_indices(indices) -> None:
    """Raise for ``indices`` given as strings, e.g. a target condition passed positionally."""
    if isinstance(indices, str):
        raise TypeError(
            f"indices={indices!r} is a string, but indices selects cells (positions or a "
            f"boolean mask). To predict a condition, pass target_condition={indices!r}."
        )
    if indices is not None and np.asarray(indices).dtype.kind in "USO":
        raise TypeError(
            "indices holds strings, but it selects cells by position or boolean mask: pass "
            "target_condition=... for the condition, and cell names as positions, e.g. "
            "`adata.obs_names.get_indexer(names)`."
        )


def check_not_view(adata: ad.AnnData, call: str) -> None:
    """Raise for a view, which registering (or writing results) would silently turn into a copy."""
    if adata.is_view:
        raise ValueError(
            f"{call}: adata is a view of another AnnData (e.g. `adata[mask]`); registering it "
            "would silently replace the view with a copy. Make the copy explicit: "
            "`adata = adata[mask].copy()`."
        )


def check_finite(matrix, where: str) -> None:
    """Raise if ``matrix`` holds NaN or infinite values."""
    if not np.issubdtype(matrix.dtype, np.floating):
        return
    n_bad = sum(int(np.count_nonzero(~np.isfinite(chunk))) for chunk in _value_chunks(matrix))
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values; remove or impute them first "
            "(e.g. `adata = adata[:, np.isfinite(X).all(0)]` to drop the affected genes)."
        )


def check_expression(matrix, likelihood: str, where: str) -> None:
    """Raise if ``matrix`` cannot be modelled with ``likelihood``.

    Every likelihood needs finite values; count likelihoods need non-negative integers and no
    cell with zero total counts (its library size is zero, so it has no likelihood to fit).
    A backed matrix is read block by block, once per check.
    """
    check_finite(matrix, where)
    if likelihood not in ("nb", "zinb"):
        return
    if any(bool((chunk < 0).any()) for chunk in _value_chunks(matrix)):
        raise ValueError(
            f"{where} has negative values, which a count likelihood ({likelihood!r}) cannot "
            "model: pass the raw-count layer with `layer=`, or use likelihood='normal'."
        )
    if np.issubdtype(matrix.dtype, np.floating) and any(
        not np.array_equal(chunk, np.round(chunk)) for chunk in _value_chunks(matrix)
    ):
        raise ValueError(
            f"{where} has non-integer values and looks log-normalised: pass the raw-count "
            "layer with `layer=` (the NB/ZINB likelihoods model raw counts), or use "
            "likelihood='normal' for log-normalised data."
        )
    totals = np.concatenate(
        [np.asarray(block.sum(axis=1)).ravel() for block in in_memory_blocks(matrix)]
    )
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} cells have zero total counts in {where} (first: positions "
            f"{empty[:5].tolist()}); a count likelihood needs a positive library size. Remove "
            "them with `sc.pp.filter_cells(adata, min_counts=1)`."
        )


def check_condition_column(obs: pd.DataFrame, condition_key: str) -> None:
    """Raise if ``obs[condition_key]`` is missing or has missing values."""
    if condition_key not in obs:
        raise KeyError(
            f"condition_key {condition_key!r} is not a column of adata.obs "
            f"(columns: {list(obs.columns)})."
        )
    missing = obs[condition_key].isna().to_numpy()
    if missing.all():
        raise ValueError(
            f"adata.obs[{condition_key!r}] is empty (all values are missing); fill in the "
            "condition of every cell."
        )
    if missing.any():
        raise ValueError(
            f"adata.obs[{condition_key!r}] is missing for {int(missing.sum())} of {missing.size} "
            "cells; set their condition or drop them with "
            f"`adata = adata[adata.obs[{condition_key!r}].notna()].copy()`."
        )


def check_known_conditions(
    obs: pd.DataFrame, condition_key: str, conditions: Sequence[str]
) -> None:
    """Raise if ``obs[condition_key]`` holds conditions the model was not trained on."""
    check_condition_column(obs, condition_key)
    unknown = sorted(set(obs[condition_key].astype(str)) - set(conditions))
    if unknown:
        raise ValueError(
            f"adata.obs[{condition_key!r}] has conditions the model was not trained on: "
            f"{unknown}; the model knows {list(conditions)}. Keep only cells of known conditions."
        )


def check_condition_sizes(codes: np.ndarray, conditions: Sequence[str]) -> None:
    """Raise for conditions with 1 cell; warn below 10 cells.

    Conditions with no cells at all are left alone: they are categories this data does not use
    (e.g. the reference conditions when a query holding only a new one is mapped).
    """
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=len(conditions))
    sizes = {c: n for c, n in zip(conditions, counts.tolist(), strict=True) if n > 0}
    tiny = {c: n for c, n in sizes.items() if n < MIN_CELLS_PER_CONDITION}
    if tiny:
        raise ValueError(
            f"Conditions with fewer than {MIN_CELLS_PER_CONDITION} cells cannot be trained on: "
            f"{tiny}. Remove them (and re-run setup_anndata) or add cells."
        )
    few = {c: n for c, n in sizes.items() if n < FEW_CELLS_PER_CONDITION}
    if few:
        warnings.warn(
            f"Conditions with fewer than {FEW_CELLS_PER_CONDITION} cells: {few}; their MMD "
            "estimate is noisy and they are resampled in every minibatch.",
            UserWarning,
            stacklevel=3,
        )


def check_var_names(var_names: pd.Index, training_var_names: Sequence[str]) -> None:
    """Raise unless ``var_names`` are the training genes in the training order."""
    training = pd.Index(np.asarray(training_var_names).astype(str))
    given = pd.Index(np.asarray(var_names).astype(str))
    if given.equals(training):
        return
    fix = "Select and order the genes with `adata = adata[:, model.training_var_names].copy()`."
    missing = training.difference(given, sort=False)
    if missing.size:
        raise ValueError(
            f"adata lacks {missing.size} of the {training.size} genes the model was trained on "
            f"(e.g. {missing[:10].tolist()}); the model needs every training gene."
        )
    if given.size != training.size:
        raise ValueError(
            f"adata has {given.size - training.size} genes the model was not trained on. {fix}"
        )
    raise ValueError(f"adata has the training genes in a different order. {fix}")
