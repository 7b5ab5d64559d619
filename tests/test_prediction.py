"""predict(): readouts, layers written into the user's AnnData, and numbers unchanged.

``data/predict_reference.npz`` holds the outputs of ``predict`` and ``get_latent_representation``
as they were before prediction moved onto scvi-tools' ``transform_batch`` path (commit b4859e2,
``predict(n_samples=..., calibrate=...)``), with the counts, the conditions and the weights of
the two small models (NB, ZINB) they came from, so that training changes do not move them. Its
calibrated draws are gone: the calibration now decodes all the cells under their own condition
before the predictions, where it interleaved the two per minibatch, so the same seed draws
others; ``tests/test_calibration.py`` checks the calibrated readout against its arithmetic on
the draws, and the draws are those of the sampled readout checked here.
"""

from pathlib import Path
from typing import get_args

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import sctrvae
from sctrvae import TRVAEModel
from sctrvae._constants import READOUTS, Readout
from sctrvae.distributions._negative_binomial import SparseNegativeBinomial
from sctrvae.metrics import log1p_normalize
from sctrvae.model._counterfactual import decoded_batches, prediction_anndata

REFERENCE = Path(__file__).parent / "data" / "predict_reference.npz"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE, allow_pickle=False))


def reference_model(reference, likelihood):
    adata = ad.AnnData(
        reference["counts"].copy(),
        obs=pd.DataFrame(
            {"condition": reference["condition"], "cell_type": reference["cell_type"]},
            index=[f"c{i}" for i in range(len(reference["counts"]))],
        ),
    )
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=3, likelihood=likelihood)
    prefix = f"{likelihood}/state/"
    state = {
        k[len(prefix) :]: torch.from_numpy(v) for k, v in reference.items() if k.startswith(prefix)
    }
    model.module.load_state_dict(state)
    model.module.eval()
    model.is_trained_ = True
    return model, adata


#: Tolerance of float32 outputs recomputed on another CPU: other BLAS kernels sum in another
#: order, which moves a float32 result by a few ulps (relative 6e-7 measured) per operation; a
#: few dozen chained operations stay far inside 1e-5. Bugs move outputs by orders more.
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}


def assert_same_draws(actual, expected):
    """Counts drawn from rates that moved by a few ulps: equal but for draws at a boundary.

    A gamma-Poisson draw turns into another integer only when its uniform falls within the rate's
    rounding of a boundary, so at most a few in a thousand may differ, and then by one count.
    """
    differ = actual != expected
    assert differ.mean() <= 0.005, f"{differ.sum()} of {differ.size} draws differ"
    np.testing.assert_allclose(actual[differ], expected[differ], atol=1)


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_predictions_are_the_ones_of_the_previous_implementation(
    monkeypatch, reference, likelihood
):
    # the reference draws are scvi-tools' gamma-Poisson ones, which accelerators still use; the
    # CPU sampler draws the same distribution in another way (tests/test_nb_sampling.py)
    monkeypatch.setattr(SparseNegativeBinomial, "sparse_devices", ())
    model, adata = reference_model(reference, likelihood)
    ref = {k[len(likelihood) + 1 :]: v for k, v in reference.items() if k.startswith(likelihood)}
    control = np.flatnonzero(adata.obs["condition"] == "control")
    kwargs = {"target_condition": "stimulated", "batch_size": 16}  # several batches

    mean = model.predict(**kwargs)
    np.testing.assert_allclose(mean.X, ref["mean/X"], **FLOAT32)
    np.testing.assert_allclose(mean.layers["normalized"], ref["mean/normalized"], **FLOAT32)
    fixed = model.predict(library_size=1e4, **kwargs)
    np.testing.assert_allclose(fixed.X, ref["mean_lib/X"], **FLOAT32)

    torch.manual_seed(11)
    sampled = model.predict(indices=control, readout="sampled", n_samples=3, **kwargs)
    assert_same_draws(sampled.X, ref["sampled3/X"])
    np.testing.assert_allclose(sampled.layers["normalized"], ref["sampled3/normalized"], **FLOAT32)

    np.testing.assert_allclose(model.get_latent_representation(), ref["z"], **FLOAT32)
    np.testing.assert_allclose(
        model.get_latent_representation(representation="y"), ref["y"], **FLOAT32
    )


