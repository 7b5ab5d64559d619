import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sctrvae
from sctrvae.metrics import log1p_normalize, log_normalized, score_prediction, top_degs


@pytest.fixture
def populations():
    adata = sctrvae.datasets.simulate(n_cells=1200, n_genes=80, n_cell_types=1, seed=9)
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    return adata[stim].copy(), adata[~stim].copy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log1p_normalize_scales_rows_to_ten_thousand(dtype):
    counts = np.array([[1, 0, 3], [0, 0, 0], [2, 2, 6]], dtype=np.int64)
    expected = np.log1p(np.array([[2500, 0, 7500], [0, 0, 0], [2000, 2000, 6000]]))
    for x in (counts, sp.csr_matrix(counts), counts[None].repeat(2, 0)):  # draws axis too
        values = log1p_normalize(x, dtype)
        assert values.dtype == dtype
        np.testing.assert_allclose(values, np.broadcast_to(expected, values.shape), rtol=1e-6)
    assert counts[0, 0] == 1  # the input is not scaled in place


def test_real_cells_score_perfectly_against_themselves(populations):
    target, source = populations
    scores = score_prediction(target, target, source, n_degs=20)
    assert set(scores) == {
        "r2_mean_all",
        "r2_var_all",
        "r2_mean_deg",
        "r2_var_deg",
        "pearson_delta_all",
        "pearson_delta_deg",
    }
    for value in scores.values():
        assert value == pytest.approx(1.0)


def test_log_normalised_predictions_are_scored_as_they_are(populations):
    target, source = populations
    logged = target.copy()
    logged.layers["log"] = log_normalized(target)
    expected = score_prediction(target, target, source, n_degs=20)
    scores = score_prediction(
        logged, target, source, n_degs=20, predicted_layer="log", predicted_is_log=True
    )
    assert scores == pytest.approx(expected)


def test_identity_prediction_has_no_change_to_correlate(populations):
    target, source = populations
    scores = score_prediction(source, target, source, n_degs=20)
    assert scores["pearson_delta_all"] == 0.0
    assert scores["r2_mean_all"] < 1.0


def test_top_degs_find_the_simulated_response(populations):
    target, source = populations
    degs = top_degs(target, source, n_genes=5)
    truth = target.uns["simulation"]["response_genes"][1]
    assert (target.var_names.isin(degs) & truth).sum() >= 4


def test_proportions_and_counts_normalise_alike():
    counts = np.array([[1.0, 3.0], [0.0, 5.0]])
    props = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(
        log_normalized(ad.AnnData(counts)), log_normalized(ad.AnnData(props))
    )


def test_mismatched_genes_are_rejected(populations):
    target, source = populations
    with pytest.raises(ValueError, match="var_names"):
        score_prediction(target[:, :10], target, source)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0))
def test_scores_are_bounded_and_invariant_to_depth(seed, depth):
    rng = np.random.default_rng(seed)
    real = ad.AnnData(rng.poisson(3.0, (20, 15)).astype(np.float32))
    source = ad.AnnData(rng.poisson(2.0, (20, 15)).astype(np.float32))
    pred = ad.AnnData(rng.poisson(3.0, (20, 15)).astype(np.float32))
    degs = np.asarray(real.var_names[:5])
    scores = score_prediction(pred, real, source, degs=degs)
    scaled = ad.AnnData(pred.X * depth)
    for key, value in scores.items():
        assert -1.0 <= value <= 1.0 + 1e-12
        if key.startswith("r2"):
            assert value >= 0.0
        assert score_prediction(scaled, real, source, degs=degs)[key] == pytest.approx(
            value, rel=1e-5, abs=1e-8
        )
