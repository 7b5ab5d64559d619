import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scvi

import sctrvae
from sctrvae.metrics import log_normalized, top_degs
from sctrvae.tl import _transfer_check

HELD_OUT = "patient_3"


@pytest.fixture(scope="module")
def fitted():
    """A briefly trained model without patient_3's stimulated cells, and the full data."""
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate_patients(n_cells=600, n_genes=60, n_groups=4, seed=0)
    held = ((adata.obs.patient == HELD_OUT) & (adata.obs.condition == "stimulated")).to_numpy()
    train = adata[~held].copy()
    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    model = sctrvae.TRVAEModel(train, n_latent=4, n_hidden=32)
    model.train(max_steps=60, enable_progress_bar=False)
    return model, adata


@pytest.fixture(scope="module")
def check(fitted):
    model, _ = fitted
    return sctrvae.tl.transfer_check(
        model, "patient", "control", "stimulated", max_steps=20, n_degs=20, progress=False
    )


def test_transfer_check_table(fitted, check):
    model, _ = fitted
    # patient_3 has no stimulated cells in training: the check leaves out the other three
    assert list(pd.unique(check.group)) == ["patient_0", "patient_1", "patient_2"]
    assert check.shape[0] == 9
    assert set(check.method) == {"model", "mean_shift", "median_shift"}
    assert model.adata.uns["transfer_check"] is check
    for _, rows in check.groupby("group"):
        scores = rows.set_index("method").pearson_delta_deg
        margin = scores["model"] - max(scores["mean_shift"], scores["median_shift"])
        assert rows.margin.iloc[0] == pytest.approx(margin)
        expected = "the model beats the shared response here" if margin > 0 else "does not"
        assert (rows.verdict == expected).all()
        # a reliable donor: the others predicted its response better than the shared response
        assert rows.reliability.iloc[0] == float(margin > 0)
        assert 0.0 <= rows.lent.iloc[0] <= 1.0
        changes = check.attrs["changes"][rows.group.iloc[0]]
        assert list(changes) == ["real", "model", "mean_shift", "median_shift"]
        assert {len(v) for v in changes.values()} == {model.adata.n_vars}
        assert ((rows.r2_mean_deg >= 0) & (rows.r2_mean_deg <= 1)).all()
    assert "reliability" in repr(check)  # the per-gene attrs do not break pandas


def test_transfer_check_baselines_are_the_other_groups_changes(fitted, check):
    model, _ = fitted
    adata = model.adata
    lognorm = log_normalized(adata)
    is_g = lambda g, c: ((adata.obs.patient == g) & (adata.obs.condition == c)).to_numpy()  # noqa: E731
    change = {
        g: lognorm[is_g(g, "stimulated")].mean(0) - lognorm[is_g(g, "control")].mean(0)
        for g in ["patient_0", "patient_1", "patient_2"]
    }
    g = "patient_1"
    degs = adata.var_names.isin(
        top_degs(adata[is_g(g, "stimulated")], adata[is_g(g, "control")], 20)
    )
    shared = np.median([change["patient_0"], change["patient_2"]], axis=0)
    expected = np.corrcoef(shared[degs], change[g][degs])[0, 1]
    row = check[(check.group == g) & (check.method == "median_shift")]
    assert row.pearson_delta_deg.iloc[0] == pytest.approx(expected, abs=1e-6)


def test_transfer_check_refits_like_the_model_without_the_groups_target(fitted, monkeypatch):
    model, _ = fitted
    refits = []
    refit_like = _transfer_check.refit_like

    def spy(*args, **kwargs):
        refits.append(refit_like(*args, **kwargs))
        return refits[-1]

    monkeypatch.setattr(_transfer_check, "refit_like", spy)
    table = sctrvae.tl.transfer_check(
        model,
        "patient",
        "control",
        "stimulated",
        groups=["patient_0"],
        max_steps=5,
        n_degs=10,
        progress=False,
        key_added=None,
    )
    assert len(refits) == 1
    assert set(table.group) == {"patient_0"}
    refit = refits[0]
    assert refit.init_params_ == model.init_params_
    obs = refit.adata.obs
    assert not ((obs.patient == "patient_0") & (obs.condition == "stimulated")).any()
    assert (
        refit.adata.n_obs
        == model.adata.n_obs
        - (
            (model.adata.obs.patient == "patient_0") & (model.adata.obs.condition == "stimulated")
        ).sum()
    )


def test_transfer_check_rejects_groups_without_both_conditions(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="lack cells"):
        sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", groups=[HELD_OUT])


def test_transfer_check_plot(check):
    ax = sctrvae.pl.transfer_check(check)
    assert len(ax.patches) == 9  # 3 groups × 3 methods
    assert len(ax.texts) == 3
    with pytest.raises(KeyError, match="margin"):
        sctrvae.pl.transfer_check(check.drop(columns="margin"))


def _predict(fitted):
    model, adata = fitted
    data = adata.copy()
    source = ((data.obs.patient == HELD_OUT) & (data.obs.condition == "control")).to_numpy()
    model.predict(
        data, indices=np.flatnonzero(source), target_condition="stimulated", key_added="pred"
    )
    return model, data, source


def _changes(data, source, layer):
    lognorm = log_normalized(data[source])
    return data.layers[layer][source].mean(0) - lognorm.mean(0)


