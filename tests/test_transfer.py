import matplotlib

matplotlib.use("Agg")

import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
from scipy.stats import t as student_t

import sctrvae
from sctrvae._utils import pearson
from sctrvae.metrics import log_normalized
from sctrvae.model.base import _input_mixin
from sctrvae.tl import _held_out, _transfer_check
from sctrvae.tl._held_out import GroupedData, grouped_folds
from sctrvae.tl._transfer_check import margin_verdicts, refit_margins

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


CHECKED = ["patient_0", "patient_1", "patient_2"]


def test_transfer_check_table(fitted, check):
    model, _ = fitted
    # patient_3 has no stimulated cells in training: the check scores the other three
    assert list(pd.unique(check.group)) == CHECKED
    assert check.shape[0] == 9
    assert set(check.method) == {"model", "mean_shift", "median_shift"}
    assert model.adata.uns["transfer_check"] is check
    # 4 shuffles × 2 folds: every group scored four times, by different refits
    assert check.attrs["refits"] == 8
    assert (check.n_scores == 4).all()
    per_group = check.groupby("group", sort=False).first()
    bound = student_t.ppf(0.95, 9)  # pooled over 3 groups × (4 − 1) degrees of freedom
    for g, row in per_group.iterrows():
        changes = check.attrs["changes"][g]
        assert set(changes) == {"real", "degs", "model", "mean_shift", "median_shift"}
        assert len(changes["real"]) == model.adata.n_vars
        assert np.shape(changes["model"]) == (4, model.adata.n_vars)
        degs = np.zeros(model.adata.n_vars, bool)
        degs[changes["degs"]] = True
        assert degs.sum() == 20
        # the margin is the mean over refits of the model's lead on the better baseline
        margins = [
            pearson(np.asarray(changes["model"][i])[degs], np.asarray(changes["real"])[degs])
            - max(
                pearson(np.asarray(changes[b][i])[degs], np.asarray(changes["real"])[degs])
                for b in ("mean_shift", "median_shift")
            )
            for i in range(4)
        ]
        assert row.margin == pytest.approx(np.mean(margins), abs=1e-9)
        assert row.margin_se >= 0.02 / np.sqrt(4) - 1e-12
        tscore = row.margin / row.margin_se
        expected = (
            "the model beats the shared response here"
            if tscore > bound
            else ("does not" if tscore < -bound else "undecided")
        )
        assert row.verdict == expected
        assert row.reliability == pytest.approx(student_t.cdf(tscore, 9))
        assert 0.0 <= row.lent <= 1.0
    assert ((check.r2_mean_deg >= 0) & (check.r2_mean_deg <= 1)).all()
    assert "reliability" in repr(check)  # the per-gene attrs do not break pandas


def test_transfer_check_baselines_are_each_refits_training_groups(fitted, check):
    model, _ = fitted
    _, change = sctrvae.tl.group_changes(
        model.adata, "patient", "condition", "control", "stimulated"
    )
    seen = dict.fromkeys(CHECKED, 0)
    for fold in grouped_folds(CHECKED, 2, 2, random_state=0):
        trained = change.drop(index=list(fold))
        for g in fold:
            stored = check.attrs["changes"][g]
            i = seen[g]
            np.testing.assert_allclose(stored["median_shift"][i], trained.median(0), atol=1e-6)
            np.testing.assert_allclose(stored["mean_shift"][i], trained.mean(0), atol=1e-6)
            seen[g] += 1
    assert set(seen.values()) == {2}


def test_grouped_folds_hold_every_group_out_once_per_repeat():
    groups = [f"g{i}" for i in range(7)]
    folds = grouped_folds(groups, 3, 4, random_state=1)
    assert len(folds) == 12
    for r in range(4):
        held = [g for fold in folds[3 * r : 3 * r + 3] for g in fold]
        assert sorted(held) == groups
        assert {len(f) for f in folds[3 * r : 3 * r + 3]} == {2, 3}
    # the shuffles differ, and the same seed gives the same folds
    assert len(set(folds)) > 3
    assert folds == grouped_folds(groups, 3, 4, random_state=1)
    # leave-one-group-out
    assert sorted(grouped_folds(groups, 7, 1)) == [(g,) for g in groups]
    with pytest.raises(ValueError, match="n_folds"):
        grouped_folds(groups, 8, 1)
    with pytest.raises(ValueError, match="n_repeats"):
        grouped_folds(groups, 2, 0)


