import anndata as ad
import numpy as np
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