@pytest.mark.parametrize("readout", ["mean", "sampled", "calibrated"])
def test_key_added_writes_the_readout_for_the_predicted_cells_only(trained, readout):
    model, adata = trained
    control = np.flatnonzero(adata.obs["condition"] == "control")
    picked = control[[7, 2, 30]]  # unsorted
    n_samples = None if readout == "mean" else 4
    torch.manual_seed(0)
    pred = model.predict(
        indices=picked,
        target_condition="stimulated",
        readout=readout,
        n_samples=n_samples,
        key_added="trvae_stimulated",
    )
    written = adata.layers.pop("trvae_stimulated")
    record = adata.uns.pop("trvae_stimulated")
    assert written.shape == adata.shape
    others = np.setdiff1d(np.arange(adata.n_obs), picked)
    assert np.isnan(written[others]).all()
    assert not np.isnan(written[picked]).any()
    draws = pred.layers["log_normalized"].reshape(-1, picked.size, adata.n_vars)
    if readout == "sampled":  # the log-normalised mean of the sampled counts
        per_cell = log1p_normalize(pred.X.reshape(4, picked.size, -1).mean(0))
    else:  # one draw of the mean; the mean of the calibrated draws
        per_cell = draws.mean(0)
    np.testing.assert_allclose(written[picked], per_cell, rtol=1e-5, atol=1e-6)
    assert record == {
        "readout": readout,
        "target_condition": "stimulated",
        "n_samples": n_samples or 0,
        "library_size": "observed",
        "sctrvae_version": sctrvae.__version__,
    }
    assert pred.uns["sctrvae_prediction"] == record


def test_the_log_normalized_layer_is_the_readout(trained):
    model, _ = trained
    mean = model.predict(indices=np.arange(20), target_condition="stimulated")
    np.testing.assert_allclose(
        mean.layers["log_normalized"], log1p_normalize(mean.X), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        mean.layers["log_normalized"], np.log1p(mean.layers["normalized"] * 1e4), rtol=1e-4
    )
    drawn = model.predict(indices=np.arange(20), target_condition="stimulated", n_samples=2)
    assert drawn.uns["sctrvae_prediction"]["readout"] == "sampled"
    np.testing.assert_allclose(drawn.layers["log_normalized"], log1p_normalize(drawn.X), rtol=1e-5)


def test_readout_arguments_are_checked(trained, snapshot, assert_unchanged):
    model, adata = trained
    before = snapshot(adata)
    with pytest.raises(ValueError, match="readout must be one of"):
        model.predict(target_condition="stimulated", readout="median", key_added="x")
    with pytest.raises(ValueError, match="deterministic"):
        model.predict(target_condition="stimulated", readout="mean", n_samples=3, key_added="x")
    with pytest.raises(ValueError, match="n_samples >= 1"):
        model.predict(target_condition="stimulated", readout="sampled", n_samples=0)
    assert_unchanged(before, adata)


def test_the_readout_choices_are_the_rows_of_the_readout_table():
    assert set(get_args(Readout)) == set(READOUTS)
    assert [READOUTS[r].draws for r in ("mean", "sampled", "calibrated")] == [0, 1, 10]


def test_scores_and_plots_read_the_same_expression(trained):
    model, adata = trained
    source = adata[(adata.obs["condition"] == "control") & (adata.obs["cell_type"] == "type_0")]
    real = adata[(adata.obs["condition"] == "stimulated") & (adata.obs["cell_type"] == "type_0")]
    degs = list(adata.var_names[:10])
    torch.manual_seed(0)
    pred = model.predict(source, target_condition="stimulated", n_samples=1)
    scores = sctrvae.metrics.score_prediction(pred, real, source, degs=degs)
    ax = sctrvae.pl.reg_mean_plot(pred, real, degs=degs)
    assert ax.get_title() == (
        f"mean: R² = {scores['r2_mean_all']:.3f}, DEGs {scores['r2_mean_deg']:.3f}"
    )
    ax = sctrvae.pl.reg_var_plot(pred, real, degs=degs)
    assert ax.get_title() == (
        f"variance: R² = {scores['r2_var_all']:.3f}, DEGs {scores['r2_var_deg']:.3f}"
    )