def test_grouped_data_ranks_degs_on_a_seeded_subset_of_a_large_group(fitted, monkeypatch):
    _, adata = fitted
    obs_names = adata.obs_names
    ranked = []
    top_degs = _held_out.top_degs

    def spy(real_target, real_source, n_genes):
        ranked.append((list(real_target.obs_names), list(real_source.obs_names)))
        return top_degs(real_target, real_source, n_genes)

    monkeypatch.setattr(_held_out, "top_degs", spy)
    args = (adata, "patient", "condition", "control", "stimulated", 10)
    full = GroupedData(*args).group("patient_0")
    assert GroupedData(*args, max_cells=10_000).group("patient_0").deg_mask.sum() == 10
    groups = [GroupedData(*args, max_cells=20, random_state=seed) for seed in (0, 0, 1)]
    subsets = [data.group("patient_0") for data in groups]
    (all_target, all_source), (big_target, big_source), *seeded = ranked
    obs = adata.obs
    in_group = obs.patient == "patient_0"
    assert all_target == list(obs_names[in_group & (obs.condition == "stimulated")])
    assert all_source == list(obs_names[in_group & (obs.condition == "control")])
    assert (big_target, big_source) == (all_target, all_source)  # small groups: every cell
    for target, source in seeded:
        assert len(target) == len(source) == 20
        assert set(target) <= set(all_target)
        assert set(source) <= set(all_source)
    assert seeded[0] == seeded[1]  # the seed fixes the subset
    assert seeded[0] != seeded[2]
    # the change and baseline still read every cell
    for group in subsets:
        np.testing.assert_array_equal(group.real_change, full.real_change)
        assert group.deg_mask.sum() == 10


def test_margin_verdicts_call_only_what_the_refits_agree_on():
    margins = pd.DataFrame(
        {
            "group": ["clear", "clear", "bad", "bad", "flip", "flip"],
            "margin": [0.30, 0.34, -0.25, -0.31, 0.05, -0.04],
        }
    )
    table = margin_verdicts(margins)
    assert table.loc["clear", "verdict"] == "the model beats the shared response here"
    assert table.loc["bad", "verdict"] == "does not"
    # refits that disagree on the sign: no verdict, a reliability near one half
    assert table.loc["flip", "verdict"] == "undecided"
    assert 0.3 < table.loc["flip", "reliability"] < 0.7
    assert table.loc["clear", "reliability"] > 0.95
    assert table.loc["bad", "reliability"] < 0.05
    # pooled spread: (0.02² + 0.03² + 0.045²) · 2 / 3 degrees of freedom
    sd = np.sqrt((0.02**2 + 0.03**2 + 0.045**2) * 2 / 3)
    np.testing.assert_allclose(table.margin_se, sd / np.sqrt(2))
    # two refits that agree to the digit do not make a verdict certain: the spread's floor
    tied = margin_verdicts(pd.DataFrame({"group": ["a", "a"], "margin": [0.01, 0.01]}))
    assert tied.loc["a", "margin_se"] == pytest.approx(0.02 / np.sqrt(2))
    assert tied.loc["a", "verdict"] == "undecided"


