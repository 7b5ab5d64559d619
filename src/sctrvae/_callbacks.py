"""Lightning callback that keeps a real copy of the best weights and restores them at the end."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch


def cloned_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state that later optimiser steps cannot change."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RestoreBestWeights(pl.Callback):
    """Snapshot the module's weights whenever ``monitor`` improves; load the snapshot on train end.

    The snapshot clones every tensor: a bare ``state_dict()`` holds references that keep
    following the optimiser, which is how "best" silently became "last" in earlier trVAE code.

    Parameters
    ----------
    monitor
        Logged metric to minimise (an epoch-level validation metric).
    """

    def __init__(self, monitor: str = "validation_loss"):
        super().__init__()
        self.monitor = monitor
        self.best_score = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if math.isfinite(score) and score < self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_state = cloned_weights(pl_module.module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.module.load_state_dict(self.best_state)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    # saved in Lightning checkpoints, so that a resumed run still knows its best epoch
    def state_dict(self) -> dict:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_state = state_dict["best_state"]


class StopOnNonFiniteLoss(pl.Callback):
    """Stop training with :class:`FloatingPointError` as soon as the training loss is NaN or inf.

    Without it a diverged run finishes "successfully" and every prediction is NaN. The weights
    the module had when training started are restored before raising, so a model that was
    trained before keeps working.
    """

    def __init__(self):
        super().__init__()
        self.start_state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_state = cloned_weights(pl_module.module)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        if self.start_state is not None:
            pl_module.module.load_state_dict(self.start_state)
        raise FloatingPointError(
            f"Training diverged: the loss is {loss.item()} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}. The weights from before this call to train() were "
            "restored. Lower the learning rate (e.g. plan_kwargs={'lr': 1e-4}) or clip the "
            "gradients (e.g. train(gradient_clip_val=1.0))."
        )
