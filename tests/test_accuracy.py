"""Accuracy on simulated data with a known response: runs everywhere, no data file needed."""

import numpy as np

import sctrvae
from sctrvae import TRVAEModel


def true_log_fold_changes(adata):
    """Per cell type, the true log-fold change stimulated / control of each gene's proportion."""
    log_means = adata.uns["simulation"]["log_means"]
    return log_means[:, 1] - log_means[:, 0]


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_held_out_response_is_recovered_better_than_by_the_mean_shift():
    """Predict a held-out (group, stimulated) whose response is far from the groups' average.

    Design: six simulated cell types, 30 % responding genes. The type whose true response is
    furthest from the average of the others is split at random into two groups of identical
    biology; the stimulated cells of one half are held out. The other half is seen stimulated,
    so a model that transfers the response of cells like the held-out ones (trVAE: encode the
    control cells, decode them as stimulated) can recover it, while the mean-shift baseline, the
    average true response of the six other groups (the sister half among them), cannot. The
    baseline is taken from the truth, without noise, which only favours it. The prediction is
    ``log`` of the mean predicted proportions decoded as stimulated over those decoded as
    control, for the held-out group's control cells.

    Margin: RMSE over all genes of the predicted against the true log-fold change, divided by
    that of the baseline. Measured on 11 runs, each with other seeds: (data seed, scvi-tools
    seed) = (s, 100 + s) for s = 0..8 and (0, 0), (0, 1) (this test as written runs (0, 0)):
    0.58 0.60 0.48 0.58 0.24 0.50 0.59 0.44 0.48 0.55 0.60; mean 0.51, s.d. 0.11, worst 0.60. The
    test requires below 0.8: 0.2 above the worst run and 2.7 s.d. above the mean, so neither
    the data nor the initialisation decides the outcome. The seeds in the test (the data's, the
    split's, and conftest's scvi-tools seed) only make a failure reproducible.
    """
    adata = sctrvae.datasets.simulate(
        n_cells=2000, n_genes=200, n_cell_types=6, response_fraction=0.3, seed=0
    )
    lfc = true_log_fold_changes(adata)
    others_mean = [np.delete(lfc, t, axis=0).mean(0) for t in range(lfc.shape[0])]
    held_type = int(np.argmax([rmse(lfc[t], m) for t, m in enumerate(others_mean)]))
    group = adata.obs["cell_type"].astype(str).to_numpy()
    split = (group == f"type_{held_type}") & (np.random.default_rng(0).random(adata.n_obs) < 0.5)
    group[split] = "held_out"
    adata.obs["group"] = group
    stimulated = (adata.obs["condition"] == "stimulated").to_numpy()
    train = adata[~(split & stimulated)].copy()

    TRVAEModel.setup_anndata(train, condition_key="condition")
    model = TRVAEModel(train, n_hidden=64, n_latent=8)
    model.train(max_epochs=40, batch_size=128, early_stopping=False, enable_progress_bar=False)
    source = np.flatnonzero(train.obs["group"] == "held_out")  # control cells only, by design
    decoded = {
        condition: model.predict(indices=source, target_condition=condition)
        .layers["normalized"]
        .mean(0)
        for condition in ("control", "stimulated")
    }
    predicted = np.log(decoded["stimulated"]) - np.log(decoded["control"])

    truth = lfc[held_type]
    mean_shift = lfc.mean(0)  # the six other groups: the sister half and the five other types
    assert rmse(mean_shift, truth) > 0.3  # the design: the held-out response is atypical
    assert rmse(predicted, truth) < 0.8 * rmse(mean_shift, truth)
