"""Reference mapping: extend a trained model to a condition it never saw (scArches surgery)."""

import numpy as np
import pytest
import torch

import sctrvae
from sctrvae import TRVAEModel


def query_anndata(conditions):
    """Cells of ``conditions``, with the genes in another order and one gene missing."""
    adata = sctrvae.datasets.simulate(
        n_cells=600,
        n_genes=120,
        n_cell_types=3,
        conditions=("control", "stimulated", "drugC"),
        seed=2,
    )
    adata = adata[adata.obs["condition"].isin(conditions)].copy()
    return adata[:, adata.var_names[::-1][1:]].copy()


# a query of the new condition alone, and one that also holds cells of a reference condition
@pytest.mark.parametrize("query_conditions", [["drugC"], ["drugC", "stimulated"]])
def test_query_with_a_new_condition(trained, query_conditions):
    model, ref = trained
    ref_cells = np.flatnonzero(ref.obs["condition"] == "control")
    before = {
        c: model.predict(ref, indices=ref_cells, target_condition=c) for c in model.conditions
    }
    frozen = {k: v.detach().clone() for k, v in model.module.state_dict().items()}

    query = query_anndata(query_conditions)
    TRVAEModel.prepare_query_anndata(query, model)
    assert query.var_names.equals(ref.var_names)
    query_model = TRVAEModel.load_query_data(query, model)
    assert query_model.conditions == ["control", "stimulated", "drugC"]
    assert query_model.module.n_conditions == 3
    loaded = {k: v.detach().clone() for k, v in query_model.module.state_dict().items()}

    # no weight decay: frozen weights get no gradient, but Adam's decay would still move them
    query_model.train(
        max_epochs=3, batch_size=64, enable_progress_bar=False, plan_kwargs={"weight_decay": 0.0}
    )
    assert np.isfinite(query_model.history["elbo_train"].to_numpy(dtype=float)).all()

    # the query cells are embedded and transferred to every condition
    z = query_model.get_latent_representation()
    assert z.shape == (query.n_obs, 5)
    assert np.isfinite(z).all()
    for target in query_model.conditions:
        pred = query_model.predict(query, target_condition=target)
        assert pred.shape == query.shape
        assert (pred.obs["condition"] == target).all()
        assert np.isfinite(pred.X).all()

    # reference cells can be transferred to the new condition...
    to_new = query_model.predict(ref, indices=ref_cells, target_condition="drugC")
    assert to_new.shape == (ref_cells.size, ref.n_vars)
    assert np.isfinite(to_new.X).all()
    assert not np.allclose(to_new.layers["normalized"], before["stimulated"].layers["normalized"])
    # ...and their predictions under a reference condition change only if the query holds it
    for condition, expected in before.items():
        after = query_model.predict(ref, indices=ref_cells, target_condition=condition)
        moved = not np.allclose(after.X, expected.X, rtol=1e-5, atol=1e-5)
        assert moved == (condition in query_conditions), condition
    # the surgery trained only condition columns of the condition-injected layers and the offset:
    # the new condition's, and a reference condition's only where the query holds its cells
    extended = set()
    for name, value in query_model.module.state_dict().items():
        if value.shape == frozen[name].shape:
            assert torch.equal(value, frozen[name]), name
            continue
        extended.add(name)
        assert torch.equal(value[:, :-3], frozen[name][:, :-2]), name  # gene inputs
        for k, condition in enumerate(model.conditions):
            same = torch.equal(value[:, k - 3], frozen[name][:, k - 2])
            assert same == (condition not in query_conditions), (name, condition)
        assert not torch.equal(value[:, -1], loaded[name][:, -1]), name
    assert extended == {
        "encoder.encoder.fc_layers.Layer 0.0.weight",
        "g1.fc_layers.Layer 0.0.weight",
        "condition_offset",
    }
