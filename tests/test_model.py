import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sctrvae
from sctrvae import TRVAEModel


def test_history_logs_the_mmd_for_train_and_validation(trained):
    model, _ = trained
    for key in ("mmd_train", "mmd_validation", "elbo_train", "elbo_validation"):
        assert key in model.history
        values = model.history[key].to_numpy(dtype=float)
        assert np.isfinite(values).all()
    # positive, not merely >= 0 (the MMD is clamped at 0): a zero would mean the term compared
    # no pair of conditions, e.g. batches holding a single condition
    for key in ("mmd_train", "mmd_validation"):
        assert (model.history[key].to_numpy(dtype=float) > 0).all()


def test_latent_shapes_and_obsm(trained):
    model, adata = trained
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 5)
    y = model.get_latent_representation(representation="y")
    assert y.shape == (adata.n_obs, 32)
    sub = model.get_latent_representation(indices=[3, 1, 4], key_added="X_trvae")
    np.testing.assert_allclose(adata.obsm["X_trvae"], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sub, z[[3, 1, 4]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="representation"):
        model.get_latent_representation(representation="x")


def test_predict_returns_an_anndata_on_the_target_condition(trained):
    model, adata = trained
    control = np.flatnonzero(adata.obs["condition"] == "control")
    pred = model.predict(indices=control, target_condition="stimulated")
    assert pred.shape == (control.size, adata.n_vars)
    assert pred.var_names.equals(adata.var_names)
    assert list(pred.obs_names) == list(adata.obs_names[control])
    assert (pred.obs["condition"] == "stimulated").all()
    assert list(pred.obs["cell_type"]) == list(adata.obs["cell_type"].iloc[control])
    np.testing.assert_allclose(pred.layers["normalized"].sum(1), 1.0, rtol=1e-4)
    assert (pred.X >= 0).all()
    library = np.asarray(adata.X[control].sum(1)).ravel()
    np.testing.assert_allclose(pred.X.sum(1), library, rtol=1e-3)


def test_predict_mean_is_deterministic_and_differs_from_source(trained):
    model, _ = trained
    torch.manual_seed(1)
    first = model.predict(target_condition="stimulated")
    torch.manual_seed(2)
    second = model.predict(target_condition="stimulated")
    np.testing.assert_array_equal(first.X, second.X)
    same = model.predict(target_condition="control")
    assert not np.allclose(first.layers["normalized"], same.layers["normalized"])


def test_predict_samples_are_counts_stacked_by_draw(trained):
    model, adata = trained
    pred = model.predict(indices=np.arange(10), target_condition="stimulated", n_samples=3)
    assert pred.shape == (30, adata.n_vars)
    assert list(pred.obs["sctrvae_draw"]) == [0] * 10 + [1] * 10 + [2] * 10
    assert pred.obs_names.is_unique
    np.testing.assert_array_equal(pred.X, np.round(pred.X))


def test_predict_on_a_new_anndata_and_key_added(trained):
    model, adata = trained
    subset = adata[adata.obs["condition"] == "control"].copy()
    before = subset.X.copy()
    pred = model.predict(subset, target_condition="stimulated", key_added="trvae_stim")
    assert subset.layers["trvae_stim"].shape == subset.shape
    np.testing.assert_allclose(subset.layers["trvae_stim"], pred.layers["log_normalized"])
    assert (before != subset.X).nnz == 0
    picked = model.predict(subset, indices=[2, 0], target_condition="stimulated", key_added="again")
    np.testing.assert_allclose(picked.layers["log_normalized"], subset.layers["again"][[2, 0]])


def test_predict_fixed_library_size(trained):
    model, _ = trained
    pred = model.predict(indices=np.arange(5), target_condition="stimulated", library_size=1e4)
    np.testing.assert_allclose(pred.X.sum(1), 1e4, rtol=1e-3)
    np.testing.assert_allclose(pred.X, pred.layers["normalized"] * 1e4, rtol=1e-4)


def test_predict_errors(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"Unknown condition 'IFN'.*control.*stimulated"):
        model.predict(target_condition="IFN")
    with pytest.raises(ValueError, match="target_condition"):
        model.predict()
    with pytest.raises(ValueError, match="empty"):
        model.predict(indices=[], target_condition="stimulated")
    with pytest.raises(ValueError, match="library_size"):
        model.predict(target_condition="stimulated", library_size=-1)


def test_save_load_gives_identical_predictions(trained, tmp_path):
    model, adata = trained
    before = model.predict(target_condition="stimulated")
    model.save(tmp_path / "model", overwrite=True)
    loaded = TRVAEModel.load(tmp_path / "model", adata=adata)
    after = loaded.predict(target_condition="stimulated")
    np.testing.assert_array_equal(before.X, after.X)
    np.testing.assert_array_equal(
        model.get_latent_representation(), loaded.get_latent_representation()
    )


def test_three_conditions_any_source_to_any_target():
    adata = sctrvae.datasets.simulate(
        n_cells=600, n_genes=80, conditions=("ctrl", "drugA", "drugB"), seed=4
    )
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=32, n_latent=4, dispersion="gene-condition")
    model.train(max_epochs=3, batch_size=90, enable_progress_bar=False)
    assert model.conditions == ["ctrl", "drugA", "drugB"]
    assert model.module.log_theta.shape == (80, 3)
    drug_a = np.flatnonzero(adata.obs["condition"] == "drugA")
    predictions = []
    for target in model.conditions:
        pred = model.predict(indices=drug_a, target_condition=target)
        assert (pred.obs["condition"] == target).all()
        assert np.isfinite(pred.X).all()
        predictions.append(pred.layers["normalized"])
    # each target decodes differently: the target condition reaches the decoder
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(predictions[i], predictions[j], rtol=1e-3, atol=1e-6)
    # per-condition dispersions broadcast over the draws of z
    drawn = model.predict(indices=drug_a, target_condition="drugB", n_samples=2)
    assert drawn.shape == (2 * drug_a.size, 80)
    np.testing.assert_array_equal(drawn.X, np.round(drawn.X))


