"""scvi-tools' inherited API on the condition-transfer seam: transform_batch, DE, posteriors."""

import numpy as np
import pytest
import scvi
import torch
from torch.distributions import MixtureSameFamily

import sctrvae


def control_cells(adata):
    return np.flatnonzero(adata.obs["condition"] == "control")


def test_get_normalized_expression_and_posterior_samples_are_predict(trained):
    model, adata = trained
    control = control_cells(adata)
    one_batch = {"indices": control, "batch_size": control.size}
    torch.manual_seed(5)
    pred = model.predict(target_condition="stimulated", readout="sampled", n_samples=3, **one_batch)
    torch.manual_seed(5)
    scale = model.get_normalized_expression(
        transform_batch="stimulated", n_samples=3, return_mean=False, **one_batch
    )
    torch.manual_seed(5)
    counts = model.posterior_predictive_sample(
        transform_batch="stimulated", n_samples=3, **one_batch
    ).todense()  # (cells, genes, draws)
    # predict stacks the draws: (draws × cells, genes)
    stacked = pred.X.reshape(3, control.size, adata.n_vars)
    np.testing.assert_array_equal(counts.transpose(2, 0, 1), stacked)
    np.testing.assert_allclose(
        scale, pred.layers["normalized"].reshape(3, control.size, -1), rtol=1e-6
    )


def test_transform_batch_decodes_under_the_requested_condition(trained):
    model, adata = trained
    control = control_cells(adata)
    kwargs = {"indices": control, "n_samples": 5, "return_numpy": True}
    results = {}
    for name, batch in (("own", None), ("control", "control"), ("stimulated", "stimulated")):
        torch.manual_seed(3)
        results[name] = model.get_normalized_expression(transform_batch=batch, **kwargs)
    np.testing.assert_array_equal(results["own"], results["control"])
    assert not np.allclose(results["own"], results["stimulated"])
    # the latent "library" is each cell's observed total
    torch.manual_seed(3)
    latent = model.get_normalized_expression(
        transform_batch="stimulated", library_size="latent", **kwargs
    )
    totals = np.asarray(adata.X[control].sum(1)).ravel()
    np.testing.assert_allclose(latent.sum(1), totals, rtol=1e-4)


@pytest.fixture(scope="module")
def cvae():
    """A model that has learnt the simulated response: on this small simulation the default
    MMD weight (100) collapses z within a few dozen epochs, a plain CVAE does not."""
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=600, n_genes=120, n_cell_types=3, seed=1)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=32, n_latent=5, mmd_weight=0)
    model.train(max_epochs=20, batch_size=64, early_stopping=False, enable_progress_bar=False)
    return model, adata


def test_differential_expression_finds_the_simulated_response(cvae):
    model, adata = cvae
    de = model.differential_expression(
        groupby="condition", group1="stimulated", group2="control", mode="change", silent=True
    )
    assert set(de.index) == set(adata.var_names)
    assert {"lfc_mean", "bayes_factor", "proba_de"} <= set(de.columns)
    responding = adata.var_names[adata.uns["simulation"]["response_genes"][1]]
    lfc = de["lfc_mean"].abs()
    assert lfc[responding].mean() > 2 * lfc.drop(responding).mean()
    assert de.loc[responding, "proba_de"].mean() > de.drop(responding)["proba_de"].mean()


def test_latent_representation_takes_vaemixin_arguments(trained):
    model, adata = trained
    mean, var = model.get_latent_representation(indices=[5, 1], return_dist=True)
    # other batch compositions: float32 rounding only
    np.testing.assert_allclose(mean, model.get_latent_representation()[[5, 1]], atol=1e-6)
    assert mean.shape == var.shape == (2, model.module.n_latent)
    assert (var > 0).all()
    loader = model._make_data_loader(adata, indices=np.arange(7), batch_size=3)
    np.testing.assert_allclose(
        model.get_latent_representation(dataloader=loader, representation="y"),
        model.get_latent_representation(representation="y")[:7],
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="no AnnData"):
        model.get_latent_representation(dataloader=loader, key_added="X_trvae")
    with pytest.raises(ValueError, match="posterior of z"):
        model.get_latent_representation(return_dist=True, representation="y")


def test_aggregated_posterior_and_differential_abundance(trained):
    model, adata = trained
    control = control_cells(adata)
    posterior = model.get_aggregated_posterior(indices=control)
    assert isinstance(posterior, MixtureSameFamily)
    assert posterior.mixture_distribution.probs.shape == (control.size,)
    model.differential_abundance(sample_key="cell_type")
    log_probs = adata.obsm.pop("da_log_probs")
    assert log_probs.shape == (adata.n_obs, adata.obs["cell_type"].nunique())
    # each column: every cell's z under the aggregated posterior of one cell type
    first = np.flatnonzero(adata.obs["cell_type"] == log_probs.columns[0])
    z = torch.from_numpy(model.get_latent_representation())
    expected = model.get_aggregated_posterior(indices=first, dof=None).log_prob(z).numpy()
    np.testing.assert_allclose(log_probs.iloc[:, 0], expected, rtol=1e-5)


def test_marginal_log_likelihood_bounds_the_elbo_from_above(trained):
    model, _ = trained
    cells = np.arange(100)
    per_cell = model.get_marginal_ll(indices=cells, n_mc_samples=50, return_mean=False)
    assert per_cell.shape == (100,)
    assert torch.isfinite(per_cell).all()
    elbo = float(model.get_elbo(indices=cells))
    marginal = model.get_marginal_ll(indices=cells, n_mc_samples=50, n_mc_samples_per_pass=10)
    # importance sampling with 50 draws is a tighter bound than the ELBO's single draw
    assert elbo < marginal < 0


def test_view_anndata_setup_prints_the_registry(trained, capsys):
    model, _ = trained
    model.view_anndata_setup()
    printed = capsys.readouterr().out
    assert "TRVAEModel.setup_anndata" in printed
    assert "adata.obs['condition']" in printed
    assert "stimulated" in printed
