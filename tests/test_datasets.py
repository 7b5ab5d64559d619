import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sctrvae


def test_simulate_shapes_types_and_truth():
    adata = sctrvae.datasets.simulate(n_cells=500, n_genes=60, n_cell_types=3, seed=0)
    assert adata.shape == (500, 60)
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert np.array_equal(adata.X.data, np.round(adata.X.data))
    assert (adata.X.data > 0).all()
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.obs["cell_type"].nunique() == 3
    truth = adata.uns["simulation"]
    assert truth["log_means"].shape == (3, 2, 60)
    np.testing.assert_allclose(np.exp(truth["log_means"]).sum(-1), 1.0)
    assert not truth["response_genes"][0].any()
    assert truth["response_genes"][1].any()


def test_simulate_is_seeded_and_chunking_does_not_change_the_design():
    a = sctrvae.datasets.simulate(n_cells=300, n_genes=40, seed=7)
    b = sctrvae.datasets.simulate(n_cells=300, n_genes=40, seed=7)
    c = sctrvae.datasets.simulate(n_cells=300, n_genes=40, seed=7, chunk_size=64)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(c.obs)
    np.testing.assert_array_equal(
        a.uns["simulation"]["log_means"], c.uns["simulation"]["log_means"]
    )


def test_simulated_response_is_visible_in_the_counts():
    adata = sctrvae.datasets.simulate(n_cells=4000, n_genes=50, n_cell_types=1, seed=3)
    lognorm = sctrvae.metrics.log_normalized(adata)
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    observed = lognorm[stim].mean(0) - lognorm[~stim].mean(0)
    truth = adata.uns["simulation"]["log_means"][0]
    assert np.corrcoef(observed, truth[1] - truth[0])[0, 1] > 0.8


def test_simulate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        sctrvae.datasets.simulate(conditions=("a", "a"))


def test_kang2018_reads_a_local_file_and_renames_labels(tmp_path, monkeypatch):
    adata = ad.AnnData(
        X=sp.csr_matrix(np.ones((4, 3), dtype=np.float32)),
        obs={"label": ["ctrl", "stim", "ctrl", "stim"], "cell_type": ["B"] * 4},
    )
    path = tmp_path / "kang.h5ad"
    adata.write_h5ad(path)
    loaded = sctrvae.datasets.kang2018(path)
    assert list(loaded.obs["condition"]) == ["control", "stimulated", "control", "stimulated"]
    monkeypatch.setenv("SCTRVAE_KANG_PATH", str(path))
    assert sctrvae.datasets.kang2018().shape == (4, 3)
    with pytest.raises(FileNotFoundError):
        sctrvae.datasets.kang2018(tmp_path / "missing.h5ad")


def test_kang2018_on_the_shared_file(kang_path):
    adata = sctrvae.datasets.kang2018(kang_path)
    assert adata.shape == (1975, 6998)
    assert set(adata.obs["condition"]) == {"control", "stimulated"}


def test_simulate_defaults_reproduce_the_previous_data_bit_for_bit():
    # fingerprint of simulate(300, 40, 3 types, seed=4) before cell_type_proportions and
    # group_effect existed; passing their defaults explicitly changes nothing either
    import hashlib

    for kwargs in ({}, {"cell_type_proportions": None, "group_effect": 1.0}):
        adata = sctrvae.datasets.simulate(n_cells=300, n_genes=40, n_cell_types=3, seed=4, **kwargs)
        digest = hashlib.sha256()
        for array in (
            adata.X.toarray(),
            adata.obs["condition"].cat.codes.to_numpy(),
            adata.obs["cell_type"].cat.codes.to_numpy(),
            adata.uns["simulation"]["log_means"],
        ):
            digest.update(array.tobytes())
        assert digest.hexdigest() == (
            "a7afbfb1d25ad0bbce2c9f9202011eb84293d42906adf21df3501252fcbad0f0"
        )


def test_simulate_cell_type_proportions_per_condition():
    proportions = [[1, 1, 1, 1], [4, 2, 2, 0]]
    adata = sctrvae.datasets.simulate(n_cells=6000, n_genes=20, cell_type_proportions=proportions)
    table = adata.obs.groupby(["condition", "cell_type"], observed=False).size().unstack()
    observed = table.to_numpy() / table.to_numpy().sum(1, keepdims=True)
    np.testing.assert_allclose(observed, [[0.25] * 4, [0.5, 0.25, 0.25, 0.0]], atol=0.03)
    assert table.loc["stimulated", "type_3"] == 0
    with pytest.raises(ValueError, match="cell_type_proportions"):
        sctrvae.datasets.simulate(cell_type_proportions=[[1, 1, 1, 1]])


def test_simulate_group_effect_scales_baseline_differences():
    def spread(effect):
        truth = sctrvae.datasets.simulate(
            n_cells=10, n_genes=300, n_cell_types=5, seed=2, group_effect=effect
        )
        control = truth.uns["simulation"]["log_means"][:, 0]
        return (control - control.mean(0)).std()

    # 3x larger per-type deviations, up to the per-type normalisation of log_means
    assert spread(3.0) / spread(1.0) == pytest.approx(3.0, rel=0.05)


def test_simulate_donors_spreads_donors_unequally_over_the_conditions():
    adata = sctrvae.datasets.simulate_donors(n_cells=4000, condition_imbalance=0.6, seed=0)
    control = pd.crosstab(adata.obs["donor"], adata.obs["condition"], normalize="index")["control"]
    # the first donor mostly control (0.8), the last mostly stimulated (0.2), in between ordered
    np.testing.assert_allclose(control.iloc[[0, -1]], [0.8, 0.2], atol=0.05)
    assert control.is_monotonic_decreasing
    balanced = sctrvae.datasets.simulate_donors(n_cells=4000, seed=0)
    shares = pd.crosstab(balanced.obs["donor"], balanced.obs["condition"], normalize="index")
    np.testing.assert_allclose(shares["control"], 0.5, atol=0.05)
    with pytest.raises(ValueError, match="condition_imbalance"):
        sctrvae.datasets.simulate_donors(condition_imbalance=1.0)
