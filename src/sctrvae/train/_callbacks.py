"""Lightning callbacks of `train()`: restore the best epoch's weights; stop on a non-finite loss."""

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

    Only epochs validated at the training plan's final KL weight compete: during the KL warm-up
    (``n_epochs_kl_warmup`` or ``n_steps_kl_warmup``) the KL term is under-weighted, so the loss is
    lower without the model being better. A run that ends inside the warm-up keeps its last
    weights.

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
        if float(pl_module.kl_weight) < pl_module.max_kl_weight:  # still warming up
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
    """Stop training with :class:`FloatingPointError` when the training loss is NaN or inf.

    Without it a diverged run finishes "successfully" and every prediction is NaN. The weights
    the module had when training started are restored before raising, so a model that was
    trained before keeps working.

    Reading a loss on the host waits for the device to finish the step, which on an accelerator
    stalls the pipeline. So each step's finiteness is only accumulated on the loss's device
    (with the first bad loss, its epoch and step); the host reads the result every
    ``check_every_n_steps`` steps and at the end of each epoch and of training. A loss on CPU is
    checked at every step, where the read costs nothing.

    Parameters
    ----------
    check_every_n_steps
        Steps between host reads when the loss is not on CPU. A late read loses nothing: the
        weights are restored from the start of training either way.
    """

    #: Devices where the loss is read at every step.
    every_step_devices = ("cpu",)

    def __init__(self, check_every_n_steps: int = 50):
        super().__init__()
        self.check_every_n_steps = check_every_n_steps
        self.start_state: dict[str, torch.Tensor] | None = None
        # first non-finite (loss, epoch, step) since training started; NaN step while none
        self._first_bad: torch.Tensor | None = None
        #: The divergence behind another exception that stopped training, if any.
        self.error: FloatingPointError | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_state = cloned_weights(pl_module.module)
        self._first_bad, self.error = None, None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        loss = loss.detach().float().reshape(())
        # filled on the device: a tensor built from host values would be a blocking copy
        position = (trainer.current_epoch, trainer.global_step)
        current = torch.stack([loss, *(torch.full_like(loss, n) for n in position)])
        if self._first_bad is None:
            self._first_bad = torch.full_like(current, math.nan)
        newly_bad = self._first_bad[-1].isnan() & ~loss.isfinite()
        self._first_bad = torch.where(newly_bad, current, self._first_bad)
        if (
            loss.device.type in self.every_step_devices
            or (trainer.global_step + 1) % self.check_every_n_steps == 0
        ):
            self._check(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # a non-finite loss not read yet can make a later step fail first (e.g. NaN weights
        # rejected by torch.distributions); train() then raises `error` instead
        if not isinstance(exception, FloatingPointError):
            self.error = self._divergence(pl_module)

    def _check(self, pl_module: pl.LightningModule) -> None:
        error = self._divergence(pl_module)
        if error is not None:
            raise error

    def _divergence(self, pl_module: pl.LightningModule) -> FloatingPointError | None:
        """The error to raise if a loss was non-finite, after restoring the starting weights."""
        if self._first_bad is None:
            return None
        loss, epoch, step = self._first_bad.tolist()  # the one host read
        if math.isnan(step):
            return None
        if self.start_state is not None:
            pl_module.module.load_state_dict(self.start_state)
        return FloatingPointError(
            f"Training diverged: the loss is {loss} at epoch {int(epoch)}, step {int(step)}. "
            "The weights from before this call to train() were restored. Lower the learning "
            "rate (e.g. plan_kwargs={'lr': 1e-4}) or clip the gradients (e.g. "
            "train(gradient_clip_val=1.0))."
        )
