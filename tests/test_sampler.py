import numpy as np
import pytest

from sctrvae import ConditionBalancedSampler


def codes(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def test_every_batch_holds_every_condition_and_each_cell_is_used_once():
    conditions = codes([500, 300, 40])
    sampler = ConditionBalancedSampler(conditions, batch_size=64, min_cells_per_condition=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == int(np.ceil(840 / 64))
    for batch in batches:
        assert set(conditions[batch]) == {0, 1, 2}
        assert (np.bincount(conditions[batch], minlength=3) >= 2).all()
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(conditions.size))


def test_batches_mirror_the_condition_mix():
    conditions = codes([600, 200])
    for batch in ConditionBalancedSampler(conditions, batch_size=100, min_cells_per_condition=2):
        counts = np.bincount(conditions[batch])
        assert counts[0] == 75
        assert counts[1] == 25


def test_small_conditions_are_resampled_up_to_the_floor():
    conditions = codes([1000, 10])
    sampler = ConditionBalancedSampler(conditions, batch_size=100, min_cells_per_condition=8)
    for batch in sampler:
        assert (conditions[batch] == 1).sum() >= 8


def test_shuffles_change_between_epochs_and_follow_the_seed():
    conditions = codes([100, 100])
    first = ConditionBalancedSampler(conditions, batch_size=50, seed=3)
    second = ConditionBalancedSampler(conditions, batch_size=50, seed=3)
    epoch0, epoch1 = list(first), list(first)
    assert epoch0 != epoch1
    assert list(second) == epoch0
    fixed = ConditionBalancedSampler(conditions, batch_size=50, shuffle=False)
    assert list(fixed) == list(fixed)


def test_ddp_ranks_get_disjoint_balanced_shards_of_equal_length():
    conditions = codes([701, 333, 57])
    ranks = [
        ConditionBalancedSampler(conditions, batch_size=32, num_replicas=2, rank=r, seed=5)
        for r in range(2)
    ]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])
    cells = [set(np.concatenate(b)) for b in batches]
    assert cells[0].isdisjoint(cells[1])
    assert cells[0] | cells[1] == set(range(conditions.size))
    for rank_batches in batches:
        for batch in rank_batches:
            assert set(conditions[batch]) == {0, 1, 2}


def test_invalid_arguments():
    with pytest.raises(ValueError, match="empty"):
        ConditionBalancedSampler(np.array([]))
    with pytest.raises(ValueError, match="rank"):
        ConditionBalancedSampler(codes([5, 5]), num_replicas=2, rank=2)


def test_labels_deal_every_label_condition_pair_evenly_without_resampling_rare_pairs():
    conditions = codes([300, 300])
    labels = np.concatenate(
        [np.repeat([0, 1, 2], [250, 40, 10]), np.repeat([0, 1, 2], [50, 200, 50])]
    )
    sampler = ConditionBalancedSampler(
        conditions, batch_size=60, min_cells_per_condition=3, labels=labels
    )
    batches = list(sampler)
    assert len(batches) == 10
    for batch in batches:
        pairs = np.bincount(conditions[batch] * 3 + labels[batch], minlength=6)
        assert pairs.tolist() == [25, 4, 1, 5, 20, 5]
    # the rare pair (label 2, condition 0) is not resampled: every cell exactly once
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(600))


def test_a_small_condition_is_resampled_up_to_the_floor_keeping_its_label_mix():
    conditions = codes([1000, 20])
    labels = np.concatenate([np.repeat([0, 1], [500, 500]), np.repeat([0, 1], [15, 5])])
    sampler = ConditionBalancedSampler(
        conditions, batch_size=100, min_cells_per_condition=8, labels=labels, seed=1
    )
    small = []
    for batch in sampler:
        batch = np.asarray(batch)
        in_small = batch[conditions[batch] == 1]
        assert in_small.size >= 8
        small.append(in_small)
    small = np.concatenate(small)
    # 11 batches x 8 cells, in the condition's own 3 : 1 label mix
    assert np.bincount(labels[small]).tolist() == [66, 22]
    assert set(small) == set(range(1000, 1020))