def test_hedge_with_unreliable_donors_returns_the_shared_response(fitted, check):
    model, data, source = _predict(fitted)
    unreliable = check.assign(reliability=0.0)
    sctrvae.tl.hedge(model, data, unreliable, "patient", "pred")
    assert data.uns["pred_hedged"]["weights"] == {HELD_OUT: 0.0}
    hedged = _changes(data, source, "pred_hedged")
    _, changes = sctrvae.tl.group_changes(
        model.adata, "patient", "condition", "control", "stimulated"
    )
    shared = changes.median(axis=0).to_numpy()
    model_change = _changes(data, source, "pred")
    # clipping at 0 moves a few low genes: close to the shared response, far from the model's
    assert np.corrcoef(hedged, shared)[0, 1] > 0.97
    assert np.linalg.norm(hedged - shared) < 0.3 * np.linalg.norm(model_change - shared)
    assert np.isnan(data.layers["pred_hedged"][~source]).all()


def test_hedge_with_reliable_donors_keeps_the_model(fitted, check):
    model, data, source = _predict(fitted)
    sctrvae.tl.hedge(
        model, data, check.assign(reliability=1.0), "patient", "pred", key_added="kept"
    )
    assert data.uns["kept"]["weights"][HELD_OUT] == pytest.approx(1.0)
    np.testing.assert_allclose(data.layers["kept"][source], data.layers["pred"][source], atol=1e-5)


def test_hedge_weight_loses_the_cover_of_unreliable_look_alikes(fitted, check):
    model, data, source = _predict(fitted)
    train = model.adata
    donors = (train.obs.condition == "control").to_numpy() & (
        train.obs.patient != HELD_OUT
    ).to_numpy()
    coverage = sctrvae.tl.donor_coverage(
        model.get_latent_representation(data, indices=np.flatnonzero(source)),
        model.get_latent_representation(train, indices=np.flatnonzero(donors)),
        train.obs.patient.astype(str).to_numpy()[donors],
    )
    # patient_2 is patient_3's look-alike (simulate_patients' pair): it covers it, the others not
    assert coverage["patient_2"] > 0.5
    assert coverage.drop("patient_2").max() < 0.2
    for unreliable in ("patient_2", "patient_0"):
        # no lending seen in the check (lent = 0): the look-alike's cover is lost
        one_donor = check.assign(reliability=(check.group != unreliable).astype(float), lent=0.0)
        out = sctrvae.tl.hedge(model, data, one_donor, "patient", "pred", copy=True)
        assert "pred_hedged" not in data.layers
        w = out.uns["pred_hedged"]["weights"][HELD_OUT]
        assert w == pytest.approx(1.0 - coverage[unreliable])
    # two of the three checked groups lent successfully: the lending record L = 2 / (3 + 1)
    lending = check.assign(reliability=(check.group != "patient_2").astype(float), lent=1.0)
    out = sctrvae.tl.hedge(model, data, lending, "patient", "pred", copy=True)
    w = out.uns["pred_hedged"]["weights"][HELD_OUT]
    assert w == pytest.approx(1.0 - coverage["patient_2"] / 2)


def test_donor_coverage_of_a_mixed_and_a_distant_group():
    rng = np.random.default_rng(0)
    query = rng.normal(0.0, 1.0, (100, 2))
    reference = np.vstack([rng.normal(0.0, 1.0, (200, 2)), rng.normal(20.0, 1.0, (100, 2))])
    groups = np.array(["near"] * 200 + ["far"] * 100)
    coverage = sctrvae.tl.donor_coverage(query, reference, groups, n_neighbors=20)
    assert coverage["near"] > 0.9
    assert coverage["far"] == 0.0


def test_hedge_rejects_a_layer_not_written_by_predict(fitted, check):
    model, data, _ = _predict(fitted)
    data.layers["other"] = data.layers["pred"]
    with pytest.raises(KeyError, match="predict"):
        sctrvae.tl.hedge(model, data, check, "patient", "other")
    with pytest.raises(ValueError, match="shared"):
        sctrvae.tl.hedge(model, data, check, "patient", "pred", shared="mode")


def test_hedge_writes_the_change_and_its_standard_error(fitted, check):
    model, data, source = _predict(fitted)
    sctrvae.tl.hedge(model, data, check, "patient", "pred")
    record = data.uns["pred_hedged"]
    assert record["change"].shape == (1, data.n_vars)
    assert record["change_se"].shape == (1, data.n_vars)
    assert (record["change_se"].to_numpy() > 0).all()
    # the layer is clipped at 0, the recorded change is not
    layer_change = _changes(data, source, "pred_hedged")
    assert np.corrcoef(record["change"].loc[HELD_OUT], layer_change)[0, 1] > 0.97


def test_change_se_pools_genes_and_inflates_for_a_new_group():
    residuals = np.array([[1.0, 0.0], [-1.0, 0.0]])  # k = 2 groups, gene 0 errs by 1
    se = sctrvae.tl.change_se(residuals, prior_groups=2.0)
    # gene 0: (2 · 1 + 2 · 0.5) / 4 = 0.75; gene 1: (0 + 2 · 0.5) / 4 = 0.25; × (1 + 1/2)
    np.testing.assert_allclose(se**2, [0.75 * 1.5, 0.25 * 1.5])
