"""predict(readout="calibrated"): draws shifted by the reconstruction error of the cells."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctrvae.metrics import log1p_normalize
from sctrvae.model._calibration import calibrate_draws


def test_identical_prediction_and_reconstruction_give_the_observed_group_means():
    rng = np.random.default_rng(0)
    observed = sp.csr_matrix(rng.poisson(3.0, size=(12, 8)).astype(float))
    profile = rng.dirichlet(np.ones(8)) * 500
    draws = np.broadcast_to(profile, (4, 12, 8)).copy()  # the same cell everywhere
    groups = pd.Series(["a"] * 5 + ["b"] * 7)
    corrected, table = calibrate_draws(observed, draws, draws, groups)

    assert corrected.shape == (4 * 12, 8)
    assert list(table.index) == ["a", "b"]
    observed_log = log1p_normalize(observed)
    per_draw = corrected.reshape(4, 12, 8)
    for label, cells in (("a", slice(0, 5)), ("b", slice(5, 12))):
        np.testing.assert_allclose(
            per_draw[:, cells].mean((0, 1)), observed_log[cells].mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            table.loc[label].to_numpy(),
            observed_log[cells].mean(0) - log1p_normalize(profile[None])[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_corrected_values_are_clipped_at_zero():
    observed = np.zeros((3, 4))
    draws = np.full((2, 3, 4), 10.0)
    corrected, _ = calibrate_draws(observed, draws, draws * np.array([1, 1, 1, 100.0]))
    assert corrected.min() >= 0.0


def test_predict_calibrated_per_group(trained):
    model, adata = trained
    control = np.flatnonzero(adata.obs["condition"] == "control")
    pred = model.predict(
        indices=control,
        target_condition="stimulated",
        readout="calibrated",
        n_samples=3,
        groupby="cell_type",
    )
    assert pred.layers["log_normalized"].shape == (3 * control.size, adata.n_vars)
    assert (pred.layers["log_normalized"] >= 0).all()
    table = pred.uns["sctrvae_calibration"]
    assert sorted(table.index) == sorted(adata.obs["cell_type"].iloc[control].astype(str).unique())
    assert list(table.columns) == list(adata.var_names)
    # the uncorrected draws are still the counts in X
    np.testing.assert_array_equal(pred.X, np.round(pred.X))


def test_calibrating_to_the_own_condition_recovers_the_observed_means(trained):
    model, adata = trained
    control = np.flatnonzero(adata.obs["condition"] == "control")
    pred = model.predict(
        indices=control, target_condition="control", readout="calibrated", n_samples=50
    )
    observed = log1p_normalize(adata.X[control]).mean(0)
    predicted = pred.layers["log_normalized"].mean(0)
    # prediction and reconstruction are independent draws of the same distribution; the clip
    # at zero lifts a few low genes
    assert np.corrcoef(predicted, observed)[0, 1] > 0.99
    assert np.abs(predicted - observed).mean() < 0.05


def test_calibrate_needs_draws_and_a_known_column(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="n_samples >= 1"):
        model.predict(target_condition="stimulated", readout="calibrated", n_samples=0)
    with pytest.raises(KeyError, match="not a column"):
        model.predict(target_condition="stimulated", readout="calibrated", groupby="tissue")
    with pytest.raises(ValueError, match="readout='calibrated' only"):
        model.predict(target_condition="stimulated", groupby="cell_type")
