"""predict(readout="calibrated"): draws shifted by the reconstruction error of the cells."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import sctrvae
from sctrvae.metrics import log1p_normalize
from sctrvae.model._calibration import ReconstructionError
from sctrvae.model._counterfactual import decoded_batches
from sctrvae.model.base import _prediction_mixin


def test_identical_prediction_and_reconstruction_give_the_observed_group_means():
    rng = np.random.default_rng(0)
    observed = sp.csr_matrix(rng.poisson(3.0, size=(12, 8)).astype(float))
    profile = rng.dirichlet(np.ones(8)) * 500
    draws = np.broadcast_to(profile, (4, 12, 8)).copy()  # the same cell everywhere
    groups = pd.Series(["a"] * 5 + ["b"] * 7)
    error = ReconstructionError(groups, np.arange(12), 12, 8)
    # in two minibatches, cut inside group b
    for cells in (slice(0, 9), slice(9, 12)):
        error.add(cells, observed[cells], draws[:, cells])
    batches = (slice(0, 4), slice(4, 12))
    corrected = np.concatenate([error.calibrate(c, draws[:, c]) for c in batches], axis=1)

    assert corrected.shape == (4, 12, 8)
    table = error.table(pd.Index([f"g{i}" for i in range(8)]))
    assert list(table.index) == ["a", "b"]
    assert list(table.columns) == [f"g{i}" for i in range(8)]
    observed_log = log1p_normalize(observed)
    for label, cells in (("a", slice(0, 5)), ("b", slice(5, 12))):
        np.testing.assert_allclose(
            corrected[:, cells].mean((0, 1)), observed_log[cells].mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            table.loc[label].to_numpy(),
            observed_log[cells].mean(0) - log1p_normalize(profile[None])[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_cell_selected_twice_counts_twice():
    rng = np.random.default_rng(1)
    observed = rng.poisson(3.0, size=(3, 5)).astype(float)
    reconstruction = rng.poisson(3.0, size=(2, 3, 5)).astype(float)
    # cell 1 selected twice: the loader reads it once
    error = ReconstructionError(None, np.array([0, 1, 2, 1]), 3, 5)
    error.add(slice(0, 3), observed, reconstruction)
    repeated = [0, 1, 2, 1]
    expected = log1p_normalize(observed[repeated]).mean(0) - log1p_normalize(
        reconstruction[:, repeated].reshape(-1, 5)
    ).mean(0)
    np.testing.assert_allclose(error.shift[0], expected, rtol=1e-5, atol=1e-6)
    assert list(error.groups) == ["all"]


def test_corrected_values_are_clipped_at_zero():
    observed = np.zeros((3, 4))
    draws = np.full((2, 3, 4), 10.0)
    error = ReconstructionError(None, np.arange(3), 3, 4)
    error.add(slice(0, 3), observed, draws * np.array([1, 1, 1, 100.0]))
    assert error.calibrate(slice(0, 3), draws).min() >= 0.0


def calibrated_in_one_piece(model, adata, cells, target, n_samples, batch_size, groupby=None):
    """The calibrated readout computed on whole arrays, as before it was streamed.

    Decodes, in ``predict``'s order (every cell under its own condition, then under the
    target), all draws at once, then shifts them by the per-group mean reconstruction error.
    Returns the per-cell mean of the corrected draws and the corrections by group.
    """

    def draws(condition):
        loader = model._make_data_loader(adata, indices=cells, batch_size=batch_size)
        batches = decoded_batches(model.module, loader, condition, n_samples, normalized=False)
        return np.concatenate([out["expression"] for _, out in batches], axis=1)

    reconstruction = draws(None)
    predicted = draws(model._condition_code(target))
    n_genes = adata.n_vars
    observed = log1p_normalize(adata.X[cells])
    reconstructed = log1p_normalize(reconstruction.reshape(-1, n_genes))
    reconstructed = reconstructed.reshape(n_samples, cells.size, n_genes).mean(0)
    corrected = log1p_normalize(predicted.reshape(-1, n_genes))
    corrected = corrected.reshape(n_samples, cells.size, n_genes)
    labels = (
        np.full(cells.size, "all")
        if groupby is None
        else adata.obs[groupby].iloc[cells].astype(str).to_numpy()
    )
    shifts = {}
    for label in pd.unique(labels):
        group = labels == label
        shifts[label] = observed[group].mean(0) - reconstructed[group].mean(0)
        corrected[:, group] += shifts[label]
    return np.clip(corrected, 0.0, None).mean(0), pd.DataFrame(shifts).T


@pytest.mark.parametrize("groupby", [None, "cell_type"])
def test_the_streamed_layer_is_the_calibration_of_all_draws_at_once(trained, groupby):
    model, adata = trained
    work = adata.copy()
    control = np.flatnonzero(work.obs["condition"] == "control")
    kwargs = {
        "indices": control,
        "target_condition": "stimulated",
        "readout": "calibrated",
        "n_samples": 4,
        "groupby": groupby,
        "batch_size": 48,  # several minibatches, cut inside the cell types
    }
    torch.manual_seed(3)
    assert model.predict(work, key_added="streamed", return_anndata=False, **kwargs) is None
    after_streamed = torch.get_rng_state()
    torch.manual_seed(3)
    pred = model.predict(work, key_added="returned", **kwargs)
    # both took the same draws, and as many
    assert torch.equal(torch.get_rng_state(), after_streamed)
    torch.manual_seed(3)
    per_cell, shifts = calibrated_in_one_piece(model, work, control, "stimulated", 4, 48, groupby)

    streamed = work.layers["streamed"]
    assert streamed.dtype == np.float32
    assert np.isnan(np.delete(streamed, control, axis=0)).all()
    np.testing.assert_allclose(streamed[control], per_cell, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(streamed, work.layers["returned"])
    np.testing.assert_allclose(
        streamed[control],
        pred.layers["log_normalized"].reshape(4, control.size, -1).mean(0),
        rtol=1e-6,
        atol=1e-6,
    )
    table = pred.uns["sctrvae_calibration"]
    np.testing.assert_allclose(table.loc[shifts.index].to_numpy(), shifts, rtol=1e-5, atol=1e-6)
    assert work.uns["streamed"] == pred.uns["sctrvae_prediction"]


def test_the_same_seed_gives_the_same_streamed_layer(trained):
    model, adata = trained
    work = adata.copy()
    kwargs = {"target_condition": "stimulated", "readout": "calibrated", "n_samples": 2}
    layers = []
    for _ in range(2):
        torch.manual_seed(5)
        model.predict(work, key_added="layer", return_anndata=False, **kwargs)
        layers.append(work.layers["layer"])
    np.testing.assert_array_equal(*layers)
    model.predict(work, key_added="layer", return_anndata=False, **kwargs)
    assert not np.array_equal(work.layers["layer"], layers[0])


def test_streaming_holds_one_minibatch_of_draws_at_a_time(trained, monkeypatch):
    model, adata = trained
    work = adata.copy()
    n_samples, batch_size, n_genes = 80, 8, adata.n_vars
    widest = []

    def spy(method):
        def wrapped(self, cells, *arrays):
            widest.append(max(a.shape[-2] for a in arrays))
            return method(self, cells, *arrays)

        return wrapped

    monkeypatch.setattr(ReconstructionError, "add", spy(ReconstructionError.add))
    monkeypatch.setattr(ReconstructionError, "calibrate", spy(ReconstructionError.calibrate))
    monkeypatch.setattr(
        _prediction_mixin, "prediction_anndata", lambda *a, **k: pytest.fail("AnnData built")
    )
    monkeypatch.setattr(_prediction_mixin, "fill", lambda *a, **k: pytest.fail("draws kept"))
    control = np.flatnonzero(work.obs["condition"] == "control")
    tracemalloc.start()
    model.predict(
        work,
        indices=control,
        target_condition="stimulated",
        readout="calibrated",
        n_samples=n_samples,
        batch_size=batch_size,
        key_added="layer",
        return_anndata=False,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(widest) > 0
    assert max(widest) <= batch_size
    # every draw of every cell: 80 × ~300 × 120 float32, ~12 MB; a minibatch's: 0.3 MB
    all_draws = n_samples * control.size * n_genes * 4
    assert peak < all_draws / 4, f"{peak / 1e6:.1f} MB traced, all draws {all_draws / 1e6:.1f}"


def test_calibrated_without_anndata_needs_a_layer(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="pass key_added"):
        model.predict(target_condition="stimulated", readout="calibrated", return_anndata=False)


def test_a_large_anndata_is_announced(trained, monkeypatch):
    model, _ = trained
    monkeypatch.setattr(_prediction_mixin, "LARGE_PREDICTION_BYTES", 1000)
    with pytest.warns(UserWarning, match="return_anndata=False"):
        model.predict(indices=np.arange(10), target_condition="stimulated")


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


def test_the_reconstruction_draws_per_cell_follow_the_smallest_group():
    def draws(sizes, n_samples=10, per_group=20_000):
        labels = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
        error = ReconstructionError(labels, np.arange(labels.size), labels.size, 3)
        return error.draws_needed(n_samples, per_group)

    assert draws([100, 30_000]) == 10  # the small group keeps every draw
    assert draws([2_000]) == 10
    assert draws([4_000, 9_000]) == 5
    assert draws([20_000]) == 1
    assert draws([250_000]) == 1  # never fewer than one
    assert draws([4_000], n_samples=3) == 3  # never more than asked


def test_a_large_group_is_predicted_with_fewer_draws_and_corrected_alike(monkeypatch):
    """A large group gets fewer draws per cell unless asked; its correction moves by noise only."""
    mixin = _prediction_mixin
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=800, n_genes=40, seed=1)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=3)
    model.train(max_steps=30, enable_progress_bar=False)
    seen = []
    decode = mixin.decoded_batches

    def spy(module, loader, target, n_samples, **kwargs):
        seen.append((target, n_samples))
        return decode(module, loader, target, n_samples, **kwargs)

    monkeypatch.setattr(mixin, "decoded_batches", spy)
    control = np.flatnonzero(adata.obs.condition == "control")
    corrections, means = {}, {}
    for per_group in (20_000, control.size):  # all 10 draws, then 1 per cell
        monkeypatch.setattr(mixin, "CALIBRATION_DRAWS", per_group)
        pred = model.predict(
            adata, indices=control, target_condition="stimulated", readout="calibrated"
        )
        corrections[per_group] = pred.uns["sctrvae_calibration"].to_numpy()
        means[per_group] = pred.layers["log_normalized"].mean(0)
        n_draws = 10 if per_group == 20_000 else 1
        assert pred.uns["sctrvae_prediction"]["n_samples"] == n_draws
        assert pred.n_obs == n_draws * control.size
    # asked for, 10 predicted draws per cell whatever the group's size
    pred = model.predict(
        adata, indices=control, target_condition="stimulated", readout="calibrated", n_samples=10
    )
    assert pred.n_obs == 10 * control.size
    assert seen == [(None, 10), (1, 10), (None, 1), (1, 1), (None, 1), (1, 10)]
    # the group's predicted mean is as precise with one draw per cell of 400 cells
    assert np.corrcoef(means[20_000], means[control.size])[0, 1] > 0.99
    one, every = corrections[control.size].ravel(), corrections[20_000].ravel()
    # a group mean over the cells either way: the corrections agree up to sampling noise
    # (400 cells × 1 draw against × 10: about 0.05 apart, corrections about 0.1)
    assert np.corrcoef(one, every)[0, 1] > 0.8
    assert np.abs(one - every).mean() < 0.5 * np.abs(every).mean()


def test_a_large_group_is_reconstructed_from_a_random_subset_of_its_cells(monkeypatch):
    """A correction needs CALIBRATION_DRAWS draws: a larger group's come from that many cells."""
    mixin = _prediction_mixin
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=800, n_genes=40, seed=1)
    adata.obs["half"] = np.where(np.arange(adata.n_obs) % 2, "odd", "even")
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=3)
    model.train(max_steps=30, enable_progress_bar=False)
    control = np.flatnonzero(adata.obs.condition == "control")
    added = []
    add = ReconstructionError.add

    def spy(self, cells, observed, reconstruction):
        added.append(np.arange(len(self._codes))[cells])
        return add(self, cells, observed, reconstruction)

    monkeypatch.setattr(ReconstructionError, "add", spy)
    kwargs = {"indices": control, "target_condition": "stimulated", "readout": "calibrated"}
    full = model.predict(adata, **kwargs, groupby="half")
    every = np.concatenate(added)
    assert every.size == control.size  # 10 draws per cell: every cell of both halves
    monkeypatch.setattr(mixin, "CALIBRATION_DRAWS", 120)  # 1 draw per cell, 120 cells a group
    corrections, subsets = [], []
    for seed in (3, 3, *range(4, 12)):
        added.clear()
        scvi.settings.seed = seed
        pred = model.predict(adata, **kwargs, groupby="half")
        corrections.append(pred.uns["sctrvae_calibration"])
        subsets.append(np.concatenate(added))
    halves = adata.obs["half"].to_numpy()[control[subsets[0]]]
    assert subsets[0].size == np.unique(subsets[0]).size == 240
    assert (halves == "even").sum() == (halves == "odd").sum() == 120
    assert pred.n_obs == control.size  # every cell is still predicted, one draw each
    # the subset follows the seed
    np.testing.assert_array_equal(subsets[0], subsets[1])
    pd.testing.assert_frame_equal(corrections[0], corrections[1])
    assert not np.array_equal(subsets[1], subsets[2])
    # a subset's correction estimates the group's: over 10 subsets, the mean is the whole
    # group's up to sampling noise (one subset: about as noisy as the corrections are large)
    subset_mean = np.mean([c.to_numpy() for c in corrections[1:]], axis=0).ravel()
    every_cell = full.uns["sctrvae_calibration"].to_numpy().ravel()
    assert np.corrcoef(subset_mean, every_cell)[0, 1] > 0.8
    assert np.abs(subset_mean - every_cell).mean() < 0.6 * np.abs(every_cell).mean()


