"""condition_mixing: a kNN balanced accuracy of the condition within groups."""

import anndata as ad
import numpy as np
import pytest

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
