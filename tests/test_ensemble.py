import numpy as np
import pytest
import scvi
import torch

import sctrvae
from sctrvae.metrics import log1p_normalize


@pytest.fixture(scope="module")
def ensemble():
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=400, n_genes=80, n_cell_types=3, seed=2)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    ensemble = sctrvae.TRVAEEnsemble(adata, n_models=2, n_hidden=32, n_latent=4)
    ensemble.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return ensemble, adata


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.module.parameters()])


def test_seeded_members_differ_repeat_and_leave_the_seed_alone(ensemble):
    fitted, adata = ensemble
    first, second = fitted.members
    assert not torch.allclose(weights(first), weights(second))
    assert scvi.settings.seed == 0  # restored after training
    scvi.settings.seed = 0
    again = sctrvae.TRVAEEnsemble(adata, n_models=2, n_hidden=32, n_latent=4)
    again.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    for old, new in zip(fitted.members, again.members, strict=True):
        torch.testing.assert_close(weights(old), weights(new), rtol=0, atol=0)


def test_mean_prediction_averages_the_members(ensemble):
    fitted, adata = ensemble
    ctrl = np.flatnonzero(adata.obs["condition"] == "control")[:50]
    pred = fitted.predict(adata, indices=ctrl, target_condition="stimulated", key_added="ens")
    members = [
        m.predict(adata, indices=ctrl, target_condition="stimulated") for m in fitted.members
    ]
    np.testing.assert_allclose(pred.X, (members[0].X + members[1].X) / 2, rtol=1e-6)
    assert not np.allclose(members[0].X, members[1].X)
    np.testing.assert_allclose(pred.layers["log_normalized"], log1p_normalize(pred.X), rtol=1e-5)
    np.testing.assert_allclose(pred.layers["normalized"].sum(1), 1.0, rtol=1e-5)
    written = adata.layers["ens"]
    np.testing.assert_array_equal(written[ctrl], pred.layers["log_normalized"])
    assert np.isnan(np.delete(written, ctrl, axis=0)).all()
    assert adata.uns["ens"]["n_models"] == 2


@pytest.mark.parametrize("readout", ["sampled", "calibrated"])
def test_draws_of_every_member_are_stacked(ensemble, readout):
    fitted, adata = ensemble
    ctrl = np.flatnonzero(adata.obs["condition"] == "control")[:30]
    pred = fitted.predict(
        adata,
        indices=ctrl,
        target_condition="stimulated",
        readout=readout,
        n_samples=3,
        key_added="draws",
    )
    assert pred.shape == (2 * 3 * 30, adata.n_vars)
    assert pred.obs_names.is_unique
    np.testing.assert_array_equal(np.bincount(pred.obs["sctrvae_member"]), [90, 90])
    np.testing.assert_array_equal(pred.obs["sctrvae_draw"], np.repeat(np.arange(6), 30))
    per_cell = pred.layers["log_normalized"].reshape(6, 30, -1).mean(0)
    np.testing.assert_allclose(adata.layers["draws"][ctrl], per_cell, rtol=1e-6)
    if readout == "calibrated":
        assert pred.uns["sctrvae_calibration"].shape == (1, adata.n_vars)
        assert (pred.layers["log_normalized"] >= 0).all()


@pytest.mark.parametrize(
    ("readout", "n_samples"), [("mean", None), ("sampled", 3), ("calibrated", 3)]
)
def test_the_layer_alone_is_the_one_written_with_the_draws(ensemble, readout, n_samples):
    fitted, adata = ensemble
    work = adata.copy()
    ctrl = np.flatnonzero(work.obs["condition"] == "control")[:40]
    kwargs = {
        "indices": ctrl,
        "target_condition": "stimulated",
        "readout": readout,
        "n_samples": n_samples,
        "batch_size": 16,
    }
    torch.manual_seed(2)
    pred = fitted.predict(work, key_added="with_draws", **kwargs)
    torch.manual_seed(2)
    assert fitted.predict(work, key_added="alone", return_anndata=False, **kwargs) is None
    np.testing.assert_allclose(
        work.layers["alone"], work.layers["with_draws"], rtol=1e-5, atol=1e-6
    )
    assert np.isnan(np.delete(work.layers["alone"], ctrl, axis=0)).all()
    assert work.uns["alone"] == pred.uns["sctrvae_prediction"]
    with pytest.raises(ValueError, match="pass key_added"):
        fitted.predict(work, return_anndata=False, **kwargs)


def test_latents_are_the_members_side_by_side(ensemble):
    fitted, adata = ensemble
    latent = fitted.get_latent_representation(adata, key_added="ens_z")
    assert latent.shape == (adata.n_obs, 8)
    np.testing.assert_array_equal(latent[:, 4:], fitted.members[1].get_latent_representation())
    np.testing.assert_array_equal(adata.obsm["ens_z"], latent)
    y = fitted.get_latent_representation(adata, indices=[0, 5], representation="y")
    assert y.shape == (2, 64)


def test_save_and_load_round_trip(ensemble, tmp_path):
    fitted, adata = ensemble
    fitted.save(tmp_path / "ens", save_anndata=True)
    with pytest.raises(ValueError, match="overwrite"):
        fitted.save(tmp_path / "ens")
    loaded = sctrvae.TRVAEEnsemble.load(tmp_path / "ens")
    assert loaded.n_models == 2
    cells = np.arange(20)
    np.testing.assert_array_equal(
        loaded.predict(indices=cells, target_condition="stimulated").X,
        fitted.predict(adata, indices=cells, target_condition="stimulated").X,
    )
    without_data = sctrvae.TRVAEEnsemble.load(tmp_path / "ens", adata=False)
    assert all(m.adata is None for m in without_data.members)


def test_bad_ensembles_are_rejected(ensemble, sim):
    fitted, _ = ensemble
    with pytest.raises(ValueError, match="n_models"):
        sctrvae.TRVAEEnsemble(sim, n_models=0)
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    other = sctrvae.TRVAEModel(sim, n_hidden=32, n_latent=4)
    with pytest.raises(ValueError, match="same genes"):
        sctrvae.TRVAEEnsemble.from_models([fitted.members[0], other])


def test_training_prints_one_progress_bar_over_the_members(capfd):
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=30, n_cell_types=2, seed=3)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    ensemble = sctrvae.TRVAEEnsemble(adata, n_models=2, n_hidden=16, n_latent=2)
    capfd.readouterr()
    ensemble.train(max_epochs=1, batch_size=64)
    out, err = capfd.readouterr()
    printed = out + err
    for banner in ("GPU available", "Tip", "Loading", "Trainer.fit", "Epoch"):
        assert banner not in printed
    assert "ensemble" in printed
    assert "2/2" in printed
    # a user's own train() keeps scvi-tools' progress bar
    model = sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=2)
    model.train(max_epochs=1, batch_size=64)
    out, err = capfd.readouterr()
    assert "Epoch 1/1" in out + err