@pytest.mark.parametrize("likelihood", ["zinb", "normal"])
def test_other_likelihoods(likelihood):
    adata = sctrvae.datasets.simulate(n_cells=300, n_genes=50, seed=2)
    if likelihood == "normal":
        adata.layers["log"] = sctrvae.metrics.log_normalized(adata)
    TRVAEModel.setup_anndata(
        adata, condition_key="condition", layer="log" if likelihood == "normal" else None
    )
    model = TRVAEModel(adata, n_hidden=16, n_latent=3, likelihood=likelihood)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    pred = model.predict(target_condition="stimulated")
    assert np.isfinite(pred.X).all()
    assert ("normalized" in pred.layers) == (likelihood == "zinb")
    if likelihood == "zinb":
        # the ZINB mean is the NB mean (library x proportions) shrunk by the zero inflation
        library = np.asarray(adata.X.sum(1))
        nb_mean, zinb_mean = library * pred.layers["normalized"], pred.X
        assert np.all(zinb_mean <= nb_mean * (1 + 1e-5))
        assert np.mean(zinb_mean < nb_mean * 0.999) > 0.5


def test_cvae_ablation_has_zero_mmd_weight_but_still_logs_it():
    adata = sctrvae.datasets.simulate(n_cells=300, n_genes=50, seed=2)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=16, n_latent=3, mmd_weight=0.0)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert (model.history["mmd_train"].to_numpy(dtype=float) > 0).all()


def test_mmd_term_aligns_conditions_in_y():
    adata = sctrvae.datasets.simulate(n_cells=800, n_genes=100, seed=3)
    mmds = {}
    for weight in (0.0, 200.0):
        TRVAEModel.setup_anndata(adata, condition_key="condition")
        model = TRVAEModel(adata, n_hidden=32, n_latent=5, mmd_weight=weight)
        model.train(max_epochs=30, batch_size=128, early_stopping=False, enable_progress_bar=False)
        y = torch.tensor(model.get_latent_representation(representation="y"))
        codes = torch.tensor(adata.obs["condition"].cat.codes.to_numpy())
        mmds[weight] = sctrvae.pairwise_condition_mmd(y, codes).item()
    assert mmds[200.0] < 0.5 * mmds[0.0]


def test_count_likelihood_rejects_log_normalised_input():
    adata = sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0)
    adata.X = sp.csr_matrix(sctrvae.metrics.log_normalized(adata))
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    with pytest.raises(ValueError, match="log-normalised"):
        TRVAEModel(adata)


def test_single_condition_is_rejected():
    adata = sctrvae.datasets.simulate(n_cells=100, n_genes=20, conditions=("control",), seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    with pytest.raises(ValueError, match="at least two"):
        TRVAEModel(adata)


def test_missing_condition_key():
    adata = sctrvae.datasets.simulate(n_cells=50, n_genes=20, seed=0)
    with pytest.raises(KeyError, match="treatment"):
        TRVAEModel.setup_anndata(adata, condition_key="treatment")
