"""condition_mixing: a kNN balanced accuracy of the condition within groups."""

import anndata as ad
import numpy as np
import pytest

import sctrvae
from sctrvae.metrics import condition_mixing


@pytest.fixture
def cells():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    condition = np.tile(["ctrl", "stim"], 300)
    groups = np.repeat(["a", "b", "c"], 200)
    x += 4 * (groups == "b")[:, None]  # groups apart from each other
    return x, condition, groups


def test_mixed_conditions_score_one_over_the_number_of_conditions(cells):
    x, condition, groups = cells
    assert condition_mixing(x, condition, groups) == pytest.approx(0.5, abs=0.06)


def test_separated_conditions_score_one(cells):
    x, condition, groups = cells
    x = x + 10 * (condition == "stim")[:, None]
    assert condition_mixing(x, condition, groups) == 1.0


def test_imbalanced_but_mixed_conditions_still_score_about_one_half():
    # 9:1 condition sizes: a plain majority vote would be right 90% of the time
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 4))
    condition = np.r_[np.zeros(900), np.ones(100)]
    assert condition_mixing(x, condition) == pytest.approx(0.5, abs=0.08)


def test_only_groups_with_two_conditions_count(cells):
    x, condition, groups = cells
    x = x + 10 * ((groups == "c") & (condition == "stim"))[:, None]  # group c separated
    assert condition_mixing(x, condition, groups) == pytest.approx((0.5 + 0.5 + 1) / 3, abs=0.05)
    # without its stimulated cells, group c has one condition and is skipped
    keep = (groups != "c") | (condition == "ctrl")
    assert condition_mixing(x[keep], condition[keep], groups[keep]) == pytest.approx(0.5, abs=0.06)
    assert np.isnan(condition_mixing(x[:10], condition[:10], n_neighbors=15))


def test_anndata_columns_and_obsm_give_the_array_result(cells):
    x, condition, groups = cells
    adata = ad.AnnData(np.zeros((600, 1)), obs={"cond": condition, "grp": groups}, obsm={"y": x})
    assert condition_mixing(adata, "cond", "grp", use_rep="y") == condition_mixing(
        x, condition, groups
    )
    with pytest.raises(ValueError, match="AnnData"):
        condition_mixing(x, "cond", "grp")


@pytest.mark.parametrize("labels_key", [None, "cell_type"])
def test_training_logs_the_mixing_of_the_validation_cells(sim, labels_key):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition", labels_key=labels_key)
    model = sctrvae.TRVAEModel(sim, n_hidden=32, n_latent=4)
    model.train(
        max_epochs=3,
        batch_size=64,
        train_size=0.6,  # enough validation cells of each (label, condition) for 15 neighbours
        early_stopping=False,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    logged = model.history["mixing_y_validation"]["mixing_y_validation"].to_numpy()
    assert logged.shape == (3,)
    cells = model.validation_indices
    groups = None if labels_key is None else sim.obs[labels_key].to_numpy()[cells]
    for rep in ("y", "z"):
        after = condition_mixing(
            model.get_latent_representation(indices=cells, representation=rep),
            sim.obs["condition"].to_numpy()[cells],
            groups,
        )
        last = model.history[f"mixing_{rep}_validation"].iloc[-1, 0]
        assert last == pytest.approx(after, abs=1e-6)


def test_mixing_logging_can_be_switched_off(sim):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = sctrvae.TRVAEModel(sim, n_hidden=32, n_latent=4)
    model.train(max_epochs=2, plan_kwargs={"log_mixing": False}, enable_progress_bar=False)
    assert "mixing_y_validation" not in model.history
    assert "mmd_validation" in model.history
