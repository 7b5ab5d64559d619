"""Minibatches densified from CSR rows, with the positions of their non-zero counts."""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from torch.utils.data import Dataset

from .._constants import COUNT_POSITIONS_KEY
from .._threads import few_entries_on_one_thread


def dense_counts(
    indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_cols: int
) -> dict[str, torch.Tensor]:
    """Dense rows of a CSR minibatch and the flat positions of its stored entries.

    The positions come from the CSR arrays at the cost of the stored entries: the likelihood
    would otherwise scan every entry of the dense minibatch for them (on Kang, a tenth of a CPU
    training step). Stored zeros keep their positions (their likelihood terms are 0). A
    minibatch with repeated entries (non-canonical CSR) gets them summed, as scipy's ``toarray``
    does, and no positions.
    """
    lengths = indptr.long().diff()
    dense = torch.zeros(lengths.numel() * n_cols, dtype=values.dtype)
    with few_entries_on_one_thread(values.numel()):
        starts = torch.arange(lengths.numel()) * n_cols
        positions = torch.repeat_interleave(starts, lengths) + indices
        dense.index_put_((positions,), values, accumulate=True)
        batch = {REGISTRY_KEYS.X_KEY: dense.view(-1, n_cols)}
        if bool((positions.diff() > 0).all()):  # sorted and distinct, as scipy keeps CSR
            batch[COUNT_POSITIONS_KEY] = positions
    return batch


def csr_counts(matrix) -> dict[str, torch.Tensor]:
    """:func:`dense_counts` of a scipy CSR minibatch, in float32."""
    arrays = (matrix.indptr, matrix.indices, matrix.data.astype(np.float32, copy=False))
    return dense_counts(*(torch.from_numpy(a) for a in arrays), matrix.shape[1])


class CSRCountsDataset(Dataset):
    """Minibatches of the cells ``indices`` of a registered AnnData whose counts are CSR.

    The counts (in memory or backed) are sliced here into dense rows with the positions of
    their non-zero entries (:func:`csr_counts`); the other registered fields come from
    scvi-tools' dataset. ``dataset[positions]`` takes a list of positions in ``indices``.
    """

    def __init__(self, adata_manager: AnnDataManager, indices: np.ndarray):
        self.counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.indices = np.asarray(indices)
        self.backed = adata_manager.adata.isbacked
        others = [k for k in adata_manager.data_registry if k != REGISTRY_KEYS.X_KEY]
        self.others = adata_manager.create_torch_dataset(
            indices=indices, data_and_attributes=others
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: list[int]) -> dict:
        rows = self.indices[positions]
        # scvi-tools' dataset reads a backed AnnData in sorted order
        batch = self.others[positions]
        return {**batch, **csr_counts(self.counts[np.sort(rows) if self.backed else rows])}
