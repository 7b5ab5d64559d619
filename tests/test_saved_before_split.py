"""A model saved by release 0.1.0 (before the model class was split into mixins) still loads.

``data/model_0.1.0`` was written by commit 0d6e5c6: a small model with labels registered, trained
on ``simulate(n_cells=200, n_genes=20, n_cell_types=2, seed=0)``, with its mean prediction and
latent means in ``expected.npz``.
"""

from pathlib import Path

import numpy as np

import sctrvae
from sctrvae import TRVAEModel

SAVED = Path(__file__).parent / "data" / "model_0.1.0"


def saved_data():
    return sctrvae.datasets.simulate(n_cells=200, n_genes=20, n_cell_types=2, seed=0)


def test_a_model_saved_before_the_split_loads_and_predicts_as_it_did():
    expected = np.load(SAVED / "expected.npz")
    model = TRVAEModel.load(SAVED, adata=saved_data())
    assert model.conditions == ["control", "stimulated"]
    assert model.module.mmd_mode == "reweighted"  # the default with labels, read from the save
    assert model.sctrvae_version_ == "0.1.0"
    # float32 forward passes: a few ulps of difference between CPUs' kernels, nothing more
    pred = model.predict(target_condition="stimulated")
    np.testing.assert_allclose(pred.X, expected["mean_X"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.get_latent_representation(), expected["z"], atol=1e-5)


def test_a_model_saved_before_the_split_loads_without_data():
    model = TRVAEModel.load(SAVED, adata=False)
    assert model.adata is None
    assert model.training_var_names.equals(saved_data().var_names)
