"""Reconstruction calibration: correct predicted draws by the model's error on the cells' data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import log1p_normalize


def calibrate_draws(
    observed: np.ndarray | sp.spmatrix,
    predicted: np.ndarray,
    reconstruction: np.ndarray,
    groups: pd.Series | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Predicted draws in log-normalised space, shifted by the per-gene reconstruction error.

    Parameters
    ----------
    observed
        Counts of the ``n`` cells, ``(n, genes)``.
    predicted, reconstruction
        Draws of counts of the same cells, ``(draws, n, genes)``: decoded under the target
        condition and under their own.
    groups
        Group of each cell (one correction per group); ``None``: one correction for all.

    Returns
    -------
    The corrected draws, ``log1p(x / total × 1e4)`` clipped at 0, ``(draws × n, genes)`` stacked
    by draw; and the corrections, one row per group.
    """
    n_draws, n_cells, n_genes = predicted.shape
    labels = (
        pd.Series(["all"] * n_cells) if groups is None else pd.Series(np.asarray(groups))
    ).astype(str)
    observed_log = log1p_normalize(observed)
    # per cell, over draws
    reconstructed_log = log1p_normalize(reconstruction, np.float32).mean(0, dtype=np.float64)
    corrected = log1p_normalize(predicted, np.float32)
    corrections = {}
    for label in pd.unique(labels):
        cells = np.flatnonzero(labels.to_numpy() == label)
        shift = observed_log[cells].mean(0) - reconstructed_log[cells].mean(0)
        corrected[:, cells] += shift.astype(np.float32)
        corrections[label] = shift
    np.clip(corrected, 0.0, None, out=corrected)
    table = pd.DataFrame.from_dict(corrections, orient="index")
    return corrected.reshape(n_draws * n_cells, n_genes), table
