"""Checks on user input that fail early with a message naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def matrix_values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification of sparse input)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def check_expression(matrix, likelihood: str, where: str) -> None:
    """Raise if ``matrix`` cannot be modelled with ``likelihood``.

    Count likelihoods need non-negative integers; every likelihood needs finite values.
    """
    values = matrix_values(matrix)
    if not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values; remove or impute them first.")
    if likelihood in ("nb", "zinb"):
        if (values < 0).any():
            raise ValueError(
                f"{where} has negative values, which a count likelihood ({likelihood!r}) cannot "
                "model: pass the raw-count layer with `layer=`, or use likelihood='normal'."
            )
        if not np.array_equal(values, np.round(values)):
            raise ValueError(
                f"{where} has non-integer values and looks log-normalised: pass the raw-count "
                "layer with `layer=` (the NB/ZINB likelihoods model raw counts), or use "
                "likelihood='normal' for log-normalised data."
            )
