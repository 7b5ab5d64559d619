"""Lightning callback that keeps a real copy of the best weights and restores them at the end."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch


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
            self.best_state = {
                k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
            }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.module.load_state_dict(self.best_state)
