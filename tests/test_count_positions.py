"""Training minibatches densified from CSR rows carry the positions of their non-zero counts."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from sctrvae import ConditionBalancedDataSplitter, TRVAEModel
from sctrvae._constants import COUNT_POSITIONS_KEY
from sctrvae.data._count_positions import dense_counts


def csr_arrays(matrix):
    return [torch.from_numpy(a) for a in (matrix.indptr, matrix.indices, matrix.data)]


def test_dense_counts_are_the_rows_and_their_stored_positions():
    x = sp.random(30, 25, density=0.2, format="csr", dtype=np.float32, random_state=0)
    x.data[:3] = 0  # stored zeros keep their positions (their likelihood terms are 0)
    batch = dense_counts(*csr_arrays(x), x.shape[1])
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.X_KEY].numpy(), x.toarray())
    stored = np.repeat(np.arange(30), np.diff(x.indptr)) * 25 + x.indices
    assert (x.toarray().reshape(-1) != 0).sum() < len(stored)
    np.testing.assert_array_equal(batch[COUNT_POSITIONS_KEY].numpy(), stored)


def test_repeated_entries_are_summed_and_give_no_positions():
    # non-canonical CSR: scipy's toarray sums the repeats; the likelihood scans for itself
    x = sp.csr_matrix((np.float32([1, 2, 5]), [3, 3, 0], [0, 2, 3]), shape=(2, 4))
    batch = dense_counts(*csr_arrays(x), 4)
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.X_KEY].numpy(), x.toarray())
    assert COUNT_POSITIONS_KEY not in batch


@pytest.mark.parametrize("source", ["csr", "dense", "resident csr", "resident dense"])
def test_training_batches_carry_their_counts_positions(sim, source):
    adata = sim.copy()
    adata.X = sp.csr_matrix(adata.X) if "csr" in source else np.asarray(adata.X.todense())
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata)
    splitter = ConditionBalancedDataSplitter(
        model.adata_manager, batch_size=64, device_resident="resident" in source
    )
    for loader in (splitter.train_dataloader(), splitter.val_dataloader()):
        batch = next(iter(loader))
        x = batch[REGISTRY_KEYS.X_KEY]
        assert x.dtype == torch.float32
        assert x.shape[1] == adata.n_vars
        expected = x.reshape(-1).nonzero().squeeze(1)
        if "csr" in source:
            torch.testing.assert_close(batch[COUNT_POSITIONS_KEY], expected)
        else:  # dense counts: the likelihood finds them
            assert COUNT_POSITIONS_KEY not in batch
