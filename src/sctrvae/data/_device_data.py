"""The count matrix held on the training device, minibatches sliced from it there."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from torch.utils.data import Dataset

from ._count_positions import csr_counts


class DeviceResidentData:
    """Counts (CSR or dense) and condition codes of every cell, copied once to ``device``.

    A minibatch is then gathered by index arithmetic on the device (:func:`csr_rows`) and only
    that batch is densified, with no per-batch AnnData slicing, collation or host-to-device
    copy. On CPU the arrays share memory with the AnnData's where the dtypes allow (no copy) and
    rows are sliced by scipy, which is faster there.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData; its count matrix must be in memory (not backed).
    device
        Device to hold the data (the training device).
    """

    def __init__(self, adata_manager: AnnDataManager, device: torch.device | str):
        matrix = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if not (isinstance(matrix, np.ndarray) or sp.issparse(matrix)):
            raise ValueError(
                "device_resident=True needs the count matrix in memory; this AnnData is backed "
                "(read batch by batch from disk). Load it with `adata = adata.to_memory()`, or "
                "train without device_resident."
            )
        self.device = torch.device(device)
        self.n_vars = matrix.shape[1]
        codes = adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
        self.codes = torch.as_tensor(np.asarray(codes, dtype=np.int64).reshape(-1, 1))
        self.codes = self.codes.to(self.device)
        self.labels = None  # label codes, when registered (read by the label-aware MMD)
        if REGISTRY_KEYS.LABELS_KEY in adata_manager.data_registry:
            labels = adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1, 1))
            self.labels = self.labels.to(self.device)
        # covariates, when registered (read by the decoder and the batch-matched MMD)
        self.covariates = {
            key: torch.as_tensor(
                np.asarray(
                    adata_manager.get_from_registry(key),
                    dtype=np.int64 if key == REGISTRY_KEYS.CAT_COVS_KEY else np.float32,
                )
            ).to(self.device)
            for key in (REGISTRY_KEYS.CAT_COVS_KEY, REGISTRY_KEYS.CONT_COVS_KEY)
            if key in adata_manager.data_registry
        }
        self.host = None
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix)  # no copy for CSR input
            # int64 row pointers keep the offset arithmetic exact beyond 2**31 stored values
            self.crow = torch.as_tensor(matrix.indptr.astype(np.int64)).to(self.device)
            self.col = torch.as_tensor(matrix.indices).to(self.device)
            self.val = torch.as_tensor(matrix.data.astype(np.float32, copy=False)).to(self.device)
            self.dense = None
            # on CPU, scipy's row slicing (of the same memory) beats the vectorised gather,
            # which pays off on accelerators
            if self.device.type == "cpu":
                self.host = sp.csr_matrix(
                    (self.val.numpy(), self.col.numpy(), matrix.indptr), shape=matrix.shape
                )
        else:
            self.dense = torch.as_tensor(matrix.astype(np.float32, copy=False)).to(self.device)

    def counts(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense float32 counts of ``rows`` (a long tensor on :attr:`device`), as a minibatch.

        From CSR on CPU, the minibatch also holds its non-zero counts' positions
        (:func:`~sctrvae.data._count_positions.csr_counts`).
        """
        if self.dense is not None:
            return {REGISTRY_KEYS.X_KEY: self.dense[rows]}
        if self.host is not None:
            return csr_counts(self.host[rows.numpy()])
        return {REGISTRY_KEYS.X_KEY: csr_rows(self.crow, self.col, self.val, rows, self.n_vars)}


def csr_rows(
    crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, rows: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """Dense rows ``rows`` of the CSR matrix ``(crow, col, val)``, computed on their device.

    A handful of vectorised kernels, no Python loop and no host round trip but the batch's
    number of stored values.
    """
    start = crow[rows]
    length = crow[rows + 1] - start
    total = int(length.sum())
    # entry k of the batch's stored values is val[start[row] + k - offset[row]]
    offset = torch.cumsum(length, 0) - length
    entries = torch.repeat_interleave(start - offset, length, output_size=total)
    entries += torch.arange(total, device=crow.device)
    row = torch.repeat_interleave(
        torch.arange(rows.numel(), device=crow.device), length, output_size=total
    )
    batch = torch.zeros(rows.numel(), n_cols, dtype=val.dtype, device=crow.device)
    batch[row, col[entries].long()] = val[entries]
    return batch


class DeviceResidentDataset(Dataset):
    """Whole minibatches of the cells ``indices`` of a :class:`DeviceResidentData`.

    ``dataset[positions]`` takes a list of positions in ``indices`` (one batch, as yielded by
    :class:`~sctrvae.ConditionBalancedSampler`) and returns the tensors of those cells, in that
    order, on the data's device.
    """

    def __init__(self, data: DeviceResidentData, indices: np.ndarray):
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64)).to(data.device)

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[torch.as_tensor(positions, device=self.data.device)]
        tensors = {**self.data.counts(rows), REGISTRY_KEYS.BATCH_KEY: self.data.codes[rows]}
        if self.data.labels is not None:
            tensors[REGISTRY_KEYS.LABELS_KEY] = self.data.labels[rows]
        tensors.update({key: values[rows] for key, values in self.data.covariates.items()})
        return tensors