def test_a_layer_written_by_predict_is_read_as_it_is(trained, tmp_path):
    model, adata = trained
    work = adata.copy()
    source = np.flatnonzero(
        (work.obs["condition"] == "control") & (work.obs["cell_type"] == "type_1")
    )
    real = work[(work.obs["condition"] == "stimulated") & (work.obs["cell_type"] == "type_1")]
    torch.manual_seed(0)
    pred = model.predict(
        work,
        indices=source,
        target_condition="stimulated",
        readout="calibrated",
        n_samples=1,
        key_added="trvae_stimulated",
    )
    degs = list(work.var_names[:10])
    # the layer and its record survive a round trip through h5ad
    work.write_h5ad(tmp_path / "work.h5ad")
    work = ad.read_h5ad(tmp_path / "work.h5ad")
    assert work.uns["trvae_stimulated"] == pred.uns["sctrvae_prediction"]
    real = work[(work.obs["condition"] == "stimulated") & (work.obs["cell_type"] == "type_1")]
    # the whole AnnData: rows not predicted (NaN) are left out
    from_layer = sctrvae.metrics.score_prediction(
        work, real, work[source], degs=degs, predicted_layer="trvae_stimulated"
    )
    assert from_layer == pytest.approx(
        sctrvae.metrics.score_prediction(pred, real, work[source], degs=degs)
    )
    # predicted_layer=None reads X: here the draws before calibration
    uncalibrated = sctrvae.metrics.score_prediction(
        pred, real, work[source], degs=degs, predicted_layer=None
    )
    assert uncalibrated == pytest.approx(
        sctrvae.metrics.score_log_expression(
            log1p_normalize(pred.X),
            log1p_normalize(real.X),
            log1p_normalize(work[source].X),
            work.var_names.isin(degs),
        )
    )
    assert uncalibrated != pytest.approx(from_layer)
    # scGen's form: one AnnData, the populations told apart by condition_key / axis_keys
    ax = sctrvae.pl.reg_mean_plot(
        work[work.obs["cell_type"] == "type_1"],
        condition_key="condition",
        axis_keys={"x": "stimulated", "y": "control"},
        predicted_layer="trvae_stimulated",
        top_100_genes=degs,
        gene_list=["gene_3", "gene_50"],
    )
    assert ax.get_title() == (
        f"mean: R² = {from_layer['r2_mean_all']:.3f}, DEGs {from_layer['r2_mean_deg']:.3f}"
    )
    assert sorted(text.get_text() for text in ax.texts) == ["gene_3", "gene_50"]
    with pytest.raises(ValueError, match="axis_keys"):
        sctrvae.pl.reg_mean_plot(work, condition_key="condition")
    with pytest.raises(ValueError, match="not both"):
        sctrvae.pl.reg_mean_plot(pred, real, degs=degs, top_100_genes=degs)


def test_decoded_batches_yield_one_minibatch_at_a_time(trained):
    model, adata = trained
    cells = np.arange(70)  # two minibatches of 64
    loader = model._make_data_loader(adata, indices=cells, batch_size=64)
    mean = list(decoded_batches(model.module, loader, target=1, n_samples=0))
    assert [batch for batch, _ in mean] == [slice(0, 64), slice(64, 70)]
    assert set(mean[1][1]) == {"expression", "normalized", "observed"}
    assert mean[1][1]["expression"].shape == (6, adata.n_vars)
    np.testing.assert_allclose(mean[0][1]["normalized"].sum(1), 1.0, rtol=1e-5)
    loader = model._make_data_loader(adata, indices=cells, batch_size=64)
    drawn = list(
        decoded_batches(
            model.module, loader, None, n_samples=3, library_size=500.0, normalized=False
        )
    )
    assert set(drawn[0][1]) == {"expression", "observed"}
    assert drawn[0][1]["expression"].shape == (3, 64, adata.n_vars)
    observed = np.concatenate([out["observed"] for _, out in drawn])
    np.testing.assert_array_equal(observed, adata.X[:70].toarray())
    # every draw at the fixed depth: its counts scatter around 500 per cell
    draws = np.concatenate([out["expression"] for _, out in drawn], axis=1)
    assert 400 < draws.sum(-1).mean() < 600


def test_prediction_anndata_stacks_draws_and_sets_the_target():
    obs = pd.DataFrame(
        {"cell_type": ["a", "b"], "condition": ["control", "control"], "_scvi_batch": [0, 0]},
        index=["c0", "c1"],
    )
    var = pd.DataFrame(index=["g0", "g1", "g2"])
    arrays = {
        "expression": np.arange(12, dtype=np.float32).reshape(2, 2, 3),
        "normalized": np.full((2, 2, 3), 1 / 3, dtype=np.float32),
    }
    pred = prediction_anndata(
        obs, var, arrays, "condition", ["control", "stimulated"], "stimulated", n_samples=2
    )
    assert list(pred.obs_names) == ["c0-0", "c1-0", "c0-1", "c1-1"]
    assert list(pred.obs["sctrvae_draw"]) == [0, 0, 1, 1]
    assert list(pred.obs["cell_type"]) == ["a", "b", "a", "b"]
    assert (pred.obs["condition"] == "stimulated").all()
    assert list(pred.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert "_scvi_batch" not in pred.obs
    np.testing.assert_array_equal(pred.X[2], [6, 7, 8])  # draw 1 of cell 0
    assert pred.layers["normalized"].shape == (4, 3)
    assert list(obs["condition"]) == ["control", "control"]  # the caller's rows untouched
