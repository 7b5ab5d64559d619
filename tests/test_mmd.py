import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sctrvae import mmd, pairwise_condition_mmd
from sctrvae.module._mmd import AUTO_BANDWIDTH_MULTIPLIERS

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


def reference_mmd(y, codes, bandwidths, min_cells=2):
    """The mean pairwise MMD² written out: skip small conditions, pool the rest for σ."""
    kept = [c for c in np.unique(codes) if (codes == c).sum() >= min_cells]
    if len(kept) < 2:
        return 0.0
    if bandwidths == "auto":
        pooled = y[np.isin(codes, kept)]
        d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
        off_diagonal = np.sort(d2[~np.eye(len(pooled), dtype=bool)])
        median = off_diagonal[(off_diagonal.size - 1) // 2]
        floor = max(
            np.finfo(np.float64).tiny ** 0.5, np.finfo(np.float64).eps * (pooled**2).sum(1).mean()
        )
        bandwidths = [max(median / 2, floor) * m for m in AUTO_BANDWIDTH_MULTIPLIERS]
    return np.mean(
        [
            max(brute_force_mmd(y[codes == a], y[codes == b], bandwidths), 0.0)
            for a, b in itertools.combinations(kept, 2)
        ]
    )


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 24),
    st.integers(2, 5),
    st.sampled_from(["auto", SIGMAS]),
    st.randoms(use_true_random=False),
)
def test_mmd_with_fixed_shapes_equals_the_written_out_definition(n, n_conditions, bw, random):
    # conditions with 0 or 1 cells occur often at these sizes
    rng = np.random.default_rng(random.randrange(2**32))
    y = rng.normal(0, rng.uniform(0.1, 10), (n, 3)) + rng.integers(0, 3, (n, 1))
    codes = rng.integers(0, n_conditions, n)
    got = pairwise_condition_mmd(
        torch.tensor(y), torch.tensor(codes), bw, n_conditions=n_conditions
    )
    assert got.item() == pytest.approx(reference_mmd(y, codes, bw), rel=1e-9, abs=1e-12)


def test_mmd_traces_without_graph_breaks():
    # a host-device synchronisation (`int(tensor)`, `.item()`) or a data-dependent shape breaks
    # the graph, which fullgraph=True turns into an error
    y = torch.randn(12, 4)
    codes = torch.tensor([0] * 5 + [1] * 6 + [2])
    labels = torch.tensor([0, 1] * 6)
    for mode in ("global", "label", "reweighted"):
        compiled = torch.compile(pairwise_condition_mmd, backend="eager", fullgraph=True)
        got = compiled(y, codes, n_conditions=3, labels=labels, n_labels=2, mode=mode)
        expected = pairwise_condition_mmd(
            y, codes, n_conditions=3, labels=labels, n_labels=2, mode=mode
        )
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_mmd_averages_within_label_blocks_and_ignores_one_condition_labels():
    rng = np.random.default_rng(5)
    blocks = {
        (lab, c): rng.normal(lab + c, 1.0, (4 + lab + c, 3)) for lab in (0, 1) for c in (0, 1)
    }
    only_one = rng.normal(20.0, 1.0, (7, 3))  # label 2: condition 0 only (a held-out group)
    y = np.vstack([*blocks.values(), only_one])
    labels = np.concatenate([np.full(len(v), k[0]) for k, v in blocks.items()] + [np.full(7, 2)])
    codes = np.concatenate([np.full(len(v), k[1]) for k, v in blocks.items()] + [np.zeros(7, int)])
    expected = np.mean(
        [brute_force_mmd(blocks[(lab, 0)], blocks[(lab, 1)], SIGMAS) for lab in (0, 1)]
    )
    for bw in (SIGMAS, "auto"):
        with_lone = pairwise_condition_mmd(
            torch.tensor(y), torch.tensor(codes), bw, labels=torch.tensor(labels), mode="label"
        ).item()
        n = len(y) - 7
        without = pairwise_condition_mmd(
            torch.tensor(y[:n]),
            torch.tensor(codes[:n]),
            bw,
            labels=torch.tensor(labels[:n]),
            n_labels=3,
            mode="label",
        ).item()
        assert with_lone == pytest.approx(without, rel=1e-12)
        if bw == SIGMAS:
            assert with_lone == pytest.approx(expected, rel=1e-10)
    # the global MMD does see the lone label
    global_with = pairwise_condition_mmd(torch.tensor(y), torch.tensor(codes), SIGMAS).item()
    global_without = pairwise_condition_mmd(torch.tensor(y[:n]), torch.tensor(codes[:n]), SIGMAS)
    assert abs(global_with - global_without.item()) > 1e-3


def test_reweighting_equalises_label_proportions():
    # the same cells per label in both conditions, in proportions 1:3 against 3:1
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, (3, 3)), rng.normal(3, 1, (3, 3))
    y = np.vstack([a, b, b, b, a, a, a, b])
    labels = np.repeat([0, 1, 1, 1, 0, 0, 0, 1], 3)
    codes = np.repeat([0, 0, 0, 0, 1, 1, 1, 1], 3)
    args = (torch.tensor(y), torch.tensor(codes))
    global_value = pairwise_condition_mmd(*args).item()
    reweighted = pairwise_condition_mmd(*args, labels=torch.tensor(labels), mode="reweighted")
    assert global_value > 0.05
    assert reweighted.item() == pytest.approx(0.0, abs=1e-12)


def test_reweighting_weights_labels_by_their_mean_proportion():
    # written out for two conditions: label weights = mean of the two conditions' proportions
    rng = np.random.default_rng(7)
    sizes = {(0, 0): 2, (1, 0): 6, (0, 1): 5, (1, 1): 3, (2, 1): 4}  # label 2: condition 1 only
    cells = {k: rng.normal(k[0] + 2 * k[1], 1.0, (n, 2)) for k, n in sizes.items()}
    y = np.vstack(list(cells.values()))
    labels = np.concatenate([np.full(n, k[0]) for k, n in sizes.items()])
    codes = np.concatenate([np.full(n, k[1]) for k, n in sizes.items()])
    proportion = {
        lab: np.mean([sizes[(lab, c)] / (sizes[(0, c)] + sizes[(1, c)]) for c in (0, 1)])
        for lab in (0, 1)
    }
    side = [np.vstack([cells[(lab, c)] for lab in (0, 1)]) for c in (0, 1)]
    weight = [
        np.concatenate(
            [np.full(sizes[(lab, c)], proportion[lab] / sizes[(lab, c)]) for lab in (0, 1)]
        )
        for c in (0, 1)
    ]

    def kernel_mean(p, q, wp, wq):
        d2 = ((p[:, None] - q[None]) ** 2).sum(-1)
        k = np.mean([np.exp(-d2 / (2 * s)) for s in SIGMAS], axis=0)
        return wp @ k @ wq

    expected = (
        kernel_mean(side[0], side[0], weight[0], weight[0])
        + kernel_mean(side[1], side[1], weight[1], weight[1])
        - 2 * kernel_mean(side[0], side[1], weight[0], weight[1])
    )
    got = pairwise_condition_mmd(
        torch.tensor(y), torch.tensor(codes), SIGMAS, labels=torch.tensor(labels), mode="reweighted"
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_label_modes_need_labels_and_a_known_mode():
    y, codes = torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="label of every cell"):
        pairwise_condition_mmd(y, codes, mode="label")
    with pytest.raises(ValueError, match="mode must be"):
        pairwise_condition_mmd(y, codes, mode="labels")
