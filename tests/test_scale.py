"""Large-data paths: backed AnnData and the device-resident count matrix."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi import REGISTRY_KEYS

import sctrvae
from sctrvae import DeviceResidentData, TRVAEModel
from sctrvae.data._device_data import csr_rows

TRAIN = {"max_epochs": 3, "batch_size": 64, "accelerator": "cpu", "enable_progress_bar": False}


def fit(adata, **datasplitter_kwargs):
    scvi.settings.seed = 0
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=16, n_latent=3)
    model.train(**TRAIN, datasplitter_kwargs=datasplitter_kwargs)
    return model


@pytest.fixture
def data():
    return sctrvae.datasets.simulate(n_cells=500, n_genes=40, seed=3)


def test_backed_anndata_trains_and_predicts_like_in_memory(tmp_path, data):
    data.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    in_memory = fit(data.copy())
    on_disk = fit(backed)
    assert on_disk.adata.isbacked
    np.testing.assert_allclose(
        on_disk.history["elbo_train"].to_numpy(float),
        in_memory.history["elbo_train"].to_numpy(float),
    )
    cells = [400, 3, 250, 3, 17]  # unsorted, with a repeat
    expected = in_memory.predict(indices=cells, target_condition="stimulated")
    predicted = on_disk.predict(indices=cells, target_condition="stimulated")
    assert list(predicted.obs_names) == list(expected.obs_names)
    np.testing.assert_allclose(predicted.X, expected.X, rtol=1e-5)
    np.testing.assert_allclose(
        on_disk.get_latent_representation(indices=cells),
        in_memory.get_latent_representation(indices=cells),
        rtol=1e-5,
        atol=1e-6,
    )
    backed.file.close()


def test_device_resident_training_sees_the_same_batches(data):
    normal = fit(data.copy())
    resident = fit(data.copy(), device_resident=True)
    for key in ("elbo_train", "validation_loss"):
        np.testing.assert_allclose(
            resident.history[key].to_numpy(float), normal.history[key].to_numpy(float)
        )
    np.testing.assert_allclose(
        resident.get_latent_representation(), normal.get_latent_representation(), rtol=1e-5
    )


@pytest.mark.parametrize("dense", [False, True])
def test_device_resident_rows_match_the_matrix(data, dense):
    x = data.X.toarray()
    x[[5, 9]] = 0  # empty rows
    data.X = x if dense else sp.csr_matrix(x)
    TRVAEModel.setup_anndata(data, condition_key="condition")
    model = TRVAEModel(data, likelihood="normal")  # accepts the empty rows
    resident = DeviceResidentData(model.adata_manager, "cpu")
    rows = np.array([9, 0, 499, 5, 0, 250])
    batch = resident.counts(torch.as_tensor(rows))[REGISTRY_KEYS.X_KEY]
    np.testing.assert_array_equal(batch.numpy(), x[rows])
    codes = data.obs["condition"].cat.codes.to_numpy()[rows]
    np.testing.assert_array_equal(resident.codes[torch.as_tensor(rows)].numpy().ravel(), codes)


def test_csr_rows_gathers_rows_as_on_an_accelerator():
    x = sp.random(50, 20, density=0.2, format="csr", dtype=np.float32, random_state=0)
    x[[3, 30]] = 0  # empty rows
    x.eliminate_zeros()
    tensors = [torch.as_tensor(a) for a in (x.indptr.astype(np.int64), x.indices, x.data)]
    rows = np.array([30, 0, 49, 3, 0, 17])
    batch = csr_rows(*tensors, torch.as_tensor(rows), x.shape[1])
    np.testing.assert_array_equal(batch.numpy(), x[rows].toarray())


def test_device_resident_shares_memory_on_cpu(data):
    TRVAEModel.setup_anndata(data, condition_key="condition")
    resident = DeviceResidentData(TRVAEModel(data).adata_manager, "cpu")
    assert resident.val.data_ptr() == data.X.data.ctypes.data
    assert resident.col.data_ptr() == data.X.indices.ctypes.data


def test_device_resident_rejects_backed_data(tmp_path, data):
    data.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"device_resident=True needs the count matrix in memory"):
        fit(backed, device_resident=True)
    backed.file.close()
