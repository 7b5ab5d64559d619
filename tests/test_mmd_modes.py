"""labels_key and the label-aware MMD modes at the model level."""

import numpy as np
import pytest

import sctrvae


def test_label_modes_need_registered_labels_and_labels_make_the_default_reweighted(sim):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    assert sctrvae.TRVAEModel(sim).module.mmd_mode == "global"
    with pytest.raises(ValueError, match="labels_key"):
        sctrvae.TRVAEModel(sim, mmd_mode="label")
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition", labels_key="cell_type")
    assert sctrvae.TRVAEModel(sim).module.mmd_mode == "reweighted"
    assert sctrvae.TRVAEModel(sim, mmd_mode="global").module.mmd_mode == "global"
    model = sctrvae.TRVAEModel(sim, mmd_mode="label")
    assert (model.module.mmd_mode, model.module.n_labels) == ("label", 3)


def test_missing_labels_column_is_rejected(sim):
    with pytest.raises(KeyError, match="labels_key"):
        sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition", labels_key="nope")
    sim.obs["with_gaps"] = sim.obs["cell_type"].astype(object)
    sim.obs.iloc[0, sim.obs.columns.get_loc("with_gaps")] = np.nan
    with pytest.raises(KeyError, match="every cell"):
        sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition", labels_key="with_gaps")


@pytest.mark.parametrize("device_resident", [False, True])
@pytest.mark.parametrize("mode", ["label", "reweighted"])
def test_label_modes_train_with_a_group_held_out_of_one_condition(sim, mode, device_resident):
    held_out = (sim.obs["cell_type"] == "type_0") & (sim.obs["condition"] == "stimulated")
    adata = sim[~held_out.to_numpy()].copy()
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition", labels_key="cell_type")
    model = sctrvae.TRVAEModel(adata, n_hidden=32, n_latent=4, mmd_mode=mode)
    model.train(
        max_epochs=2,
        batch_size=64,
        enable_progress_bar=False,
        datasplitter_kwargs={"device_resident": device_resident},
    )
    mmd = model.history["mmd_train"].to_numpy(dtype=float)
    assert np.isfinite(mmd).all()
    assert (mmd > 0).all()
    # prediction needs no label of the target condition
    source = sim[(sim.obs["cell_type"] == "type_0").to_numpy() & ~held_out.to_numpy()].copy()
    pred = model.predict(source, target_condition="stimulated")
    assert pred.shape == source.shape
    assert np.isfinite(pred.X).all()


@pytest.mark.parametrize("mmd_mode", ["reweighted", "global"])
def test_labels_and_the_mode_survive_save_and_load(sim, tmp_path, mmd_mode):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition", labels_key="cell_type")
    model = sctrvae.TRVAEModel(sim, n_hidden=16, n_latent=3, mmd_mode=mmd_mode)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    model.save(tmp_path / "m")
    without_data = sctrvae.TRVAEModel.load(tmp_path / "m", adata=False)
    assert (without_data.module.mmd_mode, without_data.module.n_labels) == (mmd_mode, 3)
    loaded = sctrvae.TRVAEModel.load(tmp_path / "m", adata=sim)
    assert loaded.module.mmd_mode == mmd_mode
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
