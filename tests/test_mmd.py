import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sctrvae import mmd, pairwise_condition_mmd
from sctrvae._mmd import AUTO_BANDWIDTH_MULTIPLIERS

SIGMAS = (0.5, 1.0, 4.0)


def brute_force_mmd(x, y, sigmas):
    def k(a, b):
        return np.mean([np.exp(-np.sum((a - b) ** 2) / (2 * s)) for s in sigmas])

    kxx = np.mean([k(a, b) for a in x for b in x])
    kyy = np.mean([k(a, b) for a in y for b in y])
    kxy = np.mean([k(a, b) for a in x for b in y])
    return kxx + kyy - 2 * kxy


def test_matches_brute_force_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, 1.0, size=(5, 3))
    got = mmd(torch.tensor(x), torch.tensor(y), SIGMAS).item()
    assert got == pytest.approx(brute_force_mmd(x, y, SIGMAS), rel=1e-10)


def test_auto_bandwidths_use_the_median_heuristic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(6, 4))
    pooled = np.vstack([x, y])
    d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    off_diagonal = np.sort(d2[~np.eye(12, dtype=bool)])
    median = off_diagonal[(off_diagonal.size - 1) // 2]  # torch's lower median
    sigmas = [median / 2 * m for m in AUTO_BANDWIDTH_MULTIPLIERS]
    got = mmd(torch.tensor(x), torch.tensor(y), "auto").item()
    assert got == pytest.approx(brute_force_mmd(x, y, sigmas), rel=1e-8)


def test_auto_bandwidths_are_scale_invariant():
    rng = np.random.default_rng(2)
    x, y = torch.tensor(rng.normal(size=(8, 5))), torch.tensor(rng.normal(1, 1, size=(8, 5)))
    assert mmd(x, y).item() == pytest.approx(mmd(100 * x, 100 * y).item(), rel=1e-8)


def test_pairwise_is_the_mean_over_all_condition_pairs():
    rng = np.random.default_rng(3)
    groups = [rng.normal(i, 1.0, size=(5, 3)) for i in range(4)]
    y = torch.tensor(np.vstack(groups))
    codes = torch.repeat_interleave(torch.arange(4), 5)
    expected = np.mean(
        [
            brute_force_mmd(groups[i], groups[j], SIGMAS)
            for i, j in itertools.combinations(range(4), 2)
        ]
    )
    assert pairwise_condition_mmd(y, codes, SIGMAS).item() == pytest.approx(expected, rel=1e-10)


def test_conditions_with_fewer_than_two_cells_are_skipped_without_nan():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 3)), rng.normal(2, 1, size=(6, 3))
    lone = rng.normal(50, 1, size=(1, 3))
    y = torch.tensor(np.vstack([a, b, lone]), requires_grad=True)
    codes = torch.tensor([0] * 5 + [1] * 6 + [2])
    value = pairwise_condition_mmd(y, codes, SIGMAS)
    value.backward()
    assert value.item() == pytest.approx(brute_force_mmd(a, b, SIGMAS), rel=1e-10)
    assert torch.isfinite(y.grad).all()
    only_one = pairwise_condition_mmd(y[:6], torch.tensor([0] * 5 + [1]), SIGMAS)
    assert only_one.item() == 0.0


def test_identical_points_give_finite_gradients():
    y = torch.ones(6, 4, requires_grad=True)
    value = pairwise_condition_mmd(y, torch.tensor([0, 0, 0, 1, 1, 1]))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(y.grad).all()


def test_invalid_bandwidths_raise():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="positive"):
        mmd(x, x + 1, [1.0, -1.0])
    with pytest.raises(ValueError, match="auto"):
        mmd(x, x + 1, "median")


samples = arrays(np.float64, st.tuples(st.integers(2, 6), st.just(3)), elements=st.floats(-5, 5))


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_mmd_is_non_negative_symmetric_and_zero_on_identical_sets(x, y):
    tx, ty = torch.tensor(x), torch.tensor(y)
    for bandwidths in ("auto", SIGMAS):
        forward = mmd(tx, ty, bandwidths).item()
        assert forward >= 0.0
        assert forward == pytest.approx(mmd(ty, tx, bandwidths).item(), abs=1e-9)
        assert mmd(tx, tx.clone(), bandwidths).item() == pytest.approx(0.0, abs=1e-9)


wide = arrays(
    np.float32, st.tuples(st.integers(4, 10), st.just(3)), elements=st.floats(-1e6, 1e6, width=32)
)


@settings(max_examples=60, deadline=None)
@given(wide, st.randoms(use_true_random=False))
def test_mmd_is_finite_bounded_and_permutation_invariant(y, random):
    codes = torch.tensor([0, 1] * (y.shape[0] // 2) + [0] * (y.shape[0] % 2))
    ty = torch.tensor(y, requires_grad=True)
    value = pairwise_condition_mmd(ty, codes)
    value.backward()
    assert torch.isfinite(value)
    assert 0.0 <= value.item() <= 2.0 + 1e-6
    assert torch.isfinite(ty.grad).all()
    order = list(range(y.shape[0]))
    random.shuffle(order)
    shuffled = pairwise_condition_mmd(torch.tensor(y)[order], codes[order]).item()
    assert shuffled == pytest.approx(value.item(), abs=1e-5)
