"""training_settings(): trVAE's training defaults as a pure function, without training."""

import copy
import inspect
import math

import pytest

from sctrvae import TRVAEModel
from sctrvae._constants import DEFAULT_LR, GENE_LR_SCALE, MAX_STEPS, MIN_STEPS
from sctrvae.train._training_settings import step_budget, steps_per_epoch, training_settings

#: train()'s own defaults, read from its signature
TRAIN_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(TRVAEModel.train).parameters.items()
    if name in inspect.signature(training_settings).parameters
}
# Kang's size: ceil(0.9 * 1975) = 1778 training cells, 14 steps of 128 per epoch
KANG = {**TRAIN_DEFAULTS, "n_obs": 1975, "trainer_kwargs": None}


def test_defaults_are_sized_in_optimiser_steps():
    run = training_settings(**KANG)
    assert run.trainer_kwargs["max_steps"] == MIN_STEPS  # a small dataset: the optimiser's floor
    assert run.max_epochs == math.ceil(MIN_STEPS / 14)
    assert run.plan_kwargs == {
        "lr": DEFAULT_LR,
        "gene_lr_scale": GENE_LR_SCALE,
        "lr_schedule": "cosine",
        "lr_warmup_steps": math.ceil(0.05 * MIN_STEPS),
        "n_steps_kl_warmup": 105,  # a quarter of the 420 steps (at most 150)
        "n_epochs_kl_warmup": None,
    }
    assert run.early_stopping
    assert run.restore_best
    assert not run.no_validation
    assert run.trainer_kwargs["early_stopping_patience"] == 11  # 150 steps
    assert run.trainer_kwargs["early_stopping_warmup_epochs"] == 8  # the KL warm-up: 105 steps
    assert run.trainer_kwargs["early_stopping_monitor"] == "validation_loss"
    assert run.datasplitter_kwargs == {"min_cells_per_condition": 8}


@pytest.mark.parametrize(
    ("n_obs", "epoch_steps", "budget"),
    [
        (1_556, 11, MIN_STEPS),  # 1.5k x 1.3k
        (1_975, 14, MIN_STEPS),  # Kang
        (5_000, 36, MIN_STEPS),  # 5k x 300
        (20_000, 141, 705),  # 5 epochs
        (40_000, 282, 1_410),  # 5 epochs
        (200_000, 1_407, MAX_STEPS),  # 5 epochs would be 7,035 steps
        (1_000_000, 7_032, 7_032),  # one epoch, every cell seen once
    ],
)
def test_the_budget_is_bounded_epochs(n_obs, epoch_steps, budget):
    assert steps_per_epoch(n_obs, None, 128) == epoch_steps
    assert step_budget(epoch_steps) == budget
    assert training_settings(**{**KANG, "n_obs": n_obs}).trainer_kwargs["max_steps"] == budget


def test_between_the_bounds_the_budget_is_five_epochs():
    epoch_steps = MIN_STEPS // 5 + 100
    assert step_budget(epoch_steps) == 5 * epoch_steps < MAX_STEPS


def test_a_plateau_schedule_replaces_the_cosine():
    run = training_settings(**{**KANG, "plan_kwargs": {"reduce_lr_on_plateau": True}})
    assert "lr_schedule" not in run.plan_kwargs
    assert "lr_warmup_steps" not in run.plan_kwargs
    run = training_settings(**{**KANG, "plan_kwargs": {"lr_schedule": None}})
    assert run.plan_kwargs["lr_schedule"] is None
    assert "lr_warmup_steps" not in run.plan_kwargs


def test_the_users_values_win_and_are_not_modified():
    plan = {"lr": 1e-4, "n_epochs_kl_warmup": 3}
    trainer = {"max_steps": 50, "early_stopping_patience": 7, "gradient_clip_val": 1.0}
    splitter = {"min_cells_per_condition": 2, "device_resident": True}
    given = copy.deepcopy((plan, trainer, splitter))
    run = training_settings(
        **{**KANG, "plan_kwargs": plan, "trainer_kwargs": trainer, "datasplitter_kwargs": splitter}
    )
    assert (plan, trainer, splitter) == given
    assert run.plan_kwargs == {
        "lr": 1e-4,
        "gene_lr_scale": GENE_LR_SCALE,
        "lr_schedule": "cosine",
        "lr_warmup_steps": 3,  # 5 % of the 50 steps
        "n_epochs_kl_warmup": 3,
    }
    assert run.trainer_kwargs["early_stopping_patience"] == 7
    assert run.trainer_kwargs["early_stopping_warmup_epochs"] == 3
    assert run.trainer_kwargs["gradient_clip_val"] == 1.0
    assert run.max_epochs == 4
    assert run.datasplitter_kwargs == splitter


def test_warmup_never_outlasts_a_short_run():
    run = training_settings(**{**KANG, "max_epochs": 2})
    assert "max_steps" not in run.trainer_kwargs
    assert run.plan_kwargs["n_steps_kl_warmup"] == 7  # a quarter of 2 epochs of 14 steps
    assert run.plan_kwargs["lr_warmup_steps"] == 2
    run = training_settings(**{**KANG, "trainer_kwargs": {"max_steps": 20}})
    assert run.plan_kwargs["n_steps_kl_warmup"] == 5


def test_one_epoch_when_the_data_outgrow_the_step_budget():
    run = training_settings(**{**KANG, "n_obs": 1_000_000})
    assert run.trainer_kwargs["max_steps"] == 7032  # one epoch of 900,000 training cells
    assert run.max_epochs == 1
    assert run.trainer_kwargs["early_stopping_patience"] == 2  # at least two epochs


def test_a_run_shorter_than_an_epoch_has_no_early_stopping():
    # Kang: 14 steps per epoch; 10 steps end before the first validation epoch
    run = training_settings(**{**KANG, "trainer_kwargs": {"max_steps": 10}})
    assert not run.early_stopping
    assert not run.restore_best
    assert "early_stopping_monitor" not in run.trainer_kwargs
    assert training_settings(**{**KANG, "trainer_kwargs": {"max_steps": 14}}).early_stopping


@pytest.mark.parametrize(
    "split", [{"train_size": 1.0}, {"validation_size": 0.0}, {"train_size": 0.9999}]
)
def test_without_validation_cells_there_is_no_early_stopping(split):
    run = training_settings(**{**KANG, "n_obs": 100, "batch_size": 32, **split})
    assert run.no_validation
    assert not run.early_stopping
    assert not run.restore_best
    assert "early_stopping_monitor" not in run.trainer_kwargs


def test_under_ddp_our_sampler_shards_and_nothing_restores_weights():
    run = training_settings(
        **{**KANG, "trainer_kwargs": {"strategy": "ddp_find_unused_parameters_true"}}
    )
    assert run.trainer_kwargs["use_distributed_sampler"] is False
    assert not run.restore_best
    assert not run.no_validation
    assert "early_stopping_patience" not in run.trainer_kwargs
    assert "use_distributed_sampler" not in training_settings(**KANG).trainer_kwargs


def test_cells_named_for_training_by_index_lists_size_the_epoch():
    """With ``external_indexing`` the epoch is that of its training cells, not of every cell."""
    import numpy as np

    split = [np.arange(256), np.array([], dtype=int), np.arange(256, 1975)]
    run = training_settings(**{**KANG, "datasplitter_kwargs": {"external_indexing": split}})
    assert run.trainer_kwargs["max_steps"] == step_budget(2)  # 256 cells: 2 steps of 128
    assert run.max_epochs == math.ceil(step_budget(2) / 2)
    assert run.early_stopping is False  # no validation cell
