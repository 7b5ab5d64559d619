"""Donors, batches and covariates: registration, training, prediction, save/load, errors."""

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import sctrvae
from sctrvae import TRVAEModel


def donor_data(seed=0, n_cells=400):
    adata = sctrvae.datasets.simulate_donors(
        n_cells=n_cells, n_genes=40, n_cell_types=2, n_donors=3, donor_effect=0.8, seed=seed
    )
    adata.obs["depth"] = np.log(np.asarray(adata.X.sum(1)).ravel())
    adata.obs["lane"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    return adata


@pytest.fixture(scope="module")
def donor_model():
    adata = donor_data()
    TRVAEModel.setup_anndata(
        adata,
        condition_key="condition",
        batch_key="donor",
        categorical_covariate_keys=["lane"],
        continuous_covariate_keys=["depth"],
    )
    model = TRVAEModel(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    return model, adata


def test_registration_keeps_the_condition_in_the_batch_slot(donor_model):
    model, _adata = donor_model
    registry = model.registry_["field_registries"]
    assert registry[REGISTRY_KEYS.BATCH_KEY]["state_registry"]["original_key"] == "condition"
    cats = registry[REGISTRY_KEYS.CAT_COVS_KEY]["state_registry"]
    assert cats["field_keys"] == ["donor", "lane"]  # the batch first
    assert model.registry_["setup_args"]["batch_key"] == "donor"
    assert model.module.n_cats_per_cov == [3, 2]
    assert model.module.n_continuous_cov == 1
    # donors match the MMD's strata by default
    assert model.module.mmd_within_batch
    assert model.module.mmd_mode == "reweighted"


def test_training_and_latent(donor_model):
    model, adata = donor_model
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 4)
    assert np.isfinite(z).all()
    y = model.get_latent_representation(representation="y")
    assert np.isfinite(y).all()


@pytest.mark.parametrize("covariates_in_y", [True, False])
def test_covariates_meet_the_condition_in_y_by_default(covariates_in_y):
    # y = g1(z, s, c): a donor's own response can form where the condition's does
    module = sctrvae.TRVAEModule(
        n_input=10,
        n_conditions=2,
        n_cats_per_cov=[3],
        n_continuous_cov=1,
        covariates_in_y=covariates_in_y,
    ).eval()
    z, condition = torch.randn(5, 10), torch.zeros(5, 1, dtype=torch.long)
    cont = torch.zeros(5, 1)
    y = [module.decoder_layer(z, condition, torch.full((5, 1), d), cont) for d in (0, 2)]
    assert torch.equal(y[0], y[1]) is not covariates_in_y
    y_cont = module.decoder_layer(z, condition, torch.zeros(5, 1, dtype=torch.long), cont + 1)
    assert torch.equal(y[0], y_cont) is not covariates_in_y
    assert sctrvae.TRVAEModule(n_input=10, n_conditions=2, n_cats_per_cov=[3]).covariates_in_y


def test_predict_keeps_covariates_and_can_set_the_batch(donor_model):
    model, adata = donor_model
    ctrl = np.flatnonzero(adata.obs["condition"] == "control")
    own = model.predict(adata, indices=ctrl, target_condition="stimulated")
    pd_donors = own.obs["donor"].astype(str).to_numpy()
    assert (pd_donors == adata.obs["donor"].astype(str).to_numpy()[ctrl]).all()
    as_donor0 = model.predict(
        adata, indices=ctrl, target_condition="stimulated", target_batch="donor_0"
    )
    assert as_donor0.uns["sctrvae_prediction"]["target_batch"] == "donor_0"
    # cells of donor 0 are decoded as they were; the others' change
    is0 = adata.obs["donor"].to_numpy()[ctrl] == "donor_0"
    np.testing.assert_allclose(as_donor0.X[is0], own.X[is0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(as_donor0.X[~is0], own.X[~is0], rtol=1e-3)
    with pytest.raises(ValueError, match="Unknown batch"):
        model.predict(adata, target_condition="stimulated", target_batch="donor_9")


def test_differential_response_with_covariates(donor_model):
    model, adata = donor_model
    table = model.differential_response(
        adata, groupby="cell_type", source="control", target="stimulated", n_samples=5
    )
    assert np.isfinite(table.select_dtypes("number").to_numpy(dtype=float)).all()


def test_save_and_load_with_covariates(donor_model, tmp_path):
    model, adata = donor_model
    model.save(tmp_path / "m")
    expected = model.predict(adata, target_condition="stimulated").X
    loaded = TRVAEModel.load(tmp_path / "m", adata=adata.copy())
    np.testing.assert_allclose(
        loaded.predict(target_condition="stimulated").X, expected, rtol=1e-4, atol=1e-5
    )
    bare = TRVAEModel.load(tmp_path / "m", adata=False)
    assert bare.module.n_cats_per_cov == [3, 2]
    fresh = donor_data()  # not set up: set up from the saved registry on the way
    np.testing.assert_allclose(
        bare.predict(fresh, target_condition="stimulated").X, expected, rtol=1e-4, atol=1e-5
    )


def test_device_resident_batches_carry_the_covariates(donor_model):
    model, _adata = donor_model
    splitter = sctrvae.ConditionBalancedDataSplitter(
        model.adata_manager, device_resident=True, batch_size=64
    )
    batch = next(iter(splitter.train_dataloader()))
    assert batch[REGISTRY_KEYS.CAT_COVS_KEY].shape[1] == 2
    assert batch[REGISTRY_KEYS.CONT_COVS_KEY].dtype == torch.float32


def test_sampler_deals_every_donor_into_every_minibatch(donor_model):
    model, _adata = donor_model
    loader = sctrvae.ConditionBalancedDataLoader(model.adata_manager, batch_size=64, shuffle=True)
    for batch in loader:
        pairs = batch[REGISTRY_KEYS.CAT_COVS_KEY][:, 0] * 2 + batch[REGISTRY_KEYS.BATCH_KEY][:, 0]
        assert torch.unique(pairs).numel() == 6  # every (donor, condition)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("donor", None, "missing for 1 cells"),
        ("depth", np.nan, "NaN, infinite"),
        ("depth", np.inf, "NaN, infinite"),
    ],
)
def test_bad_covariates_at_setup_leave_adata_unchanged(
    column, value, message, snapshot, assert_unchanged
):
    adata = donor_data(n_cells=60)
    if column == "donor":
        adata.obs["donor"] = adata.obs["donor"].astype(object)
    adata.obs.loc[adata.obs_names[0], column] = value
    before = snapshot(adata)
    with pytest.raises(ValueError, match=message):
        TRVAEModel.setup_anndata(
            adata, "condition", batch_key="donor", continuous_covariate_keys=["depth"]
        )
    assert_unchanged(before, adata, scvi_keys=False)


def test_a_covariate_column_that_is_missing_or_the_condition():
    adata = donor_data(n_cells=60)
    with pytest.raises(KeyError, match="not a column"):
        TRVAEModel.setup_anndata(adata, "condition", batch_key="patient")
    with pytest.raises(ValueError, match="is the condition"):
        TRVAEModel.setup_anndata(adata, "condition", batch_key="condition")


def test_unseen_category_at_prediction_is_a_clear_error(donor_model, snapshot, assert_unchanged):
    model, _ = donor_model
    new = donor_data(seed=1, n_cells=60)
    new.obs["donor"] = new.obs["donor"].cat.rename_categories(["d7", "d8", "d9"])
    before = snapshot(new)
    with pytest.raises(ValueError, match="not trained on: \\['d7'"):
        model.predict(new, target_condition="stimulated", key_added="pred")
    with pytest.raises(ValueError, match="load_query_data"):
        model.get_latent_representation(new)
    assert_unchanged(before, new, scvi_keys=False)


def test_nan_continuous_covariate_at_prediction(donor_model, snapshot, assert_unchanged):
    model, _ = donor_model
    new = donor_data(seed=1, n_cells=60)
    new.obs.loc[new.obs_names[3], "depth"] = np.nan
    before = snapshot(new)
    with pytest.raises(ValueError, match="depth"):
        model.predict(new, target_condition="stimulated")
    assert_unchanged(before, new, scvi_keys=False)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_encode_covariates_and_one_layer(n_layers):
    adata = donor_data(n_cells=200)
    TRVAEModel.setup_anndata(
        adata, "condition", batch_key="donor", continuous_covariate_keys=["depth"]
    )
    model = TRVAEModel(adata, n_hidden=16, n_latent=4, n_layers=n_layers, encode_covariates=True)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(model.predict(target_condition="stimulated").X).all()
