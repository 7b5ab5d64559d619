"""A query with a new donor: scArches surgery for the new category, without retraining."""

import numpy as np
import torch

import sctrvae
from sctrvae import TRVAEModel
from sctrvae.model._surgery import block_order


def test_block_order_puts_new_columns_into_their_blocks():
    # prefix 2, blocks [condition 2 -> 3, donor 3 -> 4]: the appended columns are 7 (condition)
    # and 8 (donor)
    np.testing.assert_array_equal(block_order(2, [2, 3], [3, 4]), [0, 1, 2, 3, 7, 4, 5, 6, 8])


def test_a_new_donor_is_mapped_and_transferred(tmp_path):
    data = sctrvae.datasets.simulate_donors(
        n_cells=500, n_genes=40, n_cell_types=2, n_donors=4, donor_effect=0.8, seed=3
    )
    is_new = data.obs["donor"] == "donor_3"
    ref = data[~is_new].copy()
    TRVAEModel.setup_anndata(ref, "condition", labels_key="cell_type", batch_key="donor")
    model = TRVAEModel(ref, n_hidden=16, n_latent=4)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    model.save(tmp_path / "ref")
    before = model.predict(ref, target_condition="stimulated").X
    frozen = {k: v.detach().clone() for k, v in model.module.state_dict().items()}

    query = data[is_new & (data.obs["condition"] == "control")].copy()  # control cells only
    query_model = TRVAEModel.load_query_data(query, str(tmp_path / "ref"))
    assert query_model.module.n_cats_per_cov == [4]
    query_model.train(
        max_epochs=3, batch_size=32, enable_progress_bar=False, plan_kwargs={"weight_decay": 0.0}
    )
    # only the new donor's columns (in the first layers of g1 and g2, which read the donor)
    # moved: the reference predicts as before
    grown = set()
    for name, value in query_model.module.state_dict().items():
        if value.shape == frozen[name].shape:
            assert torch.equal(value, frozen[name]), name
        else:
            grown.add(name)
            assert torch.equal(value[:, :-1], frozen[name]), name
    assert grown == {"g1.fc_layers.Layer 0.0.weight", "g2.fc_layers.Layer 0.0.weight"}
    np.testing.assert_allclose(
        query_model.predict(ref, target_condition="stimulated").X, before, rtol=1e-5, atol=1e-5
    )
    pred = query_model.predict(query, target_condition="stimulated")
    assert (pred.obs["donor"] == "donor_3").all()
    assert np.isfinite(pred.X).all()
    z = query_model.get_latent_representation(query)
    assert np.isfinite(z).all()


def test_a_new_condition_and_a_new_donor_keep_their_blocks():
    data = sctrvae.datasets.simulate_donors(
        n_cells=400,
        n_genes=30,
        n_cell_types=2,
        n_donors=3,
        conditions=("control", "stimulated", "drugC"),
        seed=4,
    )
    ref = data[(data.obs["donor"] != "donor_2") & (data.obs["condition"] != "drugC")].copy()
    TRVAEModel.setup_anndata(ref, "condition", batch_key="donor")
    model = TRVAEModel(ref, n_hidden=8, n_latent=3, encode_covariates=True)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    old = model.module.encoder.encoder.fc_layers[0][0].weight.detach().clone()
    query = data[(data.obs["donor"] == "donor_2") & (data.obs["condition"] == "drugC")].copy()
    query_model = TRVAEModel.load_query_data(query, model)
    new = query_model.module.encoder.encoder.fc_layers[0][0].weight.detach()
    # [genes 30 | condition 2 (+1) | donor 2 (+1)]: the reference columns keep their places
    assert new.shape[1] == 30 + 3 + 3
    torch.testing.assert_close(new[:, :32], old[:, :32])
    torch.testing.assert_close(new[:, 33:35], old[:, 32:34])
