import numpy as np
import pytest
import scvi

import sctrvae
from sctrvae._counterfactual import paired_scales

COLUMNS = [
    "group",
    "gene",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_lower",
    "lfc_upper",
    "proba_de",
    "scale_source",
    "scale_target",
    "observed_lfc",
    "n_cells",
    "n_target_cells",
    "pseudocounts",
]


@pytest.fixture(scope="module")
def fitted():
    """A model trained on simulated data whose responses are known.

    Every cell type is measured in both conditions here, so the MMD (default weight 100) can
    align the conditions' ``y`` to the point of erasing the types' own responses (with the
    condition offset, the shared response survives); a weight of 10 keeps them.
    """
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=1500, n_genes=200, n_cell_types=3, seed=2)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=64, n_latent=8, mmd_weight=10.0)
    model.train(max_epochs=40, batch_size=128, enable_progress_bar=False)
    log_means = adata.uns["simulation"]["log_means"]
    true_lfc = (log_means[:, 1] - log_means[:, 0]) / np.log(2)  # types x genes, log2
    return model, adata, true_lfc


def test_table_has_one_row_per_group_and_gene(fitted):
    model, adata, _ = fitted
    df = model.differential_response(
        adata, "cell_type", "control", "stimulated", n_samples=4, max_cells=50, key_added="resp"
    )
    assert list(df.columns) == COLUMNS
    assert df.shape == (3 * adata.n_vars, len(COLUMNS))
    assert list(df.group.cat.categories) == ["type_0", "type_1", "type_2"]
    for _, genes in df.groupby("group", observed=True).gene:
        assert list(genes) == list(adata.var_names)
    assert (df.n_cells == 50).all()
    assert ((df.proba_de >= 0) & (df.proba_de <= 1)).all()
    assert ((df.lfc_lower <= df.lfc_median) & (df.lfc_median <= df.lfc_upper)).all()
    assert adata.uns["resp"]["results"] is df
    assert adata.uns["resp"]["params"]["delta"] == 0.25


def test_paired_lfc_spread_is_smaller_than_unpaired(fitted):
    model, adata, _ = fitted
    cells = np.flatnonzero(
        (adata.obs.cell_type == "type_0").to_numpy() & (adata.obs.condition == "control").to_numpy()
    )
    source, target = paired_scales(model.module, model._make_data_loader(adata, cells), 0, 1, 20)
    assert source.shape == target.shape == (20, cells.size, adata.n_vars)
    paired = np.log2(target) - np.log2(source)
    # unpaired: the target decoded from independent draws of z and matched with other cells
    _, target_again = paired_scales(model.module, model._make_data_loader(adata, cells), 0, 1, 20)
    shuffled = target_again[:, np.random.default_rng(0).permutation(cells.size)]
    unpaired = np.log2(shuffled) - np.log2(source)
    paired_sd = paired.reshape(-1, adata.n_vars).std(0)
    unpaired_sd = unpaired.reshape(-1, adata.n_vars).std(0)
    ratio = paired_sd / unpaired_sd
    assert np.median(ratio) < 0.6
    assert np.mean(ratio < 1) > 0.8
    # and the table reports the paired spread
    df = model.differential_response(adata, "cell_type", "control", "stimulated", n_samples=20)
    reported = df[df.group == "type_0"].lfc_std.to_numpy()
    assert np.median(reported) < 0.6 * np.median(unpaired_sd)


def test_response_genes_get_high_proba_and_others_low(fitted):
    model, adata, true_lfc = fitted
    df = model.differential_response(adata, "cell_type", "control", "stimulated", delta=0.5)
    for t in range(3):
        table = df[df.group == f"type_{t}"]
        # the simulator renormalises proportions, so "flat" is judged on the true LFC itself
        strong, flat = np.abs(true_lfc[t]) > 1.0, np.abs(true_lfc[t]) < 0.2
        assert strong.sum() >= 15
        assert flat.sum() >= 150
        assert table.proba_de.to_numpy()[strong].mean() > 0.8
        assert table.proba_de.to_numpy()[flat].mean() < 0.05
        # 0.88-0.96 over the types; the offset model attributes more of it to the shared part
        assert np.corrcoef(table.lfc_mean, true_lfc[t])[0, 1] > 0.85
        assert np.corrcoef(table.observed_lfc, true_lfc[t])[0, 1] > 0.8


def test_observed_lfc_is_nan_for_a_group_without_target_cells(fitted):
    model, adata, _ = fitted
    keep = ~((adata.obs.cell_type == "type_1") & (adata.obs.condition == "stimulated")).to_numpy()
    subset = adata[keep].copy()
    df = model.differential_response(subset, "cell_type", "control", "stimulated", n_samples=2)
    by_group = df.groupby("group", observed=True)
    assert by_group.observed_lfc.apply(lambda v: v.isna().all()).to_dict() == {
        "type_0": False,
        "type_1": True,
        "type_2": False,
    }
    assert (df[df.group == "type_1"].n_target_cells == 0).all()
    assert df[df.group == "type_1"].proba_de.notna().all()


def test_errors(fitted):
    model, adata, _ = fitted
    with pytest.raises(ValueError, match="Unknown condition"):
        model.differential_response(adata, "cell_type", "control", "stim")
    with pytest.raises(KeyError, match="groupby"):
        model.differential_response(adata, "celltype", "control", "stimulated")
    only_stim = adata[(adata.obs.condition == "stimulated").to_numpy()].copy()
    with pytest.raises(ValueError, match="no cells in 'control'"):
        model.differential_response(
            only_stim, "cell_type", "control", "stimulated", groups=["type_0"]
        )