def test_a_correction_from_some_cells_is_their_mean_error():
    rng = np.random.default_rng(0)
    observed = rng.poisson(3.0, size=(10, 6)).astype(float)
    reconstruction = rng.poisson(3.0, size=(2, 10, 6)).astype(float)
    groups = np.array(["a"] * 4 + ["b"] * 6)
    # cell 9 selected twice (it counts twice), group b larger than 3 cells
    error = ReconstructionError(np.append(groups, "b"), np.append(np.arange(10), 9), 10, 6)
    scvi.settings.seed = 0
    cells = error.reconstructed_cells(per_group=4)
    assert np.array_equal(cells[:4], np.arange(4))  # group a whole
    assert cells.size == 8
    assert np.isin(cells[4:], np.arange(4, 10)).all()
    error.add(cells[:5], observed[cells[:5]], reconstruction[:, cells[:5]])
    error.add(cells[5:], observed[cells[5:]], reconstruction[:, cells[5:]])
    for code, group in enumerate(["a", "b"]):
        mine = cells[groups[cells] == group]
        mine = np.append(mine, 9) if 9 in mine else mine  # the repeated cell's second count
        expected = log1p_normalize(observed[mine]).mean(0) - log1p_normalize(
            reconstruction[:, mine].reshape(-1, 6)
        ).mean(0)
        np.testing.assert_allclose(error.shift[code], expected, rtol=1e-5, atol=1e-6)
