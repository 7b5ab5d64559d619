"""TRVAEModel.load with the saved AnnData, without any, and the messages when data is missing."""

import numpy as np
import pytest

import sctrvae
from sctrvae import TRVAEModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained model saved twice: with its AnnData and without."""
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    root = tmp_path_factory.mktemp("models")
    model.save(root / "with_data", save_anndata=True)
    model.save(root / "without_data")
    expected = model.predict(target_condition="stimulated").X
    return root, adata, expected


def test_load_reads_the_saved_anndata(saved):
    root, adata, expected = saved
    model = TRVAEModel.load(root / "with_data")
    assert model.adata is not adata
    assert model.adata.shape == adata.shape
    np.testing.assert_array_equal(model.predict(target_condition="stimulated").X, expected)


def test_load_without_saved_anndata_names_save_anndata(saved):
    root, _, _ = saved
    with pytest.raises(ValueError, match=r"save_anndata=True"):
        TRVAEModel.load(root / "without_data")


@pytest.mark.parametrize("directory", ["with_data", "without_data"])
def test_load_without_data_predicts_on_data_passed_later(saved, directory):
    root, _, expected = saved
    model = TRVAEModel.load(root / directory, adata=False)
    assert model.adata is None
    assert model.conditions == ["control", "stimulated"]
    with pytest.raises(ValueError, match=r"adata=False.*save_anndata=True"):
        model.predict(target_condition="stimulated")
    fresh = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    np.testing.assert_array_equal(model.predict(fresh, target_condition="stimulated").X, expected)