def test_transfer_check_prints_only_its_progress_bar(fitted, capfd):
    model, _ = fitted
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sctrvae.tl.transfer_check(
            model, "patient", "control", "stimulated", max_steps=5, n_degs=10, key_added=None
        )
    out, err = capfd.readouterr()
    # no deprecation of Lightning's or torch's internals, once per refit
    internal = [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert not [w for w in internal if "lightning" in w.filename or "torch" in w.filename]
    printed = out + err
    for banner in ("GPU available", "Tip", "Loading", "Trainer.fit", "appears to be a copy"):
        assert banner not in printed
    assert "transfer check" in printed  # the caller's progress bar


def test_transfer_check_refits_like_the_model_without_the_groups_target(fitted, monkeypatch):
    model, _ = fitted
    refits = []
    refit_like = _transfer_check.refit_like

    def spy(*args, **kwargs):
        refits.append(refit_like(*args, **kwargs))
        return refits[-1]

    monkeypatch.setattr(_transfer_check, "refit_like", spy)
    starts = []
    start_decoder = sctrvae.TRVAEModel.start_decoder

    def start_spy(self, indices=None):
        starts.append(indices)
        return start_decoder(self, indices)

    monkeypatch.setattr(sctrvae.TRVAEModel, "start_decoder", start_spy)
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
    assert len(refits) == 4  # one group, held out once per shuffle
    assert set(table.group) == {"patient_0"}
    obs = model.adata.obs
    is_held_out = ((obs.patient == "patient_0") & (obs.condition == "stimulated")).to_numpy()
    for refit in refits:
        assert refit.init_params_ == model.init_params_
        # the refit shares the model's count matrix (no copy) and trains on the other cells
        assert refit.adata.X is model.adata.X
        assert refit.adata is not model.adata
        splitter = refit.trainer.datamodule
        train, validation, test = splitter.train_idx, splitter.val_idx, splitter.test_idx
        np.testing.assert_array_equal(train, np.flatnonzero(~is_held_out))
        assert len(validation) == 0
        np.testing.assert_array_equal(test, np.flatnonzero(is_held_out))
        # the whole budget ran: the epochs are counted on the training cells only
        assert refit.trainer.global_step == 5
    # the decoder started from the training cells' profiles, not the held-out ones'
    restarts = [i for i in starts if i is not None]
    assert len(restarts) == 4
    for indices in restarts:
        np.testing.assert_array_equal(indices, np.flatnonzero(~is_held_out))
    start = model.adata[~is_held_out].copy()
    sctrvae.TRVAEModel.setup_anndata(start, condition_key="condition")
    init = refit.init_params_["non_kwargs"]
    expected = sctrvae.TRVAEModel(start, **init).module.mean_head.bias.detach().numpy()
    full = model.adata.copy()
    sctrvae.TRVAEModel.setup_anndata(full, condition_key="condition")
    fresh = sctrvae.TRVAEModel(full, **init)
    everything = fresh.module.mean_head.bias.detach().numpy().copy()
    fresh.start_decoder(np.flatnonzero(~is_held_out))
    np.testing.assert_allclose(fresh.module.mean_head.bias.detach().numpy(), expected, rtol=1e-6)
    assert not np.allclose(everything, expected, rtol=1e-6)
    # the model's own registration is untouched
    assert "_scvi_manager_uuid" in model.adata.uns
    assert model.get_latent_representation().shape == (model.adata.n_obs, 4)


def test_transfer_check_refits_share_two_budgets(fitted, monkeypatch):
    model, _ = fitted
    steps = []
    refit_like = _transfer_check.refit_like

    def spy(*args, **kwargs):
        steps.append(kwargs["max_steps"])
        # a refit runs its whole share: every cell trains, nothing stops it early
        assert kwargs["train_size"] == 1.0
        assert kwargs["early_stopping"] is False
        return refit_like(*args, **{**kwargs, "max_steps": 2})

    monkeypatch.setattr(_transfer_check, "refit_like", spy)
    sctrvae.tl.transfer_check(
        model, "patient", "control", "stimulated", n_degs=10, progress=False, key_added=None
    )
    # a small data set trains the default budget's floor of 420 steps: 2 × 420 / 8 refits
    assert steps == [105] * 8


def test_transfer_check_rejects_groups_without_both_conditions(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="lack cells"):
        sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", groups=[HELD_OUT])


def test_transfer_check_plot(check):
    ax = sctrvae.pl.transfer_check(check)
    assert len(ax.patches) == 9  # 3 groups × 3 methods
    assert len(ax.texts) == 3
    per_group = check.groupby("group", sort=False).first()
    half = student_t.ppf(0.95, 9) * per_group.margin_se  # 3 groups × (4 − 1) degrees of freedom
    short = {"the model beats the shared response here": "beats"}
    for text, (g, row) in zip(ax.texts, per_group.iterrows(), strict=True):
        verdict = short.get(row.verdict, row.verdict)
        assert text.get_text() == f"{verdict}\n{row.margin:+.2f} ± {half[g]:.2f}"
    # the margin's spread drawn on the model's bars
    (bars,) = [c for c in ax.collections if c.get_segments()]
    lengths = [seg[1][1] - seg[0][1] for seg in bars.get_segments()]
    np.testing.assert_allclose(lengths, 2 * half.to_numpy(), rtol=1e-6)
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


def _coverage(model, data, source):
    train = model.adata
    donors = (train.obs.condition == "control").to_numpy() & (
        train.obs.patient != HELD_OUT
    ).to_numpy()
    return sctrvae.tl.donor_coverage(
        model.get_latent_representation(data, indices=np.flatnonzero(source)),
        model.get_latent_representation(train, indices=np.flatnonzero(donors)),
        train.obs.patient.astype(str).to_numpy()[donors],
    )


def _table_says(check, **columns):
    """The check's table with these columns, without the per-refit changes: the hedge then
    reads the table's reliability instead of recomputing it against its fallback."""
    table = check.assign(**columns)
    table.attrs = {}
    return table


def test_hedge_trusts_lenders_against_the_response_it_falls_back_to(fitted, check):
    model, data, source = _predict(fitted)
    coverage = _coverage(model, data, source)
    changes = check.attrs["changes"]
    for shared in ("median_shift", "mean_shift"):
        sctrvae.tl.hedge(model, data, check, "patient", "pred", shared=shared, key_added=shared)
        record = data.uns[shared]
        expected = margin_verdicts(refit_margins(changes, (shared,)))["reliability"]
        assert record["reliability"] == pytest.approx(expected.to_dict())
        a = coverage * (1.0 - expected.reindex(coverage.index))
        a = a / max(1.0, a.sum())
        assert record["weights"][HELD_OUT] == pytest.approx(1.0 - a.sum())
    # the check's own verdicts are against the better of the two baselines in each refit
    per_group = check.groupby("group", sort=False).first()
    best = margin_verdicts(refit_margins(changes))
    np.testing.assert_allclose(per_group.reliability, best.reliability.reindex(per_group.index))


def test_hedge_with_untrusted_look_alikes_returns_the_shared_response(fitted, check):
    model, data, source = _predict(fitted)
    sctrvae.tl.hedge(model, data, _table_says(check, reliability=0.0), "patient", "pred")
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


def test_hedge_sets_aside_untested_lending_and_widens_by_it(fitted, check):
    model, data, source = _predict(fitted)
    # patient_2 is patient_3's look-alike (simulate_patients' pair): it covers it, the others not
    coverage = _coverage(model, data, source)
    assert coverage["patient_2"] > 0.5
    assert coverage.drop("patient_2").max() < 0.2
    # the check tested no lending (lent 0): by the lending record, even reliable look-alikes
    # are not trusted to lend
    untested = check.assign(reliability=1.0, lent=0.0)
    sctrvae.tl.hedge(model, data, untested, "patient", "pred", untested="record")
    record = data.uns["pred_hedged"]
    a = coverage / max(1.0, coverage.sum())
    w = 1.0 - a.sum()
    assert record["weights"][HELD_OUT] == pytest.approx(w)
    assert record["lending"].loc[HELD_OUT].to_dict() == pytest.approx(a.to_dict())
    _, changes = sctrvae.tl.group_changes(
        model.adata, "patient", "condition", "control", "stimulated"
    )
    shared = changes.median(axis=0).to_numpy()
    model_change = _changes(data, source, "pred")
    np.testing.assert_allclose(
        record["change"].loc[HELD_OUT], shared + w * (model_change - shared), atol=1e-5
    )
    # the interval spans, on each side, what the hedge set aside
    others = [c for g, c in check.attrs["changes"].items() if g != HELD_OUT]
    calibrated = sctrvae.tl.interval_se(
        [np.subtract(c["real"], c["model"]) for c in others],
        [c["degs"] for c in others],
        [c["real"] for c in others],
    )
    set_aside = (1 - w) * np.abs(model_change - shared)
    np.testing.assert_allclose(
        1.645 * record["change_se"].loc[HELD_OUT], 1.645 * calibrated + set_aside, rtol=1e-3
    )


def test_hedge_trusts_an_untested_look_alike_by_its_reliability(fitted, check):
    model, data, source = _predict(fitted)
    coverage = _coverage(model, data, source)
    # lending untested; the look-alike's own response was predicted (reliability 0.9)
    untested = _table_says(check, reliability=0.9, lent=0.0)
    sctrvae.tl.hedge(model, data, untested, "patient", "pred")
    a = coverage * (1 - 0.9)
    a = a / max(1.0, a.sum())
    kept = data.uns["pred_hedged"]["weights"][HELD_OUT]
    assert kept == pytest.approx(1.0 - a.sum())
    # by the lending record it is trusted only as far as lending was seen to work: not at all
    sctrvae.tl.hedge(
        model, data, untested, "patient", "pred", untested="record", key_added="by_record"
    )
    assert data.uns["by_record"]["weights"][HELD_OUT] < 0.5 < kept


def test_hedge_with_trusted_look_alikes_keeps_the_model(fitted, check):
    model, data, source = _predict(fitted)
    sctrvae.tl.hedge(
        model,
        data,
        _table_says(check, reliability=1.0, lent=1.0),
        "patient",
        "pred",
        key_added="kept",
    )
    assert data.uns["kept"]["weights"][HELD_OUT] == pytest.approx(1.0)
    np.testing.assert_allclose(data.layers["kept"][source], data.layers["pred"][source], atol=1e-5)


def test_lending_record_trusts_only_tested_lending():
    coverage = pd.Series({"look_alike": 0.8, "apart": 0.1, "far": 0.0})
    reliable = pd.Series(1.0, index=coverage.index)
    # lending tested everywhere and the look-alike beat the shared response: nothing rests on
    # untrusted lending
    tested = pd.Series(1.0, index=coverage.index)
    assert sctrvae.tl.lending_weights(coverage, reliable, tested, "record").sum() == 0.0
    # the look-alike failed where its lending was tested: its cover is lost
    failed = reliable.copy()
    failed["look_alike"] = 0.0
    weights = sctrvae.tl.lending_weights(coverage, failed, tested, "record")
    # lending record L = 2 / (3 + 1): the other groups' lending succeeded
    np.testing.assert_allclose(weights, [0.8, 0.0, 0.0])
    # nothing tested lending: a reliable look-alike is trusted only as far as the record (0)
    untested = pd.Series(0.0, index=coverage.index)
    np.testing.assert_allclose(
        sctrvae.tl.lending_weights(coverage, reliable, untested, "record"), [0.8, 0.1, 0.0]
    )
    # untested look-alike, lending seen to work elsewhere: trusted as far as that record
    partly = pd.Series({"look_alike": 0.0, "apart": 1.0, "far": 1.0})
    record = 2.0 / 3.0
    np.testing.assert_allclose(
        sctrvae.tl.lending_weights(coverage, reliable, partly, "record"),
        [0.8 * (1 - record), 0.0, 0.0],
    )
    # covers summing above 1 are scaled to 1
    crowded = pd.Series({"look_alike": 0.9, "apart": 0.9, "far": 0.2})
    assert sctrvae.tl.lending_weights(crowded, reliable, untested, "record").sum() == pytest.approx(
        1.0
    )


def test_untested_lenders_can_be_trusted_by_their_own_reliability():
    coverage = pd.Series({"look_alike": 0.8, "apart": 0.1, "far": 0.0})
    reliability = pd.Series({"look_alike": 0.25, "apart": 1.0, "far": 0.5})
    untested = pd.Series(0.0, index=coverage.index)

    def weights(lent, rule):
        return sctrvae.tl.lending_weights(coverage, reliability, lent, untested=rule)

    # nothing tested: the record is 0, so "record" distrusts every lender alike
    np.testing.assert_allclose(weights(untested, "record"), [0.8, 0.1, 0.0])
    # "reliability" (the default): each lender as far as the check predicted its own response
    np.testing.assert_allclose(weights(untested, "reliability"), [0.8 * 0.75, 0.0, 0.0])
    np.testing.assert_allclose(
        sctrvae.tl.lending_weights(coverage, reliability, untested),
        weights(untested, "reliability"),
    )
    # tested lending reads the reliability under either rule
    tested = pd.Series(1.0, index=coverage.index)
    np.testing.assert_allclose(weights(tested, "record"), weights(tested, "reliability"))
    with pytest.raises(ValueError, match="untested must be"):
        weights(untested, "always")


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


def test_interval_se_covers_the_worst_checked_group():
    rng = np.random.default_rng(0)
    n_genes = 400
    degs = [rng.choice(n_genes, 40, replace=False) for _ in range(4)]
    alike = [np.zeros(n_genes)] * 4  # the groups respond alike: no between-group spread
    residuals = []
    for g in range(4):
        errors = rng.normal(0.0, 0.1, (2, n_genes))
        if g == 3:  # a group the model got wrong on its own DEGs
            errors[:, degs[g]] = rng.normal(0.0, 1.0, (2, 40))
        residuals.append(errors)
    se = sctrvae.tl.interval_se(residuals, degs, alike)
    for g in range(4):
        inside = np.abs(residuals[g]) <= 1.645 * se
        assert inside[:, degs[g]].mean() >= 0.88
        assert inside.mean() >= 0.88
    # the per-gene scale alone, fitted to the well-predicted majority, misses that group
    pooled = sctrvae.tl.change_se(np.vstack(residuals))
    assert (np.abs(residuals[3][:, degs[3]]) <= 1.645 * pooled[degs[3]]).mean() < 0.8
    # intervals stay narrow where every checked group was predicted well
    calm = sctrvae.tl.interval_se(residuals[:3], degs[:3], alike[:3])
    assert np.median(calm) < 0.5 * np.median(se)


def test_interval_se_covers_each_refit_not_their_average():
    rng = np.random.default_rng(1)
    n_genes = 400
    degs = [rng.choice(n_genes, 40, replace=False) for _ in range(3)]
    alike = [np.zeros(n_genes)] * 3
    residuals = [rng.normal(0.0, 0.1, (4, n_genes)) for _ in range(3)]
    # one of group 0's four refits erred on its DEGs: a new group's single model may too
    residuals[0][1, degs[0]] = rng.normal(0.0, 0.6, 40)
    se = sctrvae.tl.interval_se(residuals, degs, alike)
    assert (np.abs(residuals[0][1, degs[0]]) <= 1.645 * se[degs[0]]).mean() >= 0.9


def test_interval_se_adds_the_spread_of_the_groups_responses():
    rng = np.random.default_rng(2)
    n_genes = 300
    degs = [rng.choice(n_genes, 30, replace=False) for _ in range(4)]
    residuals = [rng.normal(0.0, 0.1, (2, n_genes)) for _ in range(4)]
    alike = [np.zeros(n_genes)] * 4
    # the checked groups respond apart on the first 50 genes: a new group may too
    responses = [np.zeros(n_genes) for _ in range(4)]
    for g, r in enumerate(responses):
        r[:50] = [-1.5, -0.5, 0.5, 1.5][g]
    measured = sctrvae.tl.interval_se(residuals, degs, alike)
    se = sctrvae.tl.interval_se(residuals, degs, responses)
    spread = np.std([-1.5, -0.5, 0.5, 1.5], ddof=1)
    np.testing.assert_allclose(se[:50], np.sqrt(measured[:50] ** 2 + spread**2))
    np.testing.assert_allclose(se[50:], measured[50:])


def test_differential_response_of_an_unmeasured_group_follows_the_check(fitted, check):
    model, _ = fitted
    others = [c for g, c in check.attrs["changes"].items() if g != HELD_OUT]
    expected = sctrvae.tl.interval_se(
        [np.subtract(c["real"], c["model"]) for c in others],
        [c["degs"] for c in others],
        [c["real"] for c in others],
    ) / np.log(2.0)
    scvi.settings.seed = 0
    plain = model.differential_response(None, "patient", "control", "stimulated", n_samples=4)
    scvi.settings.seed = 0
    checked = model.differential_response(
        None, "patient", "control", "stimulated", n_samples=4, check=check
    )
    rows = checked.group == HELD_OUT
    # the same draws: the variance over them plus the check's calibrated transfer error
    draws_var = checked[rows].lfc_std.to_numpy() ** 2 - expected**2
    assert (draws_var >= -1e-9).all()
    np.testing.assert_allclose(
        checked[rows].lfc_mean.to_numpy(), plain[plain.group == HELD_OUT].lfc_mean.to_numpy()
    )
    assert not np.allclose(checked[rows].lfc_std, plain[plain.group == HELD_OUT].lfc_std)
    # measured groups keep the model's misfit
    np.testing.assert_allclose(checked[~rows].lfc_std, plain[plain.group != HELD_OUT].lfc_std)
    bad = check.copy()
    bad.attrs = {"changes": {"patient_0": {"real": [0.0], "model": [[0.0]], "degs": [0]}}}
    with pytest.raises(ValueError, match="same genes"):
        model.differential_response(None, "patient", "control", "stimulated", check=bad)


def test_group_changes_sum_sparse_counts_in_blocks_without_a_dense_copy(monkeypatch):
    """The per-group means equal the dense computation; no whole-matrix intermediate is made."""
    import tracemalloc

    import scipy.sparse as sp

    from sctrvae import _utils

    adata = sctrvae.datasets.simulate_patients(seed=0)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    lognorm = log_normalized(adata)
    patient = adata.obs["patient"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    monkeypatch.setattr(_utils, "ROW_BLOCK_ENTRIES", adata.n_vars * 50)
    tracemalloc.start()
    baseline, change = sctrvae.tl.group_changes(
        adata, "patient", "condition", "control", "stimulated"
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for g in baseline.index:
        source = lognorm[(patient == g) & (condition == "control")].mean(0)
        target = lognorm[(patient == g) & (condition == "stimulated")].mean(0)
        np.testing.assert_allclose(baseline.loc[g], source, atol=1e-10)
        np.testing.assert_allclose(change.loc[g], target - source, atol=1e-10)
    assert peak < lognorm.nbytes / 4, (peak, lognorm.nbytes)


def test_the_checks_predictions_draw_what_a_group_mean_needs(fitted, monkeypatch):
    model, _ = fitted
    seen = []
    predicted_change = _transfer_check.predicted_change

    def spy(refit, adata, group, target, readout, n_samples, cells=None):
        seen.append((group.source_cells.size, n_samples))
        return predicted_change(refit, adata, group, target, readout, n_samples, cells)

    monkeypatch.setattr(_transfer_check, "predicted_change", spy)
    run = {"n_degs": 10, "max_steps": 2, "progress": False, "key_added": None}
    sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", **run)
    assert seen
    assert all(draws == 5 for _, draws in seen)  # small groups: every draw
    seen.clear()
    monkeypatch.setattr(_transfer_check, "CHECK_GROUP_DRAWS", 100)
    sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", **run)
    assert all(draws == max(1, -(-100 // cells)) for cells, draws in seen)
    assert {draws for _, draws in seen} < {1, 2}
    seen.clear()
    sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", n_samples=3, **run)
    assert {draws for _, draws in seen} == {3}  # the caller's number wins


def test_written_rows_are_the_rows_predict_filled(monkeypatch):
    from sctrvae import _utils

    layer = np.full((50, 4), np.nan, dtype=np.float32)
    layer[[3, 17, 18, 49]] = 1.0
    layer[17, :3] = np.nan  # one value is enough
    monkeypatch.setattr(_utils, "ROW_BLOCK_ENTRIES", 4 * 7)  # blocks of 7 rows
    np.testing.assert_array_equal(_utils.written_rows(layer), [3, 17, 18, 49])
    assert _utils.written_rows(layer[:0]).size == 0


def test_the_check_predicts_a_subset_of_a_large_group_and_keeps_no_copy(fitted, monkeypatch):
    """At most CHECK_MAX_CELLS source cells per group; no predicted AnnData stays registered."""
    model, _ = fitted
    predicted = []
    predicted_change = _transfer_check.predicted_change

    def spy(refit, adata, group, target, readout, n_samples, cells=None):
        predicted.append((group, cells))
        return predicted_change(refit, adata, group, target, readout, n_samples, cells)

    monkeypatch.setattr(_transfer_check, "predicted_change", spy)
    covers = []
    donor_coverage = _transfer_check.donor_coverage

    def cover_spy(z, donors_z, donor_groups, *args):
        covers.append((len(z), pd.Series(donor_groups).value_counts()))
        return donor_coverage(z, donors_z, donor_groups, *args)

    monkeypatch.setattr(_transfer_check, "donor_coverage", cover_spy)
    ranked = []
    top_degs = _held_out.top_degs

    def degs_spy(real_target, real_source, n_genes):
        ranked.append((real_target.n_obs, list(real_source.obs_names)))
        return top_degs(real_target, real_source, n_genes)

    monkeypatch.setattr(_held_out, "top_degs", degs_spy)
    validated = []
    check_expression = _input_mixin.check_expression

    def validation_spy(matrix, *args):
        validated.append(matrix.shape[0])
        return check_expression(matrix, *args)

    monkeypatch.setattr(_input_mixin, "check_expression", validation_spy)
    monkeypatch.setattr(_transfer_check, "CHECK_MAX_CELLS", 30)
    store = sctrvae.TRVAEModel._setup_adata_manager_store
    before = len(store)
    run = {"n_degs": 10, "max_steps": 2, "progress": False, "key_added": None}
    table = sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", **run)
    assert np.isfinite(table.margin).all()
    for group, cells in predicted:
        assert cells.size == 30
        assert np.unique(cells).size == 30
        assert np.isin(cells, group.source_cells).all()
    # the same subset in every repeat: the shuffles of the folds do not move it
    by_group = {}
    for group, cells in predicted:
        by_group.setdefault(group.name, []).append(cells)
    assert all(len(c) == 4 for c in by_group.values())
    assert all(np.array_equal(c[0], other) for c in by_group.values() for other in c[1:])
    # the cover of a held-out group is read on the same subset, among subsets of the lenders
    assert len(covers) == len(predicted)
    for queries, lenders in covers:
        assert queries == 30
        assert (lenders == 30).all()
        assert 1 <= len(lenders) <= 2
    # one registration for the refits' shared AnnData; none per prediction
    assert len(store) - before <= 1
    # each checked group's DEGs ranked once, on at most CHECK_MAX_CELLS cells per condition:
    # its source side on the very cells the check predicts
    assert len(ranked) == len(by_group)
    assert all(n_target == 30 for n_target, _ in ranked)
    predicted_names = sorted(list(model.adata.obs_names[c[0]]) for c in by_group.values())
    assert sorted(source for _, source in ranked) == predicted_names
    # predictions and latents read the refits' own AnnData: the whole matrix is not
    # validated again at each of them (only each predicted subset is)
    assert validated
    assert max(validated) == 30
