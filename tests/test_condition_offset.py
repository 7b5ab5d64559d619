"""The decoder's per-gene, per-condition offset of the log-rates."""

import math

import numpy as np
import pytest
import torch

import sctrvae


def test_offset_multiplies_a_genes_rate_under_its_condition(trained_copy):
    model, adata = trained_copy
    cells = np.flatnonzero(adata.obs["condition"] == "control")[:40]
    before = model.predict(adata, indices=cells, target_condition="stimulated")
    stimulated = model.conditions.index("stimulated")
    with torch.no_grad():
        model.module.condition_offset[0, stimulated] += math.log(2.0)
    after = model.predict(adata, indices=cells, target_condition="stimulated")
    control = model.predict(adata, indices=cells, target_condition="control")
    ratio_before = before.layers["normalized"][:, 0] / before.layers["normalized"][:, 1:].sum(1)
    ratio_after = after.layers["normalized"][:, 0] / after.layers["normalized"][:, 1:].sum(1)
    np.testing.assert_allclose(ratio_after / ratio_before, 2.0, rtol=1e-4)
    # the other condition's decoding does not read the changed column
    with torch.no_grad():
        model.module.condition_offset[0, stimulated] -= math.log(2.0)
    again = model.predict(adata, indices=cells, target_condition="control")
    np.testing.assert_allclose(control.X, again.X, rtol=1e-6)


def test_model_saved_before_the_offset_loads_with_a_zero_offset(trained, tmp_path):
    model, adata = trained
    plain = sctrvae.TRVAEModel(adata, n_hidden=32, n_latent=5, condition_offset=False)
    plain.module.load_state_dict(
        {k: v for k, v in model.module.state_dict().items() if k != "condition_offset"}
    )
    plain.is_trained_ = True
    plain.save(tmp_path / "old", save_anndata=False)
    # an older release knew no condition_offset argument: the saved settings lack it
    saved = torch.load(tmp_path / "old" / "model.pt", weights_only=False)
    saved["attr_dict"]["init_params_"]["kwargs"]["module_kwargs"].pop("condition_offset")
    torch.save(saved, tmp_path / "old" / "model.pt")

    loaded = sctrvae.TRVAEModel.load(tmp_path / "old", adata=adata)
    assert loaded.module.condition_offset is not None
    assert torch.count_nonzero(loaded.module.condition_offset) == 0
    cells = np.arange(30)
    np.testing.assert_allclose(
        loaded.predict(adata, indices=cells, target_condition="stimulated").X,
        plain.predict(adata, indices=cells, target_condition="stimulated").X,
        rtol=1e-5,
    )


@pytest.mark.parametrize("condition_offset", [True, False])
def test_offset_is_a_parameter_only_when_asked_for(sim, condition_offset):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = sctrvae.TRVAEModel(sim, n_hidden=16, condition_offset=condition_offset)
    names = dict(model.module.named_parameters())
    assert ("condition_offset" in names) is condition_offset
    if condition_offset:
        assert names["condition_offset"].shape == (sim.n_vars, 2)
