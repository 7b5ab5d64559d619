"""trVAE's training defaults: a pure function of the data's size and the user's arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scvi.model._utils import use_distributed_sampler

from .._constants import (
    BUDGET_EPOCHS,
    DEFAULT_LR,
    GENE_LR_SCALE,
    KL_WARMUP_STEPS,
    LR_SCHEDULE,
    LR_WARMUP_FRACTION,
    MAX_STEPS,
    MIN_STEPS,
    PATIENCE_STEPS,
)
from ..data._data_splitter import has_validation_cells, n_training_cells


@dataclass(frozen=True)
class TrainingSettings:
    """What ``train()`` hands scvi-tools' ``UnsupervisedTrainingMixin.train``.

    Attributes
    ----------
    max_epochs
        Epochs at most (with the default step budget, enough epochs to hold it).
    early_stopping
        Whether scvi-tools' early stopping runs (off under DDP and without validation cells).
    plan_kwargs, datasplitter_kwargs, trainer_kwargs
        Keyword arguments of the training plan, the data splitter and the trainer.
    restore_best
        Whether to restore the best epoch's weights at the end (with early stopping).
    no_validation
        Early stopping was asked for but there are no validation cells (``train`` warns).
    """

    max_epochs: int
    early_stopping: bool
    plan_kwargs: dict = field(default_factory=dict)
    datasplitter_kwargs: dict = field(default_factory=dict)
    trainer_kwargs: dict = field(default_factory=dict)
    restore_best: bool = False
    no_validation: bool = False


def steps_per_epoch(n_obs: int, train_size: float | None, batch_size: int) -> int:
    """Optimiser steps in one epoch of the training split (as scvi-tools' splitter sizes it)."""
    return max(1, math.ceil(n_training_cells(n_obs, train_size) / batch_size))


def step_budget(epoch_steps: int) -> int:
    """Default ``max_steps``: ``BUDGET_EPOCHS`` epochs within ``MIN_STEPS``–``MAX_STEPS``.

    Never less than one epoch, so that every cell is seen once.
    """
    bounded = min(MAX_STEPS, max(MIN_STEPS, BUDGET_EPOCHS * epoch_steps))
    return max(bounded, epoch_steps)


def training_settings(
    n_obs: int,
    *,
    batch_size: int,
    max_epochs: int | None,
    train_size: float | None,
    validation_size: float | None,
    early_stopping: bool,
    early_stopping_patience: int | None,
    min_cells_per_condition: int,
    plan_kwargs: dict | None,
    datasplitter_kwargs: dict | None,
    trainer_kwargs: dict | None,
) -> TrainingSettings:
    """The keyword arguments of one ``train()`` call, with trVAE's defaults filled in.

    The arguments are those of :meth:`~sctrvae.TRVAEModel.train`, whose signature holds their
    defaults (``trainer_kwargs`` is its ``**trainer_kwargs``); none is modified. A user's value
    always wins over a default.
    """
    plan_kwargs = {"lr": DEFAULT_LR, "gene_lr_scale": GENE_LR_SCALE, **(plan_kwargs or {})}
    # scvi-tools' plateau schedule, if asked for, replaces the default one
    if not plan_kwargs.get("reduce_lr_on_plateau"):
        plan_kwargs.setdefault("lr_schedule", LR_SCHEDULE)
    trainer_kwargs = dict(trainer_kwargs or {})
    datasplitter_kwargs = {
        "min_cells_per_condition": min_cells_per_condition,
        **(datasplitter_kwargs or {}),
    }
    external = datasplitter_kwargs.get("external_indexing")
    # cells named for training by index lists train, whatever ``train_size`` says
    epoch_steps = (
        steps_per_epoch(n_obs, train_size, batch_size)
        if external is None
        else steps_per_epoch(len(external[0]), 1.0, batch_size)
    )
    if max_epochs is None:
        trainer_kwargs.setdefault("max_steps", step_budget(epoch_steps))
        max_epochs = math.ceil(trainer_kwargs["max_steps"] / epoch_steps)
    total_steps = max_epochs * epoch_steps
    if trainer_kwargs.get("max_steps", -1) >= 0:
        total_steps = min(total_steps, trainer_kwargs["max_steps"])
    if plan_kwargs.get("lr_schedule"):
        plan_kwargs.setdefault("lr_warmup_steps", math.ceil(LR_WARMUP_FRACTION * total_steps))
    if "n_epochs_kl_warmup" not in plan_kwargs:
        kl_warmup = min(KL_WARMUP_STEPS, math.ceil(total_steps / 4))
        plan_kwargs.setdefault("n_steps_kl_warmup", kl_warmup)
        plan_kwargs["n_epochs_kl_warmup"] = None
    distributed = use_distributed_sampler(trainer_kwargs.get("strategy"))
    if distributed:
        # our sampler shards by rank itself; Lightning would otherwise wrap it and split its
        # (already per-rank) batches again
        trainer_kwargs.setdefault("use_distributed_sampler", False)
    validated = has_validation_cells(n_obs, train_size, validation_size, external)
    no_validation = early_stopping and not distributed and not validated
    # scvi-tools switches early stopping off under DDP, and with it validation; a run shorter
    # than an epoch ends before its first validation, with nothing to stop on
    early_stopping = early_stopping and not no_validation and total_steps >= epoch_steps
    restore_best = early_stopping and not distributed
    if restore_best:
        if early_stopping_patience is None:
            early_stopping_patience = max(2, math.ceil(PATIENCE_STEPS / epoch_steps))
        warmup = plan_kwargs["n_epochs_kl_warmup"] or math.ceil(
            (plan_kwargs.get("n_steps_kl_warmup") or 0) / epoch_steps
        )
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        trainer_kwargs.setdefault("early_stopping_warmup_epochs", warmup)
    kwargs = (plan_kwargs, datasplitter_kwargs, trainer_kwargs)
    return TrainingSettings(max_epochs, early_stopping, *kwargs, restore_best, no_validation)
