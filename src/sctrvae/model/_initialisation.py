"""A data-driven start for the decoder's per-gene parameters."""

from __future__ import annotations

import numpy as np

from .._utils import row_blocks, sums_by_code


def condition_gene_means(matrix, codes: np.ndarray, n_conditions: int, likelihood: str):
    """Each condition's gene profile, in the units of the decoder's output (genes × conditions).

    Counts (``"nb"``, ``"zinb"``): the log of each gene's share of the condition's total count,
    with one pseudo-count per gene (a gene never seen gets a low but finite value). Log-normalised
    values (``"normal"``): each gene's mean. Cells coded ``-1`` are left out. Summed in row
    blocks, in memory or backed: the float64 product would otherwise copy a float32 matrix whole
    (0.9 GB at 200k cells).
    """
    sums = np.zeros((n_conditions, matrix.shape[1]))
    start = 0
    for block in row_blocks(matrix):
        sums += sums_by_code(block, codes[start : start + block.shape[0]], n_conditions)
        start += block.shape[0]
    cells = np.bincount(codes[codes >= 0], minlength=n_conditions)
    if likelihood == "normal":
        return (sums / np.maximum(cells, 1)[:, None]).T
    sums += 1.0
    return np.log(sums / sums.sum(1, keepdims=True)).T
