"""The output bias starts at the genes' average profile over the conditions."""

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctrvae import TRVAEModel
from sctrvae.model._initialisation import condition_gene_means


def _log_profile(counts: np.ndarray) -> np.ndarray:
    sums = counts.sum(0) + 1.0
    return np.log(sums / sums.sum())


def test_the_bias_starts_at_the_mean_log_profile_of_the_conditions(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    counts = sim.X.toarray() if sp.issparse(sim.X) else np.asarray(sim.X)
    per_condition = [
        _log_profile(counts[(sim.obs["condition"] == c).to_numpy()]) for c in model.conditions
    ]
    expected = np.mean(per_condition, axis=0)
    bias = model.module.mean_head.bias.detach().numpy()
    np.testing.assert_allclose(bias, expected, rtol=1e-5, atol=1e-5)
    # a held-out condition-specific gene mix does not enter the offset, which starts at 0
    assert not model.module.condition_offset.detach().any()
    # the start is the decoder's, not the data's: the AnnData is untouched
    np.testing.assert_array_equal(sim.X.toarray() if sp.issparse(sim.X) else sim.X, counts)


def test_a_condition_without_cells_and_a_gene_never_seen_stay_finite():
    counts = sp.csr_matrix(np.array([[0, 3, 1], [0, 5, 0]], dtype=np.float32))
    means = condition_gene_means(counts, np.array([0, 0]), 2, "nb")
    assert means.shape == (3, 2)
    assert np.isfinite(means).all()
    np.testing.assert_allclose(np.exp(means).sum(0), 1.0)  # proportions per condition
    np.testing.assert_allclose(means[:, 0], np.log(np.array([1, 9, 2]) / 12))
    np.testing.assert_allclose(means[:, 1], np.log(np.full(3, 1 / 3)))


def test_normal_likelihood_starts_at_the_gene_means():
    values = np.array([[1.0, 2.0], [3.0, 6.0], [0.5, 0.5]])
    means = condition_gene_means(values, np.array([0, 0, 1]), 2, "normal")
    np.testing.assert_allclose(means, [[2.0, 0.5], [4.0, 0.5]])


def test_a_backed_matrix_gives_the_same_start_as_in_memory(sim, tmp_path):
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    codes = (sim.obs["condition"].cat.codes).to_numpy()
    in_memory = condition_gene_means(sim.X, codes, 2, "nb")
    np.testing.assert_allclose(condition_gene_means(backed.X, codes, 2, "nb"), in_memory)
    backed.file.close()


def test_a_few_steps_from_the_start_reconstruct_better_than_from_zero(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    losses = {}
    for start in (True, False):
        model = TRVAEModel(sim, n_hidden=16, n_latent=3)
        if not start:
            model.module.mean_head.bias.data.zero_()
        model.train(max_steps=5, batch_size=64, enable_progress_bar=False)
        losses[start] = model.history["reconstruction_loss_train"].iloc[-1, 0]
    assert losses[True] < 0.95 * losses[False]


def test_the_start_of_a_large_sparse_matrix_never_copies_it_whole(monkeypatch):
    """A float64 product would upcast a float32 matrix whole (0.9 GB at 200k × 2k cells)."""
    import tracemalloc

    from sctrvae import _utils

    rng = np.random.default_rng(0)
    counts = sp.random(20_000, 50, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    counts.data = np.ceil(counts.data * 10)
    codes = rng.integers(0, 2, counts.shape[0])
    dense = counts.toarray().astype(np.float64)
    expected = np.log(
        np.stack([dense[codes == c].sum(0) + 1 for c in (0, 1)])
        / np.stack([dense[codes == c].sum() + 50 for c in (0, 1)])[:, None]
    ).T
    monkeypatch.setattr(_utils, "ROW_BLOCK_ENTRIES", 50 * 1_000)  # blocks of 1,000 cells
    tracemalloc.start()
    means = condition_gene_means(counts, codes, 2, "nb")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_allclose(means, expected, rtol=1e-10)
    assert peak < counts.data.nbytes / 2, (peak, counts.data.nbytes)
