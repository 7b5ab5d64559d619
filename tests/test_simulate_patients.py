import numpy as np
import pytest
import scipy.sparse as sp

import sctrvae


def _pair_rows(adata):
    table = sctrvae.tl.group_similarity(adata, "patient", "condition", "control", "stimulated")
    pair = set(adata.uns["simulation"]["pair"])
    is_pair = np.array([{a, b} == pair for a, b in zip(table.group_a, table.group_b, strict=True)])
    return table, is_pair


def test_simulate_patients_shapes_and_truth():
    adata = sctrvae.datasets.simulate_patients(n_cells=400, n_genes=50, n_groups=4, seed=1)
    assert adata.shape == (400, 50)
    assert sp.issparse(adata.X)
    assert np.array_equal(adata.X.data, np.round(adata.X.data))
    assert list(adata.obs["patient"].cat.categories) == [f"patient_{i}" for i in range(4)]
    truth = adata.uns["simulation"]
    assert truth["log_means"].shape == (4, 2, 50)
    np.testing.assert_allclose(np.exp(truth["log_means"]).sum(-1), 1.0)
    assert truth["pair"] == ["patient_2", "patient_3"]
    assert truth["response_genes"][1].sum() == round(0.15 * 50)


def test_the_two_designs_differ_only_in_the_pairs_own_response():
    unlike = sctrvae.datasets.simulate_patients(n_cells=300, n_genes=40, seed=2)
    alike = sctrvae.datasets.simulate_patients(
        n_cells=300, n_genes=40, seed=2, pair_response="alike"
    )
    lm_u, lm_a = unlike.uns["simulation"]["log_means"], alike.uns["simulation"]["log_means"]
    np.testing.assert_allclose(lm_u[:3], lm_a[:3])  # groups outside the pair
    np.testing.assert_allclose(lm_u[3:, 0], lm_a[3:, 0])  # the pair at baseline
    assert np.abs(lm_u[3:, 1] - lm_a[3:, 1]).max() > 1.0  # the pair's response


def test_failure_design_pair_is_closest_at_baseline_and_least_alike_in_response():
    table, is_pair = _pair_rows(sctrvae.datasets.simulate_patients(seed=0))
    assert is_pair[0]  # sorted by baseline distance
    assert table.baseline_distance[0] < 0.5 * table.baseline_distance[1]
    assert table.response_correlation[is_pair].iloc[0] < table.response_correlation[~is_pair].min()


def test_control_design_pair_responds_most_alike():
    adata = sctrvae.datasets.simulate_patients(seed=0, pair_response="alike")
    table, is_pair = _pair_rows(adata)
    assert is_pair[0]
    assert table.response_correlation[is_pair].iloc[0] > table.response_correlation[~is_pair].max()


def test_simulate_patients_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pair_response"):
        sctrvae.datasets.simulate_patients(pair_response="opposite")
    with pytest.raises(ValueError, match="n_groups"):
        sctrvae.datasets.simulate_patients(n_groups=2)
