import numpy as np
import pytest
import scvi

import sctrvae
from sctrvae.model._counterfactual import paired_scales

COLUMNS = [
    "group",
    "gene",
    "lfc_mean",
    "lfc_std",
    "lfc_lower",
    "lfc_upper",
    "proba_de",
    "proba_up",
    "proba_down",
    "lfc_model",
    "lfc_shared",
    "weight",
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
    np.testing.assert_allclose(df.proba_de, df.proba_up + df.proba_down, rtol=1e-12)
    assert ((df.lfc_lower < df.lfc_mean) & (df.lfc_mean < df.lfc_upper)).all()
    assert (df.weight == 1.0).all()
    np.testing.assert_array_equal(df.lfc_mean, df.lfc_model)  # no weights: the model's own
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
        assert table.proba_de.to_numpy()[flat].mean() < 0.1
        # the estimand of observed_lfc, shrunk by the same pseudocount (0.84-0.9 over types)
        assert np.corrcoef(table.lfc_mean, true_lfc[t])[0, 1] > 0.8
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


def test_a_held_out_groups_interval_covers_its_true_change(fitted):
    """The interval of a group never seen in the target condition holds the transfer error.

    The spread over draws of z alone is far narrower than the error of a transferred response;
    the misfit and the groups' spread of response bring the 90% interval to about 90%.
    """
    model, adata, true_lfc = fitted
    keep = ~((adata.obs.cell_type == "type_1") & (adata.obs.condition == "stimulated")).to_numpy()
    df = model.differential_response(
        adata[keep].copy(), "cell_type", "control", "stimulated", credible_level=0.9
    )
    held_out = df[df.group == "type_1"]
    assert held_out.observed_lfc.isna().all()
    truth = true_lfc[1]
    inside = (held_out.lfc_lower <= truth) & (truth <= held_out.lfc_upper)
    assert inside.mean() > 0.75
    seen = df[df.group == "type_0"]
    assert held_out.lfc_std.median() > 1.5 * seen.lfc_std.median()  # the transfer part


def test_weights_hedge_toward_the_shared_response(fitted):
    model, adata, _ = fitted
    keep = ~((adata.obs.cell_type == "type_1") & (adata.obs.condition == "stimulated")).to_numpy()
    subset = adata[keep].copy()
    kwargs = {"groups": ["type_1"], "n_samples": 3}
    plain = model.differential_response(subset, "cell_type", "control", "stimulated", **kwargs)
    shared = model.differential_response(
        subset, "cell_type", "control", "stimulated", weights={"type_1": 0.0}, **kwargs
    )
    half = model.differential_response(
        subset, "cell_type", "control", "stimulated", weights={"type_1": 0.5}, **kwargs
    )
    # the shared response: the mean measured response of the other two types
    measured = model.differential_response(subset, "cell_type", "control", "stimulated")
    others = measured[measured.group != "type_1"].groupby("gene", observed=True).observed_lfc
    np.testing.assert_allclose(shared.lfc_mean, others.mean().loc[shared.gene], rtol=1e-6)
    np.testing.assert_allclose(shared.lfc_shared, shared.lfc_mean)
    np.testing.assert_allclose(half.lfc_mean, (half.lfc_model + half.lfc_shared) / 2)
    np.testing.assert_allclose(half.lfc_shared, shared.lfc_shared)
    # the model's own response moves only by its draws of z between calls
    np.testing.assert_allclose(half.lfc_model, plain.lfc_model, atol=0.05)
    assert (half.weight == 0.5).all()


def test_transfer_se_replaces_misfit_and_spread_for_unmeasured_groups():
    from sctrvae.model._differential import response_table

    rng = np.random.default_rng(0)
    n_genes = 6
    group = np.repeat(["a", "b", "c"], 20)
    condition = np.tile(["ctrl", "stim"], 30)
    condition[group == "c"] = "ctrl"  # c never measured in stim
    counts = rng.poisson(5.0, (60, n_genes)).astype(float)
    source_scale = rng.dirichlet(np.ones(n_genes), (3, 10))

    def decode(cells):
        n = cells.size
        return source_scale[:, :n], source_scale[:, :n][:, :, ::-1]

    se = np.linspace(0.1, 0.6, n_genes)
    genes = [f"g{i}" for i in range(n_genes)]
    arguments = (decode, counts, group, condition, genes, "ctrl", "stim", ["a", "c"])
    table = response_table(*arguments, transfer_se={"c": se})
    plain = response_table(*arguments)
    pc = table[table.group == "c"].pseudocounts.iloc[0]
    lfc = np.log2(source_scale[:, :10][:, :, ::-1].mean(1) + pc) - np.log2(
        source_scale[:, :10].mean(1) + pc
    )
    np.testing.assert_allclose(table[table.group == "c"].lfc_std, np.sqrt(lfc.var(0) + se**2))
    # a measured group keeps its misfit; without transfer_se the unmeasured one its spread
    np.testing.assert_allclose(table[table.group == "a"].lfc_std, plain[plain.group == "a"].lfc_std)
    assert not np.allclose(table[table.group == "c"].lfc_std, plain[plain.group == "c"].lfc_std)
