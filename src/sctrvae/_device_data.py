"""The count matrix held on the training device, minibatches sliced from it there."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from torch.utils.data import Dataset


class DeviceResidentData:
    """Counts (CSR or dense) and condition codes of every cell, copied once to ``device``.

    A minibatch is then gathered by index arithmetic on the device and only that batch is
    densified, with no per-batch scipy / AnnData slicing, collation or host-to-device copy. On
    CPU the tensors share memory with the AnnData's arrays where the dtypes allow (no copy).

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
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix)  # no copy for CSR input
            # int64 row pointers keep the offset arithmetic exact beyond 2**31 stored values
            self.crow = torch.as_tensor(matrix.indptr.astype(np.int64)).to(self.device)
            self.col = torch.as_tensor(matrix.indices).to(self.device)
            self.val = torch.as_tensor(matrix.data.astype(np.float32, copy=False)).to(self.device)
            self.dense = None
        else:
            self.dense = torch.as_tensor(matrix.astype(np.float32, copy=False)).to(self.device)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense float32 counts of ``rows`` (a long tensor on :attr:`device`)."""
        if self.dense is not None:
            return self.dense[rows]
        start = self.crow[rows]
        length = self.crow[rows + 1] - start
        total = int(length.sum())
        # position k of the output's stored values comes from val[start[row] + k - offset[row]]
        offset = torch.cumsum(length, 0) - length
        entries = torch.repeat_interleave(start - offset, length, output_size=total)
        entries += torch.arange(total, device=self.device)
        row = torch.repeat_interleave(
            torch.arange(rows.numel(), device=self.device), length, output_size=total
        )
        batch = torch.zeros(rows.numel(), self.n_vars, device=self.device)
        batch[row, self.col[entries].long()] = self.val[entries]
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
        return {
            REGISTRY_KEYS.X_KEY: self.data.rows(rows),
            REGISTRY_KEYS.BATCH_KEY: self.data.codes[rows],
        }
